"""Small helpers shared by the test modules (not fixtures)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from hubdask.storage import open_root


def snapshot(root_url: str) -> dict[str, bytes]:
    """Every object under a root, key -> bytes: to assert that storage is byte-for-byte unchanged."""
    root = open_root(root_url)
    return {k: root.get(k) for k in sorted(root.list_prefix(""))}


def run_python(code: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process (sharing nothing but the environment and storage)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), full_env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def committed_object(array, commit_id: str, key: str) -> str:
    """The physical key of logical ``key`` (e.g. 'c/1/0') in commit ``commit_id`` of ``array``'s dataset."""
    from hubdask.versioning import layout

    repo = array._repo
    return layout.object_key(repo.ds, key, repo.graph.chunk_map(commit_id)[key])


def internal(ds: str, rel: str = "") -> str:
    """The physical prefix of dataset ``ds``'s internal objects (``rel`` under it, e.g. 'refs/heads/main/')."""
    from hubdask.versioning import layout

    return layout.base(ds) + rel


def chunk_reads(collection) -> int:
    """How many chunks ``collection``'s dask graph reads from storage: a single-chunk read task is one,
    each chunk a group read task delivers (its ``_pick`` tasks) is one; fill-value blocks are none."""
    from hubdask import daskgraph

    graph = dict(collection.__dask_graph__())
    return sum(1 for t in graph.values() if isinstance(t, tuple) and t and t[0] in (daskgraph._read_block,
                                                                                   daskgraph._pick))


def chunk_blocks(collection) -> int:
    """How many blocks (output keys) ``collection`` has: one per chunk the view touches."""
    import dask.core

    return len(list(dask.core.flatten(collection.__dask_keys__())))
