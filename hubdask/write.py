"""The write path: validated setitem, read-modify-write of partial chunks under chunk locks, and
``hd.store``, which aligns a dask array to storage chunks so that each chunk has exactly one writer.

Every write goes to the branch's open node as new, immutable versions of its chunks, claimed by exclusive
create (see versioning.store), so no interleaving of writers loses an update. If a commit sealed that node
while the write was in flight, the write is repeated in the next open node (see versioning.repository).
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from hubdask import chunkio, grid
from hubdask.errors import ConflictError, NotFoundError, ReadOnlyError, refusing_read_only
from hubdask.locks import chunk_locks, lock_name
from hubdask.source import Source
from hubdask.spec import cast
from hubdask.versioning import repository
from hubdask.versioning.store import StaleRead, based_on_reads, begin_write, end_based_on
from hubdask.view import view_of

if TYPE_CHECKING:
    import dask.array as da

    from hubdask.versioning.refs import Head

    from hubdask.view import View, Viewable


def coerce(value: Any, dtype: np.dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``value`` as an array of ``dtype`` broadcast to ``shape`` by numpy's assignment rule (leading
    length-1 axes of the value dropped); TypeError/ValueError if it does not fit (the value rule of
    hubdask.spec.cast: exact into integers, no overflow to infinity into floats)."""
    arr = cast(value, dtype, what)
    extra = arr.ndim - len(shape)
    if extra > 0 and all(n == 1 for n in arr.shape[:extra]):
        arr = arr.reshape(arr.shape[extra:])  # numpy drops a value's leading length-1 axes in assignment
    try:
        return np.broadcast_to(arr, shape)
    except ValueError:
        raise ValueError(f"{what}: value of shape {np.shape(value)} cannot be broadcast to the selection's shape "
                         f"{shape}") from None


def setitem(view: "View", index: Any, value: Any) -> Source:
    """``view[index] = value``, validated before a byte is written; returns the source the write landed
    in (the view's, or the next open node's if a commit sealed it meanwhile). ``index`` takes what reads
    take: integer arrays and boolean masks write orthogonally (repeated indices: the last value wins)."""
    what = view.what
    src = view.source
    if src.branch is None:
        raise ReadOnlyError(f"{what} is opened at commit {src.commit} (a tag or commit id) and is read-only; "
                            "write to a branch instead")
    index, new = grid.split_newaxes(index, view.ndim)
    sub = view.index(index)
    shape = list(sub.shape)
    for pos in new:
        shape.insert(pos, 1)
    data = coerce(value, view.dtype, tuple(shape), what).reshape(sub.shape)
    if data.size == 0:
        return src  # an empty selection writes nothing
    sel, out_axis = [], 0
    for a in sub.axes:
        if isinstance(a, int):
            sel.append(a)
            continue
        if isinstance(a, grid.Points):
            u, last = _last_of_each(a.idx)
            data = np.take(data, last, axis=out_axis)
            sel.append(u)  # one write for all indices: each chunk touched is read-modified-written once
        else:
            asc = a.ascending()
            if asc is not a:
                data = np.flip(data, out_axis)
            sel.append(slice(asc.start, asc.start + (asc.n - 1) * asc.step + 1, asc.step))
        out_axis += 1
    return write_region(src, tuple(sel), data, view.storage_shape, view.storage_chunks)


def _last_of_each(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct indices ascending, for each the position of its last occurrence in ``idx``)."""
    rev = idx[::-1]
    u, first_in_rev = np.unique(rev, return_index=True)
    return u, idx.size - 1 - first_in_rev


def partial_chunks(sel: tuple[int | slice, ...], shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple]:
    """Coordinates of the chunks that ``sel`` (ascending: ints, slices, distinct index arrays) touches
    without covering them whole. An edge chunk cut by the array's shape is partial even where ``sel``
    covers all of its in-bounds part: the shape may grow (resize, append) and another writer fill the rest."""
    per_axis = []
    for s, n, c in zip(sel, shape, chunks):
        if isinstance(s, np.ndarray):  # ascending distinct indices: a chunk is covered if all of it is listed
            per_axis.append([(j, i1 - i0 == c) for j, i0, i1 in grid.runs_by_chunk(s, c)])
            continue
        if isinstance(s, int):
            per_axis.append([(s // c, c == 1)])
            continue
        start, stop, step = s.indices(n)
        span = grid.Span(start, step, len(range(start, stop, step)))
        per_axis.append([(p.chunk, p.i1 - p.i0 == c) for p in grid.pieces(span, c)])
    if all(full for axis in per_axis for _, full in axis):
        return []
    return [tuple(j for j, _ in combo) for combo in itertools.product(*per_axis)
            if not all(full for _, full in combo)]


def write_region(src: Source, sel: tuple, data: np.ndarray, shape: tuple[int, ...], chunks: tuple[int, ...],
                 lock: bool | str | None = None) -> Source:
    """Write ``data`` at ``sel`` on ``src``'s branch; returns the source the write finally landed in
    (another open node if a commit sealed the first).

    Every chunk is written as a new version with an exclusive create (store.put_version), which is what
    makes lost updates impossible, with or without locks: a read-modify-write that raced another writer
    of its chunk reads again and redoes its change. Partial chunks are also locked (the scheduler's
    ``distributed.Lock`` on a cluster, a file lock beside a local root) so that writers of one chunk take
    turns instead of retrying. After the write landed, the node's seal is checked: if a commit sealed the
    node meanwhile, the write is repeated in the next open node (without holding any lock while waiting);
    if the dataset was deleted, its objects are taken back and NotFoundError raised."""
    while True:
        created = write_once(src, sel, data, shape, chunks, lock)
        head = settle(src, created)
        if head is None:
            return src.written_here()
        src = src.at_head(head)


def write_once(src: Source, sel: tuple, data: np.ndarray, shape: tuple[int, ...], chunks: tuple[int, ...],
               lock: bool | str | None = None) -> list[str]:
    """Write ``data`` at ``sel`` into ``src``'s open node once, its partial chunks under their locks, with
    no seal check (``settle`` is the caller's); returns the physical keys created."""
    names = [lock_name(src.root.url, src.ds, src.branch, grid.chunk_key(c, src.path))
             for c in partial_chunks(sel, shape, chunks)]
    with refusing_read_only(f"dataset {src.ds!r}", src.root.url), chunk_locks(names, lock, root=src.root):
        begin_write(src.root, src.ds, src.node)  # before any read-modify-write looks at the node
        created = chunkio.write(src, sel, data, src.ds)  # threaded encode, concurrent creates
        if created is None:
            _write_through_zarr(src, sel, data)  # codec chains the chunk engine does not run
    return created or []


def settle(src: Source, created: list[str]) -> "Head | None":
    """The seal check after writes into ``src``'s open node landed: None if the node is still open (the
    writes are the branch's); else the head to repeat them at (a commit sealed the node meanwhile, so
    they may be missing from it). If the dataset was deleted, ``created`` is taken back and
    NotFoundError raised."""
    try:
        return repository(src.root, src.ds).after_write(src.branch, src.node)
    except NotFoundError:
        if created:
            src.root.delete_many(created)
        raise


def _write_through_zarr(src: Source, sel: tuple, data: np.ndarray) -> None:
    """``zarr_array[sel] = data`` on the versioned store, its read-modify-writes fenced on the versions
    they read (store.based_on_reads): a stale one is repeated from a fresh read."""
    for _ in range(1000):
        token = based_on_reads()
        try:
            arr = src.zarr()
            if any(isinstance(s, np.ndarray) for s in sel):
                arr.oindex[sel] = data
            else:
                arr[sel] = data
            return
        except StaleRead:
            continue
        finally:
            end_based_on(token)
    raise ConflictError(f"dataset {src.ds!r}: a write kept racing other writers of the same chunks; try again")


class SealedWhileStoring(ConflictError):
    """A commit sealed the open node while a store job wrote into it: some of its writes may be missing
    from the branch. ``store_all`` (hd.store with compute=True, dataset writes) stores again at the new
    head; a caller computing the lazy job itself gets this error and should store again."""


def _write_block(block: np.ndarray, src: Source, offset: tuple[int, ...], shape: tuple[int, ...],
                 chunk_shape: tuple[int, ...], target_dtype: np.dtype, what: str, lock: Any,
                 block_info: dict | None = None) -> np.ndarray:
    """One block's write, no seal check (the job's ``_settle_store`` does one for all): its created keys."""
    loc = block_info[0]["array-location"]
    sel = tuple(slice(o + a, o + b) for o, (a, b) in zip(offset, loc))
    out = np.empty((1,) * block.ndim, dtype=object)
    out.reshape(-1)[0] = write_once(src, sel, coerce(block, target_dtype, block.shape, what), shape, chunk_shape, lock)
    return out


def _settle_store(written: list, src: Source, what: str) -> np.ndarray:
    """After every block of a store landed: one seal check for all of them (``settle``); the blocks' count."""
    from dask.core import flatten

    blocks = list(flatten(written))
    created = [k for b in blocks for k in b.reshape(-1)[0]]
    if settle(src, created) is not None:
        raise SealedWhileStoring(f"{what}: a commit of branch {src.branch!r} started while hd.store was writing "
                                 "into it, so some of the writes may be missing from the branch; store again")
    return np.array(len(blocks), dtype=np.int64)


WRITE_TASK_BYTES = 16 * 2**20  # on a remote root a write task writes about this many bytes of chunks concurrently


def aligned_chunks(offset: tuple[int, ...], extent: tuple[int, ...], chunks: tuple[int, ...],
                   group: tuple[int, ...] | None = None) -> tuple[tuple[int, ...], ...]:
    """Block sizes along each axis that cut ``[offset, offset+extent)`` only at storage chunk borders,
    ``group[axis]`` storage chunks per block (1 by default), so no storage chunk is shared by two blocks."""
    out = []
    for axis, (o, n, c) in enumerate(zip(offset, extent, chunks)):
        step = c * (group[axis] if group else 1)
        sizes, pos = [], o
        while pos < o + n:
            nxt = min((pos // step + 1) * step, o + n)
            sizes.append(nxt - pos)
            pos = nxt
        out.append(tuple(sizes) or (0,))
    return tuple(out)


def block_group(source_chunks: tuple[tuple[int, ...], ...], chunks: tuple[int, ...],
                task_bytes: int = 0, itemsize: int = 1) -> tuple[int, ...]:
    """Storage chunks per write block along each axis: blocks about as large as the source's own (its
    parallelism and memory per task), but never less than one storage chunk; with ``task_bytes`` (remote
    roots: a request's latency is hidden only by many in flight) grown, last axis first, to about that
    many bytes of chunks, within the source's extent."""
    group = [max(1, round(max(sizes, default=c) / c)) for sizes, c in zip(source_chunks, chunks)]
    extent = [max(1, -(-sum(sizes) // c)) for sizes, c in zip(source_chunks, chunks)]
    for axis in reversed(range(len(group))):
        block = math.prod(g * c for g, c in zip(group, chunks)) * itemsize
        if block >= task_bytes:
            break
        others = block // (group[axis] * chunks[axis])
        want = -(-task_bytes // max(1, others * chunks[axis]))
        group[axis] = max(group[axis], min(extent[axis], want))
    return tuple(group)


def store(source: "da.Array", target: "Viewable", region: tuple[slice, ...] | None = None, *,
          lock: bool | str | None = None) -> "da.Array":
    """A lazy dask array (the count of blocks written) whose computation writes ``source`` into ``target``.

    ``source`` is rechunked to blocks cut at the target's storage chunk borders (each about the size of a
    source block), so each storage chunk is written by exactly one task and no task needs a lock; only
    chunks cut by the region's edges are read-modify-written (under their chunk locks, against writers
    outside this job).
    """
    import dask.array as da

    what = f"dataset {target.name!r}"
    src = view_of(target).source
    if src.branch is None:
        raise ReadOnlyError(f"{what} is opened at commit {src.commit} and is read-only; store into a branch")
    if target.is_view:
        raise ValueError(f"{what}: store into the whole array with region=..., not into a view")
    shape, chunks = target.storage_shape, target.storage_chunks
    region = grid.normalize_index(region if region is not None else (), shape, what)
    if any(isinstance(r, int) for r in region) or any(r.step not in (None, 1) for r in region):
        raise ValueError(f"{what}: region must be a tuple of slices with step 1, got {region}")
    bounds = [r.indices(n)[:2] for r, n in zip(region, shape)]
    offset = tuple(a for a, _ in bounds)
    extent = tuple(max(b - a, 0) for a, b in bounds)
    if tuple(source.shape) != extent:
        raise ValueError(f"{what}: the dask array has shape {tuple(source.shape)} but the region {region} "
                         f"has shape {extent}")
    if not np.can_cast(source.dtype, target.dtype, "same_kind") and not (
            source.dtype.kind in "iub" and target.dtype.kind in "iuf"):
        raise TypeError(f"{what}: cannot store a dask array of dtype {source.dtype} into dtype {target.dtype}")
    if math.prod(extent) == 0:
        return da.zeros((), dtype=np.int64)
    group = block_group(source.chunks, chunks, WRITE_TASK_BYTES if src.root.is_remote else 0, target.dtype.itemsize)
    aligned = source.rechunk(aligned_chunks(offset, extent, chunks, group))
    written = aligned.map_blocks(
        _write_block, src=src, offset=offset, shape=shape, chunk_shape=chunks, target_dtype=target.dtype, what=what, lock=lock,
        chunks=tuple((1,) * len(c) for c in aligned.chunks), dtype=object, meta=np.empty((0,) * aligned.ndim, object),
    )
    from dask.highlevelgraph import HighLevelGraph

    name = f"settle-{written.name}"
    layer = {(name,): (_settle_store, written.__dask_keys__(), src, what)}
    return da.Array(HighLevelGraph.from_collections(name, layer, dependencies=[written]), name, (), dtype=np.int64)


def store_all(stores: list[tuple["da.Array", "Viewable", Any]], *, lock: bool | str | None = None,
              progress: bool | None = None) -> None:
    """Plan and compute every ``(source, target, region)`` store together (hd.store, dataset writes).

    When a commit sealed a target's node mid-store (``SealedWhileStoring``), each target (an ``hd.Array``)
    is moved to its branch's new head and the stores run again: a store rewrites the same values, so
    repeating one is safe and leaves none of its writes missing from the branch.
    """
    from hubdask import progress as _progress

    while True:
        jobs = [store(source, target, region, lock=lock) for source, target, region in stores]
        try:
            _progress.compute(jobs, progress)
            return
        except SealedWhileStoring:
            for _, target, _ in stores:
                src = view_of(target).source
                head = repository(src.root, src.ds).after_write(src.branch, src.node)
                if head is not None:
                    target._source = src.at_head(head)
