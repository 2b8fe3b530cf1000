"""A View as a dask array: one task per storage chunk it touches, named by what it would read.

Names (and so dask tokens and keys) are deterministic for a commit's view: same data, same name, in any
process. A branch view is named after the head state it was built at; when that state's open node may
hold writes (anything may land there at any time), every build gets a new name, so no scheduler ever
reuses an old result for it.
"""

from __future__ import annotations

import itertools
import math
import os
import uuid
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.highlevelgraph import HighLevelGraph

from hubdask import chunkio, config, grid
from hubdask.source import Source
from hubdask.versioning import repository
from hubdask.view import View, finish

MAX_GRAPH_TASKS = 2_000_000  # beyond this a view is too big for one dask graph: use hd.compute's waves


def changes_by_itself(view: View) -> bool:
    """Whether what ``view`` reads may change with no change of its source: a branch state whose open
    node may hold writes (any writer may add one at any moment)."""
    return view.source.branch is not None and view.source.reads_node


def token(view: View) -> str:
    """The dask token of ``view`` at its source's state (call with ``view.current()`` for a branch): a
    new one at every call when the view ``changes_by_itself``."""
    nonce = uuid.uuid4().hex if changes_by_itself(view) else None
    return dask.base.tokenize("hubdask.View", view.source, view.axes, nonce)


GROUP_BYTES = 32 * 2**20  # a remote root's read task fetches about this many bytes of chunks concurrently
MIN_GROUPS = os.cpu_count() or 1  # ... but at least this many (the threaded scheduler's threads), each busy


def _read_block(source: Source, sel: tuple, flips: tuple[int, ...], name: str,
                versions: dict | None = None) -> np.ndarray:
    return finish(chunkio.read_selection(source, sel, name, versions=versions), flips)


def _read_group(source: Source, sel: tuple, name: str, versions: dict | None = None) -> np.ndarray:
    """The ascending box of several chunks in one read (the direct path's concurrent fetches); the
    ``_pick`` tasks of its chunks cut it into the graph's blocks."""
    return chunkio.read_selection(source, sel, name, versions=versions)


def _pick(group: np.ndarray, box: tuple[slice, ...], flips: tuple[int, ...]) -> np.ndarray:
    """One chunk's block of a group read, in the view's order, C-contiguous."""
    return np.ascontiguousarray(finish(group[box], flips))


def _node_versions(source: Source, name: str) -> dict:
    """The open node's newest chunk versions, listed once per compute for all of a graph's reads."""
    return chunkio.node_versions(source)


def _group_extent(nblocks: list[int], chunk_bytes: int) -> list[int]:
    """Blocks per group along each live axis: about GROUP_BYTES, at most the read concurrency, and at
    least MIN_GROUPS groups; filled from the last axis (contiguous in storage order)."""
    total = math.prod(nblocks)
    size = max(1, min(config.read_concurrency(), GROUP_BYTES // max(1, chunk_bytes), -(-total // MIN_GROUPS)))
    extent = []
    for n in reversed(nblocks):
        g = max(1, min(n, size))
        extent.append(g)
        size //= g
    return extent[::-1]


def _merge(sels: list) -> Any:
    """The one ascending selection that reads consecutive blocks' selections along one axis."""
    if isinstance(sels[0], np.ndarray):
        return np.concatenate(sels)
    return slice(sels[0].start, sels[-1].stop, sels[0].step)


def _axis_blocks(a: grid.Axis, c: int) -> list[tuple[int, Any, int]] | None:
    """Per block along one live axis: (chunk index, the ascending selection in the array, length)."""
    if isinstance(a, grid.Points):
        u, _ = a.sorted_unique()
        return [(j, u[i0:i1], i1 - i0) for j, i0, i1 in grid.runs_by_chunk(u, c)]
    s = a.ascending()
    out = []
    for p in grid.pieces(s, c):
        n = p.i1 - p.i0
        start = p.chunk * c + p.lo
        out.append((p.chunk, slice(start, start + (n - 1) * s.step + 1, s.step), n))
    return out


def _count_blocks(a: grid.Axis, c: int) -> int:
    if isinstance(a, grid.Points):
        return len(np.unique(a.idx // c))
    return grid.count_pieces(a.ascending(), c)


def check_size(view: View) -> int:
    """The number of tasks ``view`` needs; ValueError naming it when one dask graph cannot hold them."""
    chunks = view.storage_chunks
    n = math.prod(_count_blocks(a, c) for a, c in zip(view.axes, chunks) if grid.is_live(a))
    if n > MAX_GRAPH_TASKS:
        raise ValueError(
            f"{view.what}: this view touches {n:,} chunks, more than one dask graph holds ({MAX_GRAPH_TASKS:,}); "
            "slice it first (each slice is its own graph), or use the whole-array reductions (view.sum(), "
            ".mean(), ...) and hd.map_blocks, which run in bounded waves")
    return n


def grouped(source: Source) -> bool:
    """Whether reads of ``source`` go in group tasks: on remote roots, where a chunk is a request whose
    latency only many concurrent ones hide."""
    return source.root.is_remote


def build(view: View) -> da.Array:
    """The dask array of ``view`` read at ``view.source`` (resolve a branch first: ``view.current()``).

    One key per chunk the view touches. On a remote root, boxes of neighbouring chunks are read by one
    ``_read_group`` task each (concurrent GETs) and cut into the chunks' blocks by ``_pick`` tasks; the
    open node of a branch is listed once, by one ``_node_versions`` task that every read depends on."""
    source, axes, name = view.source, view.axes, view.name
    dtype, fill, chunk_shape = view.dtype, view.fill_value, view.storage_chunks
    meta = np.empty((0,) * view.ndim, dtype)
    if view.size == 0:
        return da.empty(view.shape, dtype=dtype)
    check_size(view)
    live = [k for k, a in enumerate(axes) if grid.is_live(a)]
    per_axis = {k: _axis_blocks(axes[k], chunk_shape[k]) for k in live}  # ascending order
    flipped = {k for k in live if isinstance(axes[k], grid.Span) and axes[k].ascending() is not axes[k]}
    chunks = tuple(tuple(b[2] for b in (per_axis[k][::-1] if k in flipped else per_axis[k])) for k in live)
    nblocks = [len(per_axis[k]) for k in live]
    key_name = f"hubdask-{name.replace('/', '-').replace(':', '-')}-{token(view)}"
    prefix = source.chunk_prefix().rstrip("/")
    known = None if source.reads_node else repository(source.root, source.ds).graph.chunk_map(source.commit)
    chunk_bytes = math.prod(chunk_shape) * dtype.itemsize
    extent = _group_extent(nblocks, chunk_bytes) if grouped(source) else [1] * len(live)
    dsk: dict = {}
    versions = None
    if source.reads_node and math.prod(extent) > 1 and math.prod(nblocks) > chunkio.LIST_EACH_CHUNK_AT:
        versions = f"{key_name}-versions"
        dsk[versions] = (_node_versions, source, name)
    flips = tuple(i for i, k in enumerate(live) if k in flipped)

    def block_key(block: tuple[int, ...]) -> tuple:
        return (key_name, *(n - 1 - b if k in flipped else b for b, k, n in zip(block, live, nblocks)))

    def is_fill(block: tuple[int, ...]) -> bool:
        if known is None:
            return False
        b = iter(block)
        coords = tuple(per_axis[k][next(b)][0] if grid.is_live(a) else a // chunk_shape[k] for k, a in enumerate(axes))
        return grid.chunk_key(coords, prefix) not in known

    def shape_of(block: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(per_axis[k][b][2] for b, k in zip(block, live))

    def selection(lo: tuple[int, ...], hi: tuple[int, ...]) -> tuple:
        ranges = iter(zip(lo, hi))
        return tuple(_merge([blk[1] for blk in per_axis[k][slice(*next(ranges))]]) if grid.is_live(a) else a
                     for k, a in enumerate(axes))

    for lo in itertools.product(*(range(0, n, g) for n, g in zip(nblocks, extent))):
        hi = tuple(min(n, b + g) for b, g, n in zip(lo, extent, nblocks))
        blocks = list(itertools.product(*(range(b, e) for b, e in zip(lo, hi))))
        reads = [blk for blk in blocks if not is_fill(blk)]
        for blk in blocks:
            if blk not in reads:
                dsk[block_key(blk)] = (np.full, shape_of(blk), fill, dtype)
        if len(reads) == 1:
            dsk[block_key(reads[0])] = (_read_block, source, selection(reads[0], tuple(b + 1 for b in reads[0])),
                                        flips, name, versions)
        elif reads:
            group = (f"{key_name}-group", *lo)
            dsk[group] = (_read_group, source, selection(lo, hi), name, versions)
            starts = [np.cumsum([0] + [per_axis[k][b][2] for b in range(l, h)]) for k, l, h in zip(live, lo, hi)]
            for blk in reads:
                box = tuple(slice(int(st[b - l]), int(st[b - l + 1])) for st, b, l in zip(starts, blk, lo))
                dsk[block_key(blk)] = (_pick, group, box, flips)
    graph = HighLevelGraph.from_collections(key_name, dsk, dependencies=())
    out = da.Array(graph, key_name, chunks, dtype=dtype, meta=meta)
    takes = [(i, a.sorted_unique()[1]) for i, a in enumerate(a for a in axes if grid.is_live(a))
             if isinstance(a, grid.Points)]
    for axis, inv in takes:  # index arrays not ascending and distinct: dask's take on the distinct blocks
        if inv is not None:
            out = out[(slice(None),) * axis + (inv,)]
    return out
