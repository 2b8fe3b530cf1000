"""Three-way merge of a ref into a branch, element by element where both sides changed a chunk.

"Ours" is the branch as it stands: its base commit plus every write in its open node. The merge is a
commit of that open node (versioning.repository's protocol): the node is sealed, listed, and the merge
is computed against exactly what the listing holds, so a write racing the merge is either in the merge
(merged with theirs like any other change of ours) or lands after it, in the next open node, on top of
the merged state. Nothing a concurrent writer returned is ever dropped.

Chunks changed on one side only are taken by reference (no copy). A chunk changed on both sides is
decoded at the base, ours and theirs: an element changed on one side takes that side, changed the
same way on both is fine, changed differently is a conflict. Conflicts raise ConflictError (nothing is
written) unless ``strategy`` is ``"ours"`` or ``"theirs"``. Merged chunks are written into the merge
commit's own node, which no writer ever touches.

Shapes are metadata and merge first: a side that resized (or appended) while the other did not gives
the merged shape, and the chunks are then merged element-wise within it (a state whose shape ends
before a chunk's region reads there as the fill value); chunks wholly outside the merged shape stop
counting; an edge chunk the merged shape cuts is rewritten with only what lies inside when the side it
comes from holds values past that edge (the parts a shrink resets), so a later grow reads the fill value
there. Both sides changing the shape differently (e.g. both appended along the same axis) is a
ConflictError naming both shapes; ``strategy="ours"`` keeps our shape, ``"theirs"`` takes theirs, and
in both the elements are merged as for any chunk (the strategy side wins where both changed one).
"""

from __future__ import annotations

import json

import numpy as np
import zarr

from hubdask.errors import ConflictError, NotFoundError
from hubdask.storage import sync
from hubdask.versioning import layout
from hubdask.versioning.diff import chunk_region, outside, parse_chunk_key
from hubdask.versioning.repository import MergeSpec, Repository
from hubdask.versioning.store import VersionedStore, node_versions, put_version

ChunkMap = dict[str, str | None]


def _differs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    ne = x != y
    if x.dtype.kind in "fc":
        ne &= ~(np.isnan(x) & np.isnan(y))
    return ne


def merge(repo: Repository, branch: str, ref: str, *, strategy: str | None = None, message: str | None = None,
          name: str = "") -> str:
    """Merge ``ref`` (a branch's last commit, a tag or a commit) into ``branch``; returns the new commit."""
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
    if base == theirs:  # already holds everything of theirs: what the branch holds now is the answer
        return repo.commit(branch, message or f"commit before merging {ref}", allow_empty=False)
    plan = _Plan(repo, what, branch, ref, strategy, base, ours, theirs)
    plan.changes(_open_changes(repo, head.node), None)  # conflicts are found before anything is sealed
    return repo.commit(branch, message or f"merge {ref} into {branch}", merge=MergeSpec(theirs, plan.changes),
                       expect_base=ours)


def _open_changes(repo: Repository, node: str) -> ChunkMap:
    found = sync(node_versions(repo.root, repo.ds, node))
    return {k: layout.holder(node, seq) for k, (seq, _) in found.items()}


def _shapes(ours: bytes | None, theirs: bytes | None, base: bytes | None) -> tuple | None:
    """(our shape, their shape, the base's) when two versions of array metadata differ in shape, else None."""
    try:
        got = [tuple(json.loads(m)["shape"]) if m else None for m in (ours, theirs, base)]
    except (ValueError, KeyError, TypeError):
        return None
    return tuple(got) if got[0] is not None and got[1] is not None and got[0] != got[1] else None


class _Plan:
    """The merge of ``theirs`` into ``ours`` plus an open node's changes, against ``base``."""

    def __init__(self, repo: Repository, what: str, branch: str, ref: str, strategy: str | None,
                 base: str, ours: str, theirs: str) -> None:
        self.repo, self.what, self.branch, self.ref, self.strategy = repo, what, branch, ref, strategy
        self.mb, self.mt = repo.graph.chunk_map(base), repo.graph.chunk_map(theirs)
        self.ours_map = repo.graph.chunk_map(ours)

    def _read(self, chunk_map: ChunkMap, path: str, region: tuple) -> np.ndarray:
        """``region`` of the array at ``chunk_map``; where that state's shape ends before the region (it
        was resized since), the rest is the fill value."""
        store = VersionedStore(self.repo.root, self.repo.ds, chunk_map)
        arr = zarr.open_array(store=store, path=path, mode="r", zarr_format=3)
        out = np.full(tuple(r.stop - r.start for r in region), arr.metadata.fill_value, arr.dtype)
        inside = tuple(slice(r.start, max(r.start, min(r.stop, n))) for r, n in zip(region, arr.shape))
        out[tuple(slice(0, i.stop - i.start) for i in inside)] = arr[inside]
        return out

    def _past_edge(self, side: ChunkMap, path: str, coords: tuple, grid: tuple, merged: tuple) -> bool:
        """Whether the chunk at ``coords`` as ``side`` holds it may have values past the merged shape: the
        side's shape reaches into a part of it that the merged shape cuts (``outside``, as a shrink resets).
        Such a chunk is rewritten holding only what lies inside, so growing later reads the fill value."""
        meta_key = f"{path}/zarr.json" if path else "zarr.json"
        raw = self._bytes(meta_key, side.get(meta_key))
        if raw is None:
            return False
        shape = json.loads(raw)["shape"]
        return any(all(s.start < n for s, n in zip(sel, shape)) for sel in outside(coords, grid, merged))

    def _bytes(self, key: str, held_by: str | None) -> bytes | None:
        return None if held_by is None else self.repo.root.get(layout.object_key(self.repo.ds, key, held_by))

    def changes(self, node_changes: ChunkMap, commit_node: str | None) -> ChunkMap:
        """The merge commit's changes over ``ours``: the open node's changes, theirs where only they
        changed, and element-wise merged chunks (written into ``commit_node``; with None only checked)."""
        mo = dict(self.ours_map)
        for k, h in node_changes.items():
            if h is None:
                mo.pop(k, None)
            else:
                mo[k] = h
        mb, mt = self.mb, self.mt
        out: ChunkMap = dict(node_changes)
        sides = {"ours": dict(mo), "theirs": mt}  # before the metadata merge: each side's own shapes
        conflicts: dict[str, int] = {}
        keys = sorted(set(mo) | set(mt) | set(mb))
        # metadata first: the merged shape is what every chunk below is merged within
        for key in (k for k in keys if parse_chunk_key(k) is None):
            ho, ht, hb = mo.get(key), mt.get(key), mb.get(key)
            if ho == ht or ht == hb:
                continue
            if ho == hb:
                out[key] = mo[key] = ht  # changed on their side only (a resize among them): taken by reference
                if ht is None:
                    mo.pop(key)
                continue
            old, new = self._bytes(key, ho), self._bytes(key, ht)
            if old == new:
                continue
            if self.strategy is None:
                shapes = _shapes(old, new, self._bytes(key, hb))
                if shapes is not None:
                    raise ConflictError(
                        f"{self.what}: merging {self.ref!r} into {self.branch!r}: both sides changed the shape of "
                        f"{key.rsplit('/', 1)[0] if '/' in key else 'the array'} (ours {shapes[0]}, theirs "
                        f"{shapes[1]}, base {shapes[2]}), e.g. both appended; nothing was applied. Pass "
                        "strategy='ours' to keep our shape or 'theirs' to take theirs")
                conflicts[key] = 1
            elif self.strategy == "theirs":
                out[key] = mo[key] = ht
        opened: dict[str, zarr.Array] = {}
        for key in keys:
            parsed = parse_chunk_key(key)
            if parsed is None:
                continue
            ho, ht, hb = mo.get(key), mt.get(key), mb.get(key)
            path, coords = parsed
            if path not in opened:
                opened[path] = zarr.open_array(store=VersionedStore(self.repo.root, self.repo.ds, mo), path=path,
                                               mode="r", zarr_format=3)
            zo = opened[path]
            grid_shape = tuple(zo.metadata.chunk_grid.chunk_shape)  # the storage object: a shard when sharded
            if any(j * c >= n for j, c, n in zip(coords, grid_shape, zo.shape)):
                if ho is not None:  # wholly outside the merged shape: it stops counting, as after a resize
                    out[key] = None
                continue
            region = chunk_region({"shape": zo.shape, "chunk_grid": {"configuration": {"chunk_shape": grid_shape}}},
                                  coords)
            if ho == ht:
                continue
            kept = "ours" if ht == hb else "theirs" if ho == hb else None
            if kept is not None:  # changed on one side only: taken by reference unless the shape cut it
                if kept == "theirs":
                    out[key] = ht
                held = ho if kept == "ours" else ht
                if (held is not None and commit_node is not None
                        and self._past_edge(sides[kept], path, coords, grid_shape, zo.shape)):
                    values = zo[region] if kept == "ours" else self._read(mt, path, region)
                    out[key] = self._write_merged(commit_node, path, key, region, values, mo)
                continue
            b, o, t = self._read(mb, path, region), zo[region], self._read(mt, path, region)
            changed_o, changed_t = _differs(o, b), _differs(t, b)
            clash = changed_o & changed_t & _differs(o, t)
            n = int(clash.sum())
            if n and self.strategy is None:
                conflicts[key] = n
                continue
            take_t = changed_t & ~clash if self.strategy == "ours" else changed_t
            if commit_node is not None:
                out[key] = self._write_merged(commit_node, path, key, region, np.where(take_t, t, o), mo)
        if conflicts:
            listed = ", ".join(f"{k} ({n})" for k, n in list(conflicts.items())[:10])
            more = f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
            raise ConflictError(
                f"{self.what}: merging {self.ref!r} into {self.branch!r} conflicts in {len(conflicts)} chunks, "
                f"{sum(conflicts.values())} elements changed differently on both sides: {listed}{more}. Nothing "
                "was applied; pass strategy='ours' or 'theirs' to resolve"
            )
        return out

    def _write_merged(self, node: str, path: str, key: str, region: tuple, values: np.ndarray,
                      mo: ChunkMap) -> str:
        """Encode the merged chunk as zarr would (through a scratch store over ``ours``) and create it as
        version 1 of ``key`` in the merge commit's node; its holder."""
        from zarr.storage import MemoryStore

        scratch: dict = {}
        meta_key = f"{path}/zarr.json" if path else "zarr.json"
        meta = self._bytes(meta_key, mo.get(meta_key))
        mem = MemoryStore(scratch)
        from zarr.core.buffer import default_buffer_prototype

        sync(mem.set(meta_key, default_buffer_prototype().buffer.from_bytes(meta)))
        arr = zarr.open_array(store=mem, path=path, mode="r+", zarr_format=3)
        arr[region] = values
        blob = scratch.get(key)
        data = layout.TOMBSTONE if blob is None else blob.to_bytes()
        seq = sync(put_version(self.repo.root, self.repo.ds, node, key, data, based_on=0, what=self.what))
        return layout.holder(node, seq)
