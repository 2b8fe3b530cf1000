"""Where a dataset's objects live under its root: every physical key is built here, nowhere else.

A dataset ``owner/name`` keeps all its objects under ``owner/name/@hub/``. ``@`` cannot appear in a
dataset name, so no dataset's internals are reachable through another dataset's name (``p`` and
``p/x`` are disjoint; a dataset called ``q/commits`` is just another dataset), and deleting or
collecting one dataset touches exactly one prefix.

Objects of a node are immutable versions: ``nodes/NODE/<zarr key>@SEQ`` (SEQ counts up from 1 per key
and node). A writer creates version SEQ+1 with an exclusive create, so two writers of one chunk can
never both win the same slot: a read-modify-write based on SEQ either lands as SEQ+1 or learns that
it is stale and starts over (the fence of the write protocol). The newest version of a key is its
value; a version holding ``TOMBSTONE`` means the key was deleted there. A commit's chunk map names
the versions it holds (``NODE@SEQ``), so committing copies nothing and a later write can never change
a commit.
"""

from __future__ import annotations

from hubdask.storage.files import TEMP_SUFFIX as PARTIAL_SUFFIX  # temp files of a write in flight: never records

HUB = "@hub"
MARKER = "hubdask.json"
TOMBSTONE = b"hubdask:deleted\n"  # the content of a version that deletes its key (distinct from b"")
SEQ_DIGITS = 8


def base(ds: str) -> str:
    """The prefix holding every object of dataset ``ds``."""
    return f"{ds}/{HUB}/"


def marker_key(ds: str) -> str:
    return f"{base(ds)}{MARKER}"


def node_prefix(ds: str, node: str) -> str:
    return f"{base(ds)}nodes/{node}/"


def commit_key(ds: str, commit_id: str) -> str:
    return f"{base(ds)}commits/{commit_id}"


def commits_prefix(ds: str) -> str:
    return f"{base(ds)}commits/"


def seal_key(ds: str, node: str) -> str:
    return f"{base(ds)}seals/{node}"


def head_prefix(ds: str, branch: str) -> str:
    return f"{base(ds)}refs/heads/{branch}/"


def head_log_prefix(ds: str, branch: str) -> str:
    """The claims of ``branch``'s heads (never listed to resolve it)."""
    return f"{base(ds)}refs/log/{branch}/"


def heads_prefix(ds: str) -> str:
    return f"{base(ds)}refs/heads/"


def tag_key(ds: str, tag: str) -> str:
    return f"{base(ds)}refs/tags/{tag}"


def tags_prefix(ds: str) -> str:
    return f"{base(ds)}refs/tags/"


def version_key(ds: str, node: str, key: str, seq: int) -> str:
    """The physical key of version ``seq`` of logical ``key`` in ``node``."""
    return f"{node_prefix(ds, node)}{key}@{seq:0{SEQ_DIGITS}d}"


def holder(node: str, seq: int) -> str:
    """A chunk map's value for version ``seq`` of a key in ``node``."""
    return f"{node}@{seq:0{SEQ_DIGITS}d}"


def object_key(ds: str, key: str, held_by: str) -> str:
    """The physical key of logical ``key`` held by ``held_by`` (``NODE@SEQ``; a bare ``NODE`` names an
    object of an upgraded hubdask/2 dataset, which has no version suffix)."""
    node, _, seq = held_by.partition("@")
    return f"{node_prefix(ds, node)}{key}@{seq}" if seq else f"{node_prefix(ds, node)}{key}"


def parse_version(name: str) -> tuple[str, int] | None:
    """``'c/0/1@00000003'`` -> ``('c/0/1', 3)``; None for anything else (temp files, legacy objects)."""
    if is_temp(name):
        return None
    key, sep, seq = name.rpartition("@")
    if not sep or not key or not seq.isdigit():
        return None
    return key, int(seq)


def is_temp(name: str) -> bool:
    """True for the temp file of a write that was interrupted (never a record or a version)."""
    return name.endswith(PARTIAL_SUFFIX)
