"""What an array is and holds, for ``hubdask info`` and the Jupyter repr: shape, chunk grid, which
chunks are written, stored vs logical size, branches, tags and the last commit.

Written chunks come from the state's chunk map (in memory) plus, on a branch, one listing of its open
node; stored bytes cost one size request per written chunk, so callers bound how many they count.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

from hubdask.shards import shard_shape
from hubdask.source import Source
from hubdask.names import safe_url  # noqa: F401  (shown roots: credentials left out)
from hubdask.storage import sync
from hubdask.versioning import repository
from hubdask.versioning.commits import Commit
from hubdask.view import view_of


def written_chunks(array: Any) -> dict[tuple[int, ...], str]:
    """Chunk coordinates -> physical object key, for every chunk of the array written in its state
    (committed ones from the chunk map, a branch's uncommitted ones from its open node)."""
    src = view_of(array).source.current()
    repo = repository(src.root, src.ds)
    prefix = f"{src.path}/c" if src.path else "c"
    ndim = len(array.storage_shape)
    out: dict[tuple[int, ...], str] = {}

    for key, physical in repo.objects(src.commit, src.node if src.branch is not None else None, prefix).items():
        if key == prefix and ndim == 0:
            out[()] = physical
        elif key.startswith(prefix + "/"):
            parts = key[len(prefix) + 1:].split("/")
            if len(parts) == ndim and all(p.isdigit() for p in parts):
                out[tuple(int(p) for p in parts)] = physical
    return out


def stored_bytes(array: Any, keys: list[str], concurrency: int = 32) -> int:
    """The total size in storage of the objects ``keys`` (one size request each, ``concurrency`` at once)."""
    from hubdask.storage import retry

    root = view_of(array).source.root
    store = root.store
    local = not root.is_remote

    async def run() -> int:
        sem = asyncio.Semaphore(concurrency)

        async def one(key: str) -> int:
            async with sem:
                try:
                    if local:
                        return await store.getsize(key)
                    return await retry.call(lambda: store.getsize(key), f"dataset {array.name!r}: size of {key!r}",
                                            root=root.url)  # retried, and bounded by HUBDASK_RETRY_TIMEOUT
                except FileNotFoundError:
                    return 0

        return sum(await asyncio.gather(*(one(k) for k in keys)))

    return sync(run())


@dataclass
class Summary:
    name: str
    root: str
    ref: str
    branch: str | None
    commit: str | None
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    grid: tuple[int, ...]
    fill_value: Any
    written: int
    logical_bytes: int
    stored_bytes: int | None  # None: not counted (more written chunks than the caller allowed)
    branches: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    last_commit: Commit | None = None
    uncommitted: int = 0
    shards: tuple[int, ...] | None = None  # the storage object of a sharded array; ``grid`` counts them
    committed_shape: tuple[int, ...] | None = None  # the shape at the base commit, where a branch resized since

    @property
    def total_chunks(self) -> int:
        return math.prod(self.grid)

    def to_dict(self) -> dict:
        last = self.last_commit
        return {
            "name": self.name, "root": self.root, "ref": self.ref, "branch": self.branch, "commit": self.commit,
            "shape": list(self.shape), "dtype": self.dtype, "chunks": list(self.chunks),
            "shards": None if self.shards is None else list(self.shards), "grid": list(self.grid),
            "committed_shape": None if self.committed_shape is None else list(self.committed_shape),
            "fill_value": self.fill_value, "chunks_total": self.total_chunks, "chunks_written": self.written,
            "logical_bytes": self.logical_bytes, "stored_bytes": self.stored_bytes,
            "branches": self.branches, "tags": self.tags, "uncommitted_chunks": self.uncommitted,
            "last_commit": None if last is None else {"id": last.id, "message": last.message, "time": last.time},
        }


def summarize(array: Any, max_sized: int | None = 2000) -> Summary:
    """The summary of the whole stored array behind ``array`` (a view is summarized as its array).

    ``max_sized`` bounds how many chunks get a size request; beyond it ``stored_bytes`` is None.
    """
    src = view_of(array).source.current()
    repo = repository(src.root, src.ds)
    shape, chunks = array.storage_shape, array.storage_chunks
    written = written_chunks(array)
    keys = list(written.values())
    stored = stored_bytes(array, keys) if max_sized is None or len(keys) <= max_sized else None
    uncommitted = sum(1 for k in keys if src.node is not None and f"/nodes/{src.node}/" in k)
    last = repo.graph.get(src.commit) if src.commit else None
    fill = array.fill_value
    return Summary(
        name=array.name, root=safe_url(src.root.url), ref=array.ref, branch=src.branch, commit=src.commit,
        shape=shape, dtype=str(array.dtype), chunks=view_of(array).inner_chunks, 
        shards=shard_shape(view_of(array).metadata),
        grid=tuple(-(-s // c) if s else 0 for s, c in zip(shape, chunks)),
        fill_value=fill.item() if hasattr(fill, "item") else fill,
        written=len(written), logical_bytes=math.prod(shape) * array.dtype.itemsize, stored_bytes=stored,
        branches=repo.branches(), tags=repo.tags(), last_commit=last, uncommitted=uncommitted,
        committed_shape=_committed_shape(src, shape),
    )


def _committed_shape(src: Any, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The array's shape at the base commit of a branch that resized it since (None otherwise)."""
    if src.node is None or not src.meta_seq or src.commit is None:
        return None
    base = Source.at(src.root, src.ds, src.path, src.commit, cache=src.cache)
    old = tuple(base.zarr().metadata.shape)
    return old if old != shape else None


def human_bytes(n: float | None) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    if n is None:
        return "not counted"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
