"""What differs between two states of a dataset: chunks (with the regions they cover) and metadata."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from zarr.core.buffer import default_buffer_prototype

from hubdask.storage import sync
from hubdask.versioning.commits import ChunkMap
from hubdask.versioning.repository import Repository, State

@dataclass(frozen=True)
class Change:
    """One logical object that differs between two states: a chunk (with the region it covers) or metadata."""

    key: str
    array: str
    chunk: tuple[int, ...] | None
    region: tuple[slice, ...] | None
    kind: str  # "added", "modified" or "deleted"


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
            out.append(Change(key, key.rsplit("/", 1)[0] if "/" in key else "", None, None, kind))
            continue
        path, coords = parsed
        if path not in metas:
            metas[path] = array_meta(repo, new, path) or array_meta(repo, old, path)
        region = chunk_region(metas[path], coords) if metas[path] else None
        out.append(Change(key, path, coords, region, kind))
    return out
