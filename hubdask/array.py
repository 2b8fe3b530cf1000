"""``hd.Array``: a lazy view of a stored array that is a dask collection.

A view is a Source (array + resolved state) and per-axis spans (see grid.py). Reading builds a dask
graph with one task per storage chunk the view touches; ``np.asarray`` reads directly through zarr,
which fetches the touched chunks concurrently. Chunks known to be unwritten become ``np.full`` tasks.
"""

from __future__ import annotations

import itertools
import math
import threading
from concurrent.futures import Future
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.highlevelgraph import HighLevelGraph

from hubdask import grid
from hubdask.errors import CorruptChunkError
from hubdask.history import Versioned
from hubdask.source import Source

MAX_GRAPH_TASKS = 2_000_000  # beyond this a view is too big for one dask graph: use hd.compute's waves


class Array(Versioned):
    """A view of a stored array: ``shape, dtype, chunks, ndim, size, nbytes, name``."""

    def __init__(self, source: Source, name: str, axes: tuple[grid.Axis, ...] | None = None,
                 meta: Any = None) -> None:
        self._source = source
        self._seen: Source | None = None  # the branch state the last read found (what the next assumes)
        self._name = name
        self._meta = meta if meta is not None else source.zarr().metadata
        self._axes = axes if axes is not None else grid.full(tuple(self._meta.shape))

    # --- what it is ---------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def shape(self) -> tuple[int, ...]:
        return grid.view_shape(self._axes)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._meta.dtype.to_native_dtype())

    @property
    def chunks(self) -> tuple[int, ...]:
        """The storage chunk shape along the view's axes."""
        full = self.storage_chunks
        return tuple(c for c, a in zip(full, self._axes) if isinstance(a, grid.Span))

    @property
    def storage_chunks(self) -> tuple[int, ...]:
        return tuple(self._meta.chunk_grid.chunk_shape)

    @property
    def storage_shape(self) -> tuple[int, ...]:
        return tuple(self._meta.shape)

    @property
    def fill_value(self) -> Any:
        return self._meta.fill_value

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError(f"len() of a 0-d view of {self._name!r}")
        return self.shape[0]

    def __repr__(self) -> str:
        return (f"hubdask.Array<{self._name!r}, shape={self.shape}, dtype={self.dtype}, "
                f"chunks={self.chunks}>")

    def _repr_html_(self) -> str:
        from hubdask.viz import repr_html

        return repr_html(self)

    def show(self, index: Any = (), **kwargs: Any) -> Any:
        """Draw ``self[index]`` with matplotlib (see hubdask.viz.show); returns the Axes."""
        from hubdask.viz import show

        return show(self, index, **kwargs)

    plot = show

    @property
    def is_view(self) -> bool:
        return self._axes != grid.full(self.storage_shape)

    # --- views -------------------------------------------------------------------------------------

    def __getitem__(self, index: Any) -> "Array":
        return Array(self._source, self._name, grid.compose(self._axes, index, f"dataset {self._name!r}"),
                     self._meta)

    def __setitem__(self, index: Any, value: Any) -> None:
        from hubdask.write import setitem

        setitem(self, index, value)

    # --- reading -----------------------------------------------------------------------------------

    def _fresh_source(self) -> Source:
        """The source to read now: a branch view follows its branch to see every returned write."""
        if self._source.branch is None:
            return self._source
        src = self._source
        head = self._repo.resolve(src.branch).head
        return Source.at(src.root, src.ds, src.path, head.base, head, cache=src.cache)

    def _selection(self) -> tuple[tuple[int | slice, ...], tuple[int, ...]]:
        """The ascending zarr selection of the view and the output axes to flip afterwards."""
        sel, flips, out_axis = [], [], 0
        for a in self._axes:
            if isinstance(a, grid.Span):
                asc = a.ascending()
                if asc is not a:
                    flips.append(out_axis)
                sel.append(slice(asc.start, asc.start + (asc.n - 1) * asc.step + 1 if asc.n else asc.start, asc.step))
                out_axis += 1
            else:
                sel.append(a)
        return tuple(sel), tuple(flips)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self.read()
        return out.astype(dtype, copy=False) if dtype is not None else out

    def read(self) -> np.ndarray:
        """Read the view into memory now, through the chunk engine (no dask scheduler)."""
        sel, flips = self._selection()
        out = self._read_current(sel)
        return np.flip(out, flips) if flips else out

    def _read_current(self, sel: tuple) -> np.ndarray:
        """``sel`` at the branch's current state. On a remote root the head check (one LIST) runs while
        the chunks of the state last seen are read; only if the branch moved meanwhile (a commit, or a
        first write into its open node) is the read repeated at the new state."""
        src = self._source
        if src.branch is None:
            return read_selection(src, sel, self._name)
        if src.root.is_local or src.root.scheme == "memory":  # a head check costs less than a thread here
            return read_selection(self._fresh_source(), sel, self._name)
        src = self._seen if self._seen is not None and self._seen.branch == src.branch else src
        check = _in_thread(self._fresh_source)
        try:
            out, failed = read_selection(src, sel, self._name), None
        except Exception as exc:  # e.g. a chunk of the old state collected since: decided below
            out, failed = None, exc
        now = self._seen = check.result()
        if now == src:
            if failed is not None:
                raise failed
            return out
        return read_selection(now, sel, self._name)

    def to_dask(self) -> da.Array:
        """A dask array with one task per storage chunk the view touches."""
        return build_dask(self._fresh_source(), self._axes, self._meta, self._name)

    def to_xarray(self, dims: Any = None, **kwargs: Any) -> Any:
        """A lazy (dask-backed) ``xarray.DataArray`` of the view (see integrations.xarray)."""
        from hubdask.integrations.xarray import to_xarray

        return to_xarray(self, dims, **kwargs)

    def compute(self, **kwargs: Any) -> np.ndarray:
        (out,) = dask.compute(self, **kwargs)
        return out

    def persist(self, **kwargs: Any) -> da.Array:
        return self.to_dask().persist(**kwargs)

    # The dask collection protocol, by the view's dask array (built once per use).
    def __dask_graph__(self):
        return self._dask().__dask_graph__()

    def __dask_keys__(self):
        return self._dask().__dask_keys__()

    def __dask_layers__(self):
        return self._dask().__dask_layers__()

    def __dask_postcompute__(self):
        return self._dask().__dask_postcompute__()

    def __dask_postpersist__(self):
        return self._dask().__dask_postpersist__()

    def __dask_tokenize__(self):
        return (self._source.key, self._axes)

    __dask_optimize__ = staticmethod(da.Array.__dask_optimize__)
    __dask_scheduler__ = staticmethod(da.Array.__dask_scheduler__)

    def _dask(self) -> da.Array:
        cached = self.__dict__.get("_dask_cache")
        if cached is None:
            cached = self.__dict__["_dask_cache"] = self.to_dask()
        return cached

    # --- numpy-like methods, all lazy (dask) ---------------------------------------------------------

    def astype(self, dtype: Any) -> da.Array:
        return self.to_dask().astype(dtype)

    # Whole-view reductions (axis=None) run in bounded waves, exactly, with unwritten chunks taken from
    # the fill value (hubdask.compute): any size of array. With an axis they are dask.array's.
    def _reduction(self, op: str, axis: Any, kw: dict) -> da.Array:
        if axis is None and set(kw) <= ({"ddof"} if op in ("std", "var") else set()):
            from hubdask.compute import lazy_reduce

            return lazy_reduce(self, op, **kw)
        return getattr(self.to_dask(), op)(axis=axis, **kw)

    def sum(self, axis: Any = None, **kw: Any) -> da.Array:
        return self._reduction("sum", axis, kw)

    def mean(self, axis: Any = None, **kw: Any) -> da.Array:
        return self._reduction("mean", axis, kw)

    def std(self, axis: Any = None, **kw: Any) -> da.Array:
        return self._reduction("std", axis, kw)

    def var(self, axis: Any = None, **kw: Any) -> da.Array:
        return self._reduction("var", axis, kw)

    def min(self, axis: Any = None, **kw: Any) -> da.Array:
        return self._reduction("min", axis, kw)

    def max(self, axis: Any = None, **kw: Any) -> da.Array:
        return self._reduction("max", axis, kw)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = tuple(x.to_dask() if isinstance(x, Array) else x for x in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)


def _binary(op: str):
    def method(self: Array, other: Any) -> da.Array:
        other = other.to_dask() if isinstance(other, Array) else other
        return getattr(self.to_dask(), op)(other)

    method.__name__ = op
    return method


for _op in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
            "__floordiv__", "__rfloordiv__", "__pow__", "__mod__", "__lt__", "__le__", "__gt__", "__ge__",
            "__eq__", "__ne__", "__and__", "__or__", "__xor__"):
    setattr(Array, _op, _binary(_op))
Array.__hash__ = object.__hash__
Array.__neg__ = lambda self: -self.to_dask()
Array.__abs__ = lambda self: abs(self.to_dask())


def _in_thread(fn: Any) -> Future:
    """``fn()`` running in a new thread, as a Future."""
    done: Future = Future()

    def run() -> None:
        try:
            done.set_result(fn())
        except BaseException as exc:  # handed to whoever waits on the future
            done.set_exception(exc)

    threading.Thread(target=run, name="hubdask-head-check", daemon=True).start()
    return done


def read_selection(source: Source, sel: tuple, name: str) -> np.ndarray:
    """Read an ascending basic selection: hubdask's chunk engine (concurrent fetches, threaded decode
    straight into the output; see chunkio.py), or zarr for codec chains the engine does not run.
    Codec failures become a CorruptChunkError naming the dataset and chunk."""
    from hubdask import chunkio

    try:
        out = chunkio.read(source, sel, name)
        if out is not None:
            return out
        out = source.zarr()[sel]
    except CorruptChunkError:
        raise
    except (ValueError, RuntimeError) as exc:
        if "checksum" in str(exc).lower() or "decompress" in str(exc).lower() or "zstd" in str(exc).lower():
            raise CorruptChunkError(
                f"dataset {name!r}: a chunk in selection {sel} is corrupted in storage ({exc}); "
                "expected bytes matching their crc32c checksum"
            ) from exc
        raise
    return np.asarray(out)


def _read_block(source: Source, sel: tuple, flips: tuple[int, ...], name: str) -> np.ndarray:
    out = read_selection(source, sel, name)
    return np.flip(out, flips) if flips else out


def build_dask(source: Source, axes: tuple[grid.Axis, ...], meta: Any, name: str) -> da.Array:
    """One task per touched storage chunk; unwritten chunks at a commit are ``np.full`` (no I/O)."""
    chunk_shape = tuple(meta.chunk_grid.chunk_shape)
    dtype = np.dtype(meta.dtype.to_native_dtype())
    fill = meta.fill_value
    live = [k for k, a in enumerate(axes) if isinstance(a, grid.Span)]
    spans = {k: axes[k].ascending() for k in live}
    flipped = {k for k in live if spans[k] is not axes[k]}
    if any(spans[k].n == 0 for k in live):
        return da.empty(tuple(spans[k].n for k in live), dtype=dtype)
    n_tasks = math.prod(grid.count_pieces(spans[k], chunk_shape[k]) for k in live) if live else 1
    if n_tasks > MAX_GRAPH_TASKS:
        raise ValueError(
            f"dataset {name!r}: this view touches {n_tasks:,} chunks, more than one dask graph should hold "
            f"({MAX_GRAPH_TASKS:,}); select less, or use hd.map_blocks / the array's whole-array reductions, "
            "which run in bounded waves"
        )
    per_axis = {k: list(grid.pieces(spans[k], chunk_shape[k])) for k in live}
    for k in flipped:
        per_axis[k].reverse()
    chunks = tuple(tuple(p.i1 - p.i0 for p in per_axis[k]) for k in live)
    token = dask.base.tokenize(source, axes)
    key_name = f"hubdask-{name.replace('/', '-').replace(':', '-')}-{token}"
    prefix = source.chunk_prefix()
    known = None if source.reads_node else _chunk_keys(source)
    dsk: dict = {}
    for block in itertools.product(*(range(len(per_axis[k])) for k in live)):
        coords, sel, flips, shape = [], [], [], []
        b = iter(block)
        for k, a in enumerate(axes):
            c = chunk_shape[k]
            if isinstance(a, grid.Span):
                i = next(b)
                p = per_axis[k][i]
                n = p.i1 - p.i0
                start = p.chunk * c + p.lo
                sel.append(slice(start, start + (n - 1) * spans[k].step + 1, spans[k].step))
                coords.append(p.chunk)
                shape.append(n)
                if k in flipped:
                    flips.append(len(shape) - 1)
            else:
                sel.append(a)
                coords.append(a // c)
        key = (key_name, *block)
        if known is not None and grid.chunk_key(tuple(coords), prefix.rstrip("/")) not in known:
            dsk[key] = (np.full, tuple(shape), fill, dtype)
        else:
            dsk[key] = (_read_block, source, tuple(sel), tuple(flips), name)
    graph = HighLevelGraph.from_collections(key_name, dsk, dependencies=())
    return da.Array(graph, key_name, chunks, dtype=dtype, meta=np.empty((0,) * len(live), dtype))


def _chunk_keys(source: Source) -> set[str] | dict:
    from hubdask.versioning import repository

    return repository(source.root, source.ds).graph.chunk_map(source.commit)
