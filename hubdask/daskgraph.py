"""A View as a dask array: one task per storage chunk it touches, named by what it would read.

Names (and so dask tokens and keys) are deterministic for a commit's view: same data, same name, in any
process. A branch view is named after the head state it was built at; when that state's open node may
hold writes (anything may land there at any time), every build gets a new name, so no scheduler ever
reuses an old result for it.
"""

from __future__ import annotations

import itertools
import math
import uuid
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.highlevelgraph import HighLevelGraph

from hubdask import chunkio, grid
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


def _read_block(source: Source, sel: tuple, flips: tuple[int, ...], name: str) -> np.ndarray:
    return finish(chunkio.read_selection(source, sel, name), flips)


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


def build(view: View) -> da.Array:
    """The dask array of ``view`` read at ``view.source`` (resolve a branch first: ``view.current()``)."""
    source, axes, name = view.source, view.axes, view.name
    dtype, fill, chunk_shape = view.dtype, view.fill_value, view.storage_chunks
    meta = np.empty((0,) * view.ndim, dtype)
    if view.size == 0:
        return da.empty(view.shape, dtype=dtype)
    check_size(view)
    live = [k for k, a in enumerate(axes) if grid.is_live(a)]
    per_axis = {k: _axis_blocks(axes[k], chunk_shape[k]) for k in live}
    flipped = {k for k in live if isinstance(axes[k], grid.Span) and axes[k].ascending() is not axes[k]}
    for k in flipped:
        per_axis[k].reverse()
    chunks = tuple(tuple(b[2] for b in per_axis[k]) for k in live)
    key_name = f"hubdask-{name.replace('/', '-').replace(':', '-')}-{token(view)}"
    prefix = source.chunk_prefix().rstrip("/")
    known = None if source.reads_node else repository(source.root, source.ds).graph.chunk_map(source.commit)
    dsk: dict = {}
    for block in itertools.product(*(range(len(per_axis[k])) for k in live)):
        coords, sel, flips, shape = [], [], [], []
        b = iter(block)
        for k, a in enumerate(axes):
            if grid.is_live(a):
                j, s, n = per_axis[k][next(b)]
                sel.append(s)
                coords.append(j)
                shape.append(n)
                if k in flipped:
                    flips.append(len(shape) - 1)
            else:
                sel.append(a)
                coords.append(a // chunk_shape[k])
        key = (key_name, *block)
        if known is not None and grid.chunk_key(tuple(coords), prefix) not in known:
            dsk[key] = (np.full, tuple(shape), fill, dtype)
        else:
            dsk[key] = (_read_block, source, tuple(sel), tuple(flips), name)
    graph = HighLevelGraph.from_collections(key_name, dsk, dependencies=())
    out = da.Array(graph, key_name, chunks, dtype=dtype, meta=meta)
    takes = [(i, a.sorted_unique()[1]) for i, a in enumerate(a for a in axes if grid.is_live(a))
             if isinstance(a, grid.Points)]
    for axis, inv in takes:  # index arrays not ascending and distinct: dask's take on the distinct blocks
        if inv is not None:
            out = out[(slice(None),) * axis + (inv,)]
    return out
