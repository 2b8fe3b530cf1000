"""``hd.map_blocks`` (an entry point, beside ``api``): apply a function to every storage chunk of a view and write the results, in
bounded waves (compute.run_waves) on any dask scheduler, for arrays of any chunk count."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from hubdask import chunkio, grid
from hubdask.api import array as create
from hubdask.compute import TASKS_PER_WAVE, chunk_range, selection_key, chunks_per_task, chunk_piece, run_waves, written_parts
from hubdask.view import View, view_of
from hubdask.write import write_region

if TYPE_CHECKING:
    from hubdask.array import Array


def map_blocks(func: Callable[[np.ndarray], np.ndarray], array: "Array", out: "Array | str | None" = None, *,
               dtype: Any = None, scheduler: Any = None, progress: bool | None = None,
               tasks_per_wave: int = TASKS_PER_WAVE, **kwargs: Any) -> "Array":
    """Apply ``func(block, **kwargs)`` to every storage chunk of ``array`` (a view) and write the results
    into ``out`` (an hd.Array of the view's shape on a branch, or a name to create with the view's chunk
    shape and ``dtype``), in bounded waves on any dask scheduler. Returns ``out``.

    Chunks never written are not read: ``func`` runs once on a fill-valued block; where that gives
    ``out``'s fill value, those chunks cost nothing. Otherwise each is written, in waves too.
    """
    view = view_of(array).current()
    what = view.what
    if not view.is_regular or any(isinstance(a, grid.Span) and a.step < 0 for a in view.axes):
        raise ValueError(f"{what}: map_blocks needs a view of ints and ascending slices (no negative steps "
                         "or index arrays)")
    if out is None:
        raise TypeError(f"{what}: map_blocks writes its results: give out= (an hd.Array) or a name to create")
    if isinstance(out, str):
        out = create(view.shape, out, dtype=dtype or view.dtype, chunks=view.chunks, shards=view.shards, exist_ok=False,
                     storage=view.source.root)
    result_view = view_of(out)
    if result_view.shape != view.shape:
        raise ValueError(f"{what}: out {result_view.name!r} has shape {result_view.shape}, expected the view's "
                         f"{view.shape}")
    if result_view.source.branch is None or result_view.is_view:
        raise ValueError(f"{what}: out {result_view.name!r} must be a whole array opened on a branch")
    parts, _ = written_parts(view)
    source, name = view.source, view.name
    target, tshape, tchunks = result_view.source, result_view.storage_shape, result_view.storage_chunks
    tdtype = result_view.dtype
    origin = [a.start if isinstance(a, grid.Span) else None for a in view.axes]
    steps = [a.step if isinstance(a, grid.Span) else None for a in view.axes]

    def out_region(sel: tuple) -> tuple[slice, ...]:
        region = []
        for s, o, st in zip(sel, origin, steps):
            if o is None:
                continue
            i0 = (s.start - o) // st
            region.append(slice(i0, i0 + len(range(s.start, s.stop, s.step))))
        return tuple(region)

    def apply(block: np.ndarray, sel: tuple) -> None:
        result = np.asarray(func(block, **kwargs))
        if result.shape != block.shape:
            raise ValueError(f"{what}: map_blocks func returned shape {result.shape} for a block of {block.shape}")
        write_region(target, out_region(sel), result.astype(tdtype, copy=False), tshape, tchunks)

    def task(batch: list) -> int:
        sels = [sel for sel, _ in batch]
        blocks = chunkio.map_chunks(source, sels, name, lambda b: b, fresh=True)
        if blocks is None:
            blocks = [chunkio.read_selection(source, sel, name) for sel in sels]
        for block, sel in zip(blocks, sels):
            apply(block, sel)
        return len(sels)

    run_waves(task, parts, chunks_per_task(array), desc=f"map_blocks {name}", scheduler=scheduler,
              show_progress=progress, tasks_per_wave=tasks_per_wave)
    _fill_blocks(func, view, result_view, {selection_key(sel) for sel, _ in parts}, apply, scheduler, progress,
                 tasks_per_wave, kwargs)
    return out


def _fill_blocks(func: Callable, array: View, out: View, written: set, apply: Callable, scheduler: Any,
                 show_progress: bool | None, tasks_per_wave: int, kwargs: dict) -> None:
    """The never-written chunks: nothing to do when ``func`` maps the fill block to ``out``'s fill."""
    fill_block = np.full(array.blocks, array.fill_value, array.dtype)
    result = np.asarray(func(fill_block, **kwargs))
    if result.shape == fill_block.shape and np.all(result == np.array(out.fill_value, out.dtype)):
        return
    axes, chunks = array.axes, array.storage_chunks
    ranges = [chunk_range(a, c) for a, c in zip(axes, chunks)]
    todo = []
    for coords in itertools.product(*ranges):
        sel = tuple(chunk_piece(a, c, j)[0] for a, c, j in zip(axes, chunks, coords))
        if selection_key(sel) not in written:
            todo.append(sel)

    def task(batch: list) -> int:
        for sel in batch:
            shape = tuple(len(range(s.start, s.stop, s.step)) for s in sel if isinstance(s, slice))
            apply(np.full(shape, array.fill_value, array.dtype), sel)
        return len(batch)

    run_waves(task, todo, chunks_per_task(array), desc=f"map_blocks {array.name} (unwritten)", scheduler=scheduler,
              show_progress=show_progress, tasks_per_wave=tasks_per_wave)
