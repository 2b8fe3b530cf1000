"""Three-way merge of a ref into a branch, element by element where both sides changed a chunk.

Chunks changed on one side only are taken by reference (no copy). A chunk changed on both sides is
decoded at the base, ours and theirs: an element changed on one side takes that side, changed the
same way on both is fine, changed differently is a conflict. Conflicts raise ConflictError (nothing is
written) unless ``strategy`` is ``"ours"`` or ``"theirs"``. Merged chunks are written into the branch's
open node, and the node is committed with both parents.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import ContextManager

import numpy as np
import zarr

from hubdask.errors import ConflictError, NotFoundError
from hubdask.storage import sync
from hubdask.versioning.diff import chunk_region, parse_chunk_key
from hubdask.versioning.repository import Repository


def _differs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    ne = x != y
    if x.dtype.kind in "fc":
        ne &= ~(np.isnan(x) & np.isnan(y))
    return ne


def merge(repo: Repository, branch: str, ref: str, *, strategy: str | None = None, message: str | None = None,
          name: str = "", lock: Callable[[list[str]], ContextManager] | None = None) -> str:
    """Merge ``ref`` (a branch's last commit, a tag or a commit) into ``branch``; returns the new commit.

    ``lock(keys)`` is held while merged chunks are written (the write layer passes its chunk locks)."""
    what = f"dataset {name or repo.ds!r}"
    if strategy not in (None, "ours", "theirs"):
        raise ValueError(f"{what}: merge strategy must be None, 'ours' or 'theirs', not {strategy!r}")
    head = repo.resolve(branch).head
    if head is None:
        raise NotFoundError(f"{what}: {branch!r} is not a branch")
    theirs = repo.resolve(ref).commit
    ours = head.base
    if theirs is None or ours is None:
        raise ConflictError(f"{what}: nothing to merge between {branch!r} and {ref!r} (no commits)")
    base = repo.graph.merge_base(ours, theirs)
    if base is None:
        raise ConflictError(f"{what}: {branch!r} and {ref!r} have unrelated histories; cannot merge")
    if base == theirs:
        return ours  # already contains everything of theirs
    mb, mo, mt = (repo.graph.chunk_map(c) for c in (base, ours, theirs))
    taken: dict[str, str | None] = {}
    both: list[str] = []
    for key in sorted(set(mo) | set(mt) | set(mb)):
        ho, ht, hb = mo.get(key), mt.get(key), mb.get(key)
        if ho == ht or ht == hb:
            continue
        if ho == hb:
            taken[key] = ht
        else:
            both.append(key)

    merged: dict[str, tuple[str, tuple[slice, ...], np.ndarray]] = {}
    conflicts: dict[str, int] = {}
    arrays = {}
    for key in both:
        parsed = parse_chunk_key(key)
        if parsed is None:  # metadata changed on both sides: equal bytes or a conflict
            if repo.root.get(f"{repo.ds}/nodes/{mo[key]}/{key}") != repo.root.get(f"{repo.ds}/nodes/{mt[key]}/{key}"):
                if strategy is None:
                    conflicts[key] = 1
                elif strategy == "theirs":
                    taken[key] = mt.get(key)
            continue
        path, coords = parsed
        if path not in arrays:
            arrays[path] = tuple(zarr.open_array(store=repo.store_at(c), path=path, mode="r", zarr_format=3)
                                 for c in (base, ours, theirs))
        zb, zo, zt = arrays[path]
        region = chunk_region({"shape": zo.shape, "chunk_grid": {"configuration": {"chunk_shape": zo.chunks}}},
                              coords)
        b, o, t = zb[region], zo[region], zt[region]
        changed_o, changed_t = _differs(o, b), _differs(t, b)
        clash = changed_o & changed_t & _differs(o, t)
        n = int(clash.sum())
        if n and strategy is None:
            conflicts[key] = n
            continue
        take_t = changed_t & ~clash if strategy == "ours" else changed_t
        merged[key] = (path, region, np.where(take_t, t, o))
    if conflicts:
        listed = ", ".join(f"{k} ({n})" for k, n in list(conflicts.items())[:10])
        more = f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
        raise ConflictError(
            f"{what}: merging {ref!r} into {branch!r} conflicts in {len(conflicts)} chunks, "
            f"{sum(conflicts.values())} elements changed differently on both sides: {listed}{more}. Nothing "
            "was applied; pass strategy='ours' or 'theirs' to resolve"
        )
    with (lock or (lambda keys: contextlib.nullcontext()))(sorted(merged)):
        store = repo.store_at(ours, head.node, branch=head.branch, node_written=head.written)
        sync(store.mark_written())  # before the partial-chunk reads of the writes below
        for key, (path, region, values) in merged.items():
            zarr.open_array(store=store, path=path, mode="r+", zarr_format=3)[region] = values
        return repo.commit(branch, message or f"merge {ref} into {branch}", merge_parent=theirs,
                           extra_changes=taken, expect_base=ours)
