"""What differs between two states of a dataset: chunks (with the regions they cover) and metadata."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from zarr.core.buffer import default_buffer_prototype

from hubdask.storage import sync
from hubdask.versioning.commits import ChunkMap, Commit
from hubdask.versioning.repository import Repository, State

@dataclass(frozen=True)
class Change:
    """One logical object that differs between two states: a chunk (with the region it covers) or metadata."""

    key: str
    array: str
    chunk: tuple[int, ...] | None
    region: tuple[slice, ...] | None
    kind: str  # "added", "modified" or "deleted"
    shape: tuple[tuple[int, ...] | None, tuple[int, ...] | None] | None = None  # metadata: (before, after) if it changed


_CHUNK = re.compile(r"^(?:(.*)/)?c((?:/\d+)*)$")


def state_map(repo: Repository, state: State) -> ChunkMap:
    """Logical key -> holder for a state; a branch's uncommitted keys are held by its open node."""
    m = dict(repo.graph.chunk_map(state.commit))
    if state.head is not None:
        for k, held_by in repo._node_changes(state.head.node).items():
            if held_by is None:
                m.pop(k, None)
            else:
                m[k] = held_by
    return m


def parse_chunk_key(key: str) -> tuple[str, tuple[int, ...]] | None:
    """``'images/c/3/0'`` -> ``('images', (3, 0))``; None for metadata keys."""
    m = _CHUNK.match(key)
    if not m:
        return None
    return m.group(1) or "", tuple(int(x) for x in m.group(2).split("/")[1:])


def array_meta(repo: Repository, state: State, path: str) -> dict | None:
    key = f"{path}/zarr.json" if path else "zarr.json"
    buf = sync(repo.store(state).get(key, default_buffer_prototype()))
    return None if buf is None else json.loads(buf.to_bytes())


def chunk_region(meta: dict, coords: tuple[int, ...]) -> tuple[slice, ...]:
    shape = meta["shape"]
    chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
    return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(coords, chunks, shape))


def outside(coords: tuple[int, ...], chunks: tuple[int, ...], shape: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """The parts of chunk ``coords`` past ``shape``: the whole chunk if it lies wholly outside, else one
    slab per axis that the shape cuts (an empty list for a chunk inside). A shrink resets these parts to the
    fill value and a merge into a smaller shape rewrites them so, so that growing again reads the fill value."""
    box = [(j * c, (j + 1) * c) for j, c in zip(coords, chunks)]
    if any(lo >= n for (lo, _), n in zip(box, shape)):
        return [tuple(slice(lo, hi) for lo, hi in box)]
    out = []
    for axis, ((lo, hi), n) in enumerate(zip(box, shape)):
        if hi > n:
            out.append(tuple(slice(n, hi) if i == axis else slice(a, b) for i, (a, b) in enumerate(box)))
    return out


def diff(repo: Repository, other: str | None, ref: str) -> list[Change]:
    """Changes from ``other`` (default: the base commit of ``ref``) to ``ref``, sorted by key."""
    new = repo.resolve(ref)
    old = repo.resolve(other) if other is not None else State(new.commit or "", new.commit)
    a, b = state_map(repo, old), state_map(repo, new)
    metas: dict[str, dict | None] = {}
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key):
            continue
        kind = "added" if a.get(key) is None else "deleted" if b.get(key) is None else "modified"
        parsed = parse_chunk_key(key)
        if parsed is None:
            path = key.rsplit("/", 1)[0] if "/" in key else ""
            shape = _shape_pair(repo, key, a.get(key), b.get(key)) if key.endswith("zarr.json") else None
            out.append(Change(key, path, None, None, kind, shape))
            continue
        path, coords = parsed
        if path not in metas:
            metas[path] = array_meta(repo, new, path) or array_meta(repo, old, path)
        region = chunk_region(metas[path], coords) if metas[path] else None
        out.append(Change(key, path, coords, region, kind))
    return out


def _shape_of(repo: Repository, key: str, held_by: str | None) -> tuple[int, ...] | None:
    from hubdask.versioning import layout

    if held_by is None:
        return None
    raw = repo.root.get(layout.object_key(repo.ds, key, held_by))
    try:
        shape = json.loads(raw).get("shape") if raw else None
    except ValueError:
        return None
    return tuple(shape) if isinstance(shape, list) else None


def _shape_pair(repo: Repository, key: str, old: str | None, new: str | None) -> tuple | None:
    """(shape before, shape after) of the array whose metadata ``key`` went from ``old`` to ``new``, if
    the shape changed (a resize or append), else None."""
    pair = (_shape_of(repo, key, old), _shape_of(repo, key, new))
    return pair if pair[0] != pair[1] else None


def shape_changes(repo: Repository, commit: Commit) -> dict[str, tuple]:
    """Array path -> (shape before, shape after) for every array whose shape ``commit`` changed against
    its first parent (what ``log`` shows; only metadata keys the commit names are read)."""
    parent = repo.graph.chunk_map(commit.parents[0]) if commit.parents else {}
    out = {}
    for key, held_by in commit.changes.items():
        if key.endswith("zarr.json") and parent.get(key) != held_by:
            pair = _shape_pair(repo, key, parent.get(key), held_by)
            if pair is not None and pair[0] is not None:
                out[key.rsplit("/", 1)[0] if "/" in key else ""] = pair
    return out
