"""Whole-array work in bounded waves: exact reductions over arrays of any chunk count (``map_blocks``,
which writes, is in mapblocks.py on the same waves).

dask cannot hold a graph of 10^8 tasks, so whole-array work does not build one. The chunks of a view
that hold data are listed from the commit's chunk map (and the branch's open node), grouped into tasks
of several chunks (each task fetches its chunks concurrently through chunkio), and the tasks run in
waves of at most ``tasks_per_wave`` on whatever dask scheduler is current (threads, processes, a
distributed cluster); a progress bar counts waves. Chunks never written are not read and get no task:
they are the fill value, so they enter a reduction arithmetically (their element count times the fill).

Reductions are exact: integer and boolean sums are Python integers (never wrap), means and variances of
integers are exact fractions rounded once at the end; float sums add per-chunk float64 sums with
``math.fsum``, and variances merge per-chunk (count, mean, M2) triples (Chan et al.).
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from hubdask import chunkio, grid, progress
from hubdask.source import Source
from hubdask.view import View, Viewable, view_of

TASK_BYTES = 64 * 2**20  # about this many (uncompressed) bytes of chunks per task
TASKS_PER_WAVE = 512
REDUCTIONS = ("sum", "mean", "min", "max", "std", "var")


# ---------------------------------------------------------------------------------------------------
# which chunks of a view hold data, by arithmetic on the grid and the chunk map


def chunk_piece(a: grid.Axis, c: int, j: int) -> tuple[int | slice, int] | None:
    """The selection inside the array along one axis that chunk ``j`` contributes, and its length."""
    if isinstance(a, int):
        return (a, 1) if a // c == j else None
    s = a.ascending()
    if s.n == 0:
        return None
    lo_i = max(0, -(-(j * c - s.start) // s.step))
    hi_i = min(s.n, -(-((j + 1) * c - s.start) // s.step))
    if lo_i >= hi_i:
        return None
    first = s.start + lo_i * s.step
    return slice(first, first + (hi_i - lo_i - 1) * s.step + 1, s.step), hi_i - lo_i


def chunk_range(a: grid.Axis, c: int) -> range:
    if isinstance(a, int):
        return range(a // c, a // c + 1)
    s = a.ascending()
    return range(s.start // c, s.last // c + 1) if s.n else range(0)


def stored_chunks(source: Source, ndim: int) -> set[tuple[int, ...]]:
    """Coordinates of every chunk of ``source``'s array that holds an object (commit map + open node)."""
    prefix = f"{source.path}/c" if source.path else "c"
    keys = source.stored_keys(prefix)
    out = set()
    for k in keys:
        parts = k[len(prefix):].split("/")[1:]
        if len(parts) == ndim and all(p.isdigit() for p in parts):
            out.add(tuple(int(p) for p in parts))
    return out


def written_parts(view: View) -> tuple[list[tuple[tuple, int]], int]:
    """([(selection inside one chunk, element count)] for the touched chunks holding data, total elements
    of the view) at ``view.source`` (resolve a branch first). Cost: O(chunks holding data) or O(chunks
    touched), whichever is smaller."""
    if not view.is_regular:
        raise ValueError(f"{view.what}: whole-view waves take views of ints and slices, not index arrays")
    source, axes, chunks = view.source, view.axes, view.storage_chunks
    stored = stored_chunks(source, len(chunks))
    ranges = [chunk_range(a, c) for a, c in zip(axes, chunks)]
    touched = math.prod(len(r) for r in ranges)
    if touched <= len(stored):
        candidates: Any = itertools.product(*ranges)
        keep = stored.__contains__
    else:
        candidates, keep = sorted(stored), lambda coords: all(j in r for j, r in zip(coords, ranges))
    memo: list[dict[int, Any]] = [{} for _ in axes]  # per axis: chunk index -> its piece (computed once)
    parts = []
    for coords in candidates:
        if not keep(coords):
            continue
        sel, n = [], 1
        for k, j in enumerate(coords):
            p = memo[k].get(j, False)
            if p is False:
                p = memo[k][j] = chunk_piece(axes[k], chunks[k], j)
            if p is None:
                break
            sel.append(p[0])
            n *= p[1]
        else:
            parts.append((tuple(sel), n))
    return parts, view.size


# ---------------------------------------------------------------------------------------------------
# waves


def selection_key(sel: tuple) -> tuple:
    return tuple((s.start, s.stop, s.step) if isinstance(s, slice) else s for s in sel)


def _batches(items: list, per_task: int) -> list[list]:
    return [items[i:i + per_task] for i in range(0, len(items), per_task)]


def chunks_per_task(view: View) -> int:
    return max(1, TASK_BYTES // max(1, math.prod(view.storage_chunks) * view.dtype.itemsize))


def run_waves(fn: Callable[[list], Any], items: list, per_task: int, *, desc: str,
              tasks_per_wave: int = TASKS_PER_WAVE, scheduler: Any = None,
              show_progress: bool | None = None) -> list:
    """``fn(batch)`` for batches of ``per_task`` items, at most ``tasks_per_wave`` tasks per dask graph,
    one graph (wave) after another on the current (or given) scheduler; returns every result in order."""
    import dask

    tasks = _batches(items, per_task)
    waves = _batches(tasks, max(1, tasks_per_wave))
    out: list = []
    with progress.bar(len(waves), desc, show_progress, unit="wave") as bar:
        for wave in waves:
            delayed = [dask.delayed(_call, pure=False)(fn, _Ref(batch)) for batch in wave]  # opaque: no traversal
            out.extend(_compute(delayed, scheduler))
            bar.update(1)
    return out


def _call(fn: Callable[[list], Any], batch: "_Ref") -> Any:
    return fn(batch.view)


def _compute(delayed: list, scheduler: Any) -> list:
    """Compute on the given scheduler; inside a distributed worker, through a worker client (seceding)."""
    import dask

    if scheduler is None and "distributed" in sys.modules:  # never import distributed just to ask
        try:
            from distributed import get_worker, worker_client

            get_worker()
        except (ImportError, ValueError):
            pass
        else:
            with worker_client() as client:
                return list(client.gather(client.compute(delayed)))
    return list(dask.compute(*delayed, scheduler=scheduler))


# ---------------------------------------------------------------------------------------------------
# reductions


class _Stats:
    """Exact partial statistics of some elements, mergeable in any order."""

    __slots__ = ("n", "s1", "s2", "mean", "m2", "lo", "hi", "exact")

    def __init__(self, exact: bool) -> None:
        self.exact = exact  # integer/bool data: s1, s2 are Python ints
        self.n, self.s1, self.s2, self.mean, self.m2, self.lo, self.hi = 0, 0, 0, 0.0, 0.0, None, None

    def merge(self, o: "_Stats") -> None:
        if o.n == 0:
            return
        if self.exact:
            self.s1 += o.s1
            self.s2 += o.s2
        else:
            self.s1 = math.fsum((self.s1, o.s1)) if isinstance(self.s1, float) or isinstance(o.s1, float) else self.s1 + o.s1
            n = self.n + o.n
            delta = o.mean - self.mean
            self.mean += delta * o.n / n
            self.m2 += o.m2 + abs(delta) ** 2 * self.n * o.n / n
        self.n += o.n
        self.lo = o.lo if self.lo is None else min(self.lo, o.lo)
        self.hi = o.hi if self.hi is None else max(self.hi, o.hi)


def _exact(dtype: np.dtype) -> bool:
    return dtype.kind in "biu"


def _int_sum(x: np.ndarray) -> int:
    """The exact sum of an integer block as a Python int (8-byte ints summed in two 32-bit halves)."""
    if x.dtype.itemsize < 8:
        return int(x.sum(dtype=np.uint64 if x.dtype.kind in "bu" else np.int64))
    hi = (x >> 32).sum(dtype=np.int64 if x.dtype.kind == "i" else np.uint64)
    lo = (x & 0xFFFFFFFF).sum(dtype=np.uint64)
    return (int(hi) << 32) + int(lo)


def _block_stats(x: np.ndarray, need_moments: bool) -> _Stats:
    st = _Stats(_exact(x.dtype))
    st.n = x.size
    if x.size == 0:
        return st
    st.lo, st.hi = x.min(), x.max()
    if st.exact:
        st.s1 = _int_sum(x)
        if need_moments:
            st.s2 = _sum_squares(x)
    else:
        xf = x.astype(np.float64, copy=False) if x.dtype.kind == "f" else x
        st.s1 = float(xf.sum(dtype=np.float64)) if x.dtype.kind == "f" else complex(xf.sum())
        if need_moments:
            st.mean = st.s1 / st.n
            st.m2 = float(((xf - st.mean) ** 2).sum()) if x.dtype.kind == "f" else float((abs(xf - st.mean) ** 2).sum())
        else:
            st.mean = st.s1 / st.n
    return st


_WIDE = {1: (np.int16, np.uint16), 2: (np.int32, np.uint32), 4: (np.int64, np.uint64)}


def _sum_squares(x: np.ndarray) -> int:
    """Exact sum of squares of an integer block, squared in a type twice as wide, in cache-sized slices."""
    flat = x.reshape(-1)
    if x.dtype.itemsize > 4:
        return sum(v * v for v in flat.tolist())
    wide = _WIDE[x.dtype.itemsize][0 if x.dtype.kind == "i" else 1]
    total = 0
    for i in range(0, flat.size, 2**16):
        v = flat[i:i + 2**16].astype(wide)
        np.multiply(v, v, out=v)
        total += int(v.sum(dtype=np.uint64)) if x.dtype.itemsize <= 2 else _int_sum(v.view(np.uint64))
    return total


def _fill_stats(fill: Any, n: int, dtype: np.dtype) -> _Stats:
    st = _Stats(_exact(dtype))
    st.n = n
    if n == 0:
        return st
    value = np.array(fill, dtype)
    st.lo = st.hi = value[()]
    if st.exact:
        v = int(value)
        st.s1, st.s2 = v * n, v * v * n
    else:
        st.s1 = float(value) * n if dtype.kind == "f" else complex(value) * n
        st.mean, st.m2 = (float(value) if dtype.kind == "f" else complex(value)), 0.0
    return st


def stats(view: "Viewable", *, need_moments: bool = True, scheduler: Any = None,
          show_progress: bool | None = None, tasks_per_wave: int = TASKS_PER_WAVE) -> _Stats:
    """Merged statistics of every element of ``view`` at its branch's head now, unwritten chunks counted
    from the fill value."""
    view = view_of(view).current()
    parts, total = written_parts(view)
    source, name, dtype = view.source, view.name, view.dtype

    def task(batch: list) -> _Stats:
        sels = [sel for sel, _ in batch]
        blocks = chunkio.map_chunks(source, sels, name, lambda b: _block_stats(b, need_moments))
        if blocks is None:  # codecs the chunk engine does not run: through zarr, one block at a time
            blocks = [_block_stats(chunkio.read_selection(source, sel, name), need_moments) for sel in sels]
        acc = _Stats(_exact(dtype))
        for b in blocks:
            acc.merge(b)
        return acc

    acc = _Stats(_exact(dtype))
    covered = sum(n for _, n in parts)
    for st in run_waves(task, parts, chunks_per_task(view), desc=f"reduce {name}", scheduler=scheduler,
                        show_progress=show_progress, tasks_per_wave=tasks_per_wave):
        acc.merge(st)
    acc.merge(_fill_stats(view.fill_value, total - covered, dtype))
    return acc


def _result_dtype(op: str, dtype: np.dtype) -> np.dtype:
    sample = np.zeros(1, dtype)
    return np.dtype(getattr(np, op)(sample).dtype)


def reduce(view: "Viewable", op: str, *, ddof: int = 0, scheduler: Any = None, show_progress: bool | None = None,
           tasks_per_wave: int = TASKS_PER_WAVE) -> Any:
    """The whole-view reduction ``op`` (sum, mean, min, max, std, var), computed exactly in waves."""
    view = view_of(view)
    if op not in REDUCTIONS:
        raise ValueError(f"dataset {view.name!r}: unknown reduction {op!r}; expected one of {', '.join(REDUCTIONS)}")
    st = stats(view, need_moments=op in ("std", "var"), scheduler=scheduler, show_progress=show_progress,
               tasks_per_wave=tasks_per_wave)
    dtype = _result_dtype(op, view.dtype)
    if op in ("min", "max"):
        if st.n == 0:
            raise ValueError(f"dataset {view.name!r}: zero-size view has no {op}imum")
        return np.array(st.lo if op == "min" else st.hi, view.dtype)[()]
    if op == "sum":
        if st.exact:
            info = np.iinfo(dtype)
            return dtype.type(st.s1) if info.min <= st.s1 <= info.max else st.s1  # a Python int beyond range
        return dtype.type(st.s1)
    if st.n == 0 or op in ("std", "var") and st.n - ddof <= 0:
        return dtype.type(np.nan)
    if op == "mean":
        return dtype.type(Fraction(st.s1, st.n)) if st.exact else dtype.type(st.s1 / st.n)
    if st.exact:
        var = Fraction(st.n * st.s2 - st.s1 * st.s1, st.n * (st.n - ddof))
    else:
        var = st.m2 / (st.n - ddof)
    return dtype.type(float(var) if op == "var" else math.sqrt(float(var)))


def lazy_reduce(view: "Viewable", op: str, **kwargs: Any):
    """The reduction as a 0-d dask array (one task that runs the waves), so it composes with dask."""
    import dask
    import dask.array as da

    view = view_of(view)
    dtype = _result_dtype(op, view.dtype)
    return da.from_delayed(dask.delayed(_reduce_ref, pure=False)(_Ref(view), op, kwargs), (), dtype=dtype)


class _Ref:
    """Carries a view (or a batch) into a task opaquely: dask neither computes nor traverses it."""

    def __init__(self, view: Any) -> None:
        self.view = view


def _reduce_ref(ref: _Ref, op: str, kwargs: dict) -> Any:
    return reduce(ref.view, op, **kwargs)
