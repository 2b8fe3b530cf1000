"""``hd.Array``: the user's handle on a view of a stored array, a dask collection.

The handle holds a frozen ``View`` (view.py: source state, per-axis spans, metadata, name); indexing
gives a new handle, a write or commit moves this one to the new state. Reading builds a dask graph with
one task per storage chunk the view touches (daskgraph.py); ``np.asarray`` reads directly through the
chunk engine (chunkio.py). Every dask and numpy entry point (the collection protocol, ``__array_function__``,
``__array_ufunc__``, dask Array methods) goes to the view's dask array built at the branch's current head,
so a branch view never returns data older than the last write that returned.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import dask
import dask.array as da
import numpy as np

from hubdask import daskgraph, grid, grow
from hubdask.compute import lazy_reduce
from hubdask.chunkio import read_selection  # noqa: F401  (where callers used to find it)
from hubdask.daskgraph import MAX_GRAPH_TASKS, _read_block  # noqa: F401
from hubdask.history import Versioned
from hubdask.source import Source
from hubdask.view import View
from hubdask.write import setitem

STR_MAX_ELEMENTS = 1000  # str()/print() of a view of at most this many elements shows its values


class Array(Versioned):
    """A view of a stored array: ``shape, dtype, chunks, ndim, size, nbytes, name``; every other dask
    Array attribute (``rechunk``, ``T``, ``reshape``, ``prod``, ...) is the view's dask array's."""

    def __init__(self, source: Source, name: str, axes: tuple[grid.Axis, ...] | None = None,
                 meta: Any = None) -> None:
        self._init(View.of(source, name, axes, meta))

    def _init(self, view: View) -> None:
        self._view = view
        self._seen: Source | None = None  # the branch state the last read found (what the next assumes)
        self._built = threading.local()  # the dask array the last graph request built (per thread)

    @classmethod
    def from_view(cls, view: View) -> "Array":
        obj = cls.__new__(cls)
        obj._init(view)
        return obj

    def __reduce__(self) -> tuple:
        return (Array.from_view, (self._view,))

    def _opened(self, source: Source, name: str) -> "Array":
        return Array(source, name)  # history.Versioned.checkout: the whole array at another state

    @property
    def frozen_view(self) -> View:
        """The frozen value of what this handle shows now (what the write path, compute and viz take)."""
        return self._view

    @property
    def _source(self) -> Source:
        return self._view.source

    @_source.setter
    def _source(self, source: Source) -> None:  # a commit or merge moved the branch (history.Versioned)
        self._view = self._view.reshaped(source)  # a merge may bring another shape

    @property
    def _axes(self) -> tuple[grid.Axis, ...]:
        return self._view.axes

    # --- what it is ---------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._view.name

    @property
    def _name(self) -> str:
        return self._view.name

    @property
    def metadata(self) -> Any:
        """The array's zarr v3 metadata."""
        return self._view.metadata

    @property
    def _meta(self) -> np.ndarray:
        """dask's meta: an empty ndarray of the view's dtype and dimensions."""
        return np.empty((0,) * self.ndim, self.dtype)

    shape = property(lambda self: self._view.shape)
    dtype = property(lambda self: self._view.dtype)
    chunks = property(lambda self: self._view.chunks, doc="The chunk shape (the read unit; a sharded array's inner "
                      "chunk) along the view's axes.")
    shards = property(lambda self: self._view.shards, doc="The shard shape (the storage object) along the view's "
                      "axes, or None when the array is not sharded.")
    storage_chunks = property(lambda self: self._view.storage_chunks)
    storage_shape = property(lambda self: self._view.storage_shape)
    fill_value = property(lambda self: self._view.fill_value)
    ndim = property(lambda self: self._view.ndim)
    size = property(lambda self: self._view.size)
    is_view = property(lambda self: self._view.is_view)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError(f"len() of a 0-d view of {self.name!r}")
        return self.shape[0]

    def __iter__(self):
        """The views ``self[0], self[1], ...`` (lazy), like iterating a numpy array."""
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return (f"hubdask.Array<{self.name!r}, shape={self.shape}, dtype={self.dtype}, "
                f"chunks={self.chunks}" + (f", shards={self.shards}>" if self.shards else ">"))

    def __str__(self) -> str:
        """The values, like numpy, for views of at most STR_MAX_ELEMENTS elements; the lazy repr above."""
        return str(self.read()) if self.size <= STR_MAX_ELEMENTS else repr(self)

    def _repr_html_(self) -> str:
        from hubdask.viz import repr_html

        return repr_html(self)

    def show(self, index: Any = (), **kwargs: Any) -> Any:
        """Draw ``self[index]`` with matplotlib (see hubdask.viz.show); returns the Axes."""
        from hubdask.viz import show

        return show(self, index, **kwargs)

    plot = show

    # --- views and writes --------------------------------------------------------------------------

    def __getitem__(self, index: Any) -> "Array | da.Array":
        """A lazy view; ``None`` axes (np.newaxis) give the view's dask array with those axes added."""
        index, new = grid.split_newaxes(index, self.ndim)
        view = Array.from_view(self._view.index(index))
        if not new:
            return view
        expand = [slice(None)] * (view.ndim + len(new))
        for pos in new:
            expand[pos] = None
        return view.to_dask()[tuple(expand)]

    def __setitem__(self, index: Any, value: Any) -> None:
        try:
            landed = setitem(self._view, index, value)
        except IndexError:
            if self._view.source.branch is None:
                raise
            self._view = self._view.current()  # another writer may have grown the array since
            landed = setitem(self._view, index, value)
        # the head it landed at may hold another's append; the next read assumes the state written
        self._view, self._seen = self._view.reshaped(landed), None

    # --- shape: versioned like the data (hubdask.grow) ----------------------------------------------

    def _whole(self, action: str) -> View:
        # no head check: a change of shape reads the newest shape in the open node under its fence, and the
        # seal check after it moves it to the next open node if a commit sealed this one
        view = self._view
        if view.is_view:
            raise ValueError(f"dataset {self.name!r}: {action} the whole array, not a view of it")
        return view

    def resize(self, new_shape: Any, *, lock: bool | str | None = None) -> "Array":
        """Grow or shrink the array on its branch (part of the branch's next commit; older commits and
        tags keep their shape). Chunks wholly outside a smaller shape stop counting, and growing again
        reads the fill value, never old values. Returns self."""
        view = self._whole("resize")
        src = grow.resize(view.source, view.what, new_shape, view.fill_value, view.storage_chunks, lock)
        self._view = view.reshaped(src)
        return self

    def grow_to(self, shape: Any, *, lock: bool | str | None = None) -> "Array":
        """Grow every axis to at least ``shape`` (never shrinks; concurrent growers agree on the largest)."""
        view = self._whole("grow")
        ends = grow.check_shape(shape, view.ndim, view.what)
        self._view = view.reshaped(grow.grow_to(view.source, view.what, ends, lock))
        return self

    def append(self, values: Any, axis: int = 0, *, lock: bool | str | None = None) -> tuple[slice, ...]:
        """Append ``values`` along ``axis``; returns the region written (a tuple of slices). Concurrent
        appenders (threads, processes, dask workers) each get their own region, none lost."""
        view = self._whole("append to")
        region, src = grow.append(view.source, view.what, values, axis, view.dtype, view.storage_chunks, lock)
        self._view = view.reshaped(src)
        return region

    # --- reading -----------------------------------------------------------------------------------

    def _fresh_source(self) -> Source:
        """The source to read now: a branch view follows its branch to see every returned write."""
        return self._source.current()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self.read()
        return out.astype(dtype, copy=False) if dtype is not None else out

    def read(self) -> np.ndarray:
        """Read the view into memory now, through the chunk engine (no dask scheduler).

        On a remote root the head check (one LIST) runs while the chunks of the state last seen are read;
        only if the branch moved meanwhile (a commit, or a first write into its open node) is the read
        repeated at the new state. A read that failed (e.g. it stalled past ``hd.gc``'s grace, which then
        collected a version the commit since superseded) looks at the head again, on every root, and is
        repeated there if the branch moved."""
        view = self._view
        if view.source.branch is None:
            return view.read()
        remote = view.source.root.is_remote
        if remote:
            seen = self._seen
            start = seen if seen is not None and seen.branch == view.source.branch else view.source
            check = _in_thread(view.source.current)
        else:
            start, check = view.source.current(), None  # a head check costs less than a thread here
        try:
            out, failed = view.reshaped(start).read(), None
        except Exception as exc:  # decided below: an error of a state the branch has left is not the read's
            out, failed = None, exc
        now = check.result() if check is not None else start
        if failed is not None and now == start:
            now = view.source.current()  # the branch may have moved while the read ran
        if remote:
            self._seen = now
        if now == start:
            if failed is not None:
                raise failed
            return out
        return view.reshaped(now).read()  # a whole-array view follows a resize or append there

    def to_dask(self) -> da.Array:
        """A dask array with one task per storage chunk the view touches, at the branch's head now."""
        return daskgraph.build(self._view.current())

    to_dask_array = to_dask  # what dask.array.asarray looks for

    def to_xarray(self, dims: Any = None, **kwargs: Any) -> Any:
        """A lazy (dask-backed) ``xarray.DataArray`` of the view (see integrations.xarray_view)."""
        from hubdask.integrations.xarray_view import to_xarray

        return to_xarray(self, dims, **kwargs)

    def compute(self, **kwargs: Any) -> np.ndarray:
        (out,) = dask.compute(self, **kwargs)
        return out

    def persist(self, **kwargs: Any) -> da.Array:
        return self.to_dask().persist(**kwargs)

    # The dask collection protocol. A graph request (``__dask_graph__``, ``.dask``) builds the view's dask
    # array at the branch's head now; the keys and post-compute hooks asked for next are that array's.
    def _graph_array(self) -> da.Array:
        view = self._view.current()
        built = self._built
        if getattr(built, "view", None) == view and not daskgraph.changes_by_itself(view):
            return built.x  # same state, same name: the graph built last time (a commit's is fixed)
        built.x, built.view = daskgraph.build(view), view
        return built.x

    def _last_built(self) -> da.Array:
        x = getattr(self._built, "x", None)
        return x if x is not None else self._graph_array()

    def __dask_graph__(self):
        return self._graph_array().__dask_graph__()

    @property
    def dask(self):
        return self.__dask_graph__()

    def __dask_keys__(self):
        return self._last_built().__dask_keys__()

    def __dask_layers__(self):
        return self._last_built().__dask_layers__()

    def __dask_postcompute__(self):
        return self._last_built().__dask_postcompute__()

    def __dask_postpersist__(self):
        return self._last_built().__dask_postpersist__()

    def __dask_tokenize__(self):
        return daskgraph.token(self._view.current())

    __dask_optimize__ = staticmethod(da.Array.__dask_optimize__)
    __dask_scheduler__ = staticmethod(da.Array.__dask_scheduler__)

    def __getattr__(self, attr: str) -> Any:
        """Every other public dask Array attribute, from the view's dask array (built now)."""
        if attr.startswith("_") or not hasattr(da.Array, attr):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")
        return getattr(self.to_dask(), attr)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {a for a in dir(da.Array) if not a.startswith("_")})

    # --- numpy protocols: everything numpy and dask implement, lazily through dask --------------------

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        return getattr(ufunc, method)(*_to_dask(inputs), **_to_dask(kwargs))

    def __array_function__(self, func: Any, types: Any, args: tuple, kwargs: dict) -> Any:
        return func(*_to_dask(args), **_to_dask(kwargs))

    # --- 0-d conversions: read the element --------------------------------------------------------

    def _element(self, to: str) -> Any:
        if self.ndim:
            raise TypeError(f"dataset {self.name!r}: only a 0-d view converts to {to} (this view has shape "
                            f"{self.shape}); index one element first")
        return self.read()[()]

    def __float__(self) -> float:
        return float(self._element("float"))

    def __int__(self) -> int:
        return int(self._element("int"))

    def __complex__(self) -> complex:
        return complex(self._element("complex"))

    def __index__(self) -> int:
        if self.dtype.kind not in "iu":
            raise TypeError(f"dataset {self.name!r}: only an integer 0-d view is an index, not dtype {self.dtype}")
        return int(self._element("an index"))

    def __bool__(self) -> bool:
        if self.size != 1:
            raise ValueError(f"dataset {self.name!r}: the truth value of a view with {self.size} elements is "
                             "ambiguous; use .any() or .all()")
        return bool(self.read().reshape(()))

    # --- whole-view reductions ---------------------------------------------------------------------

    # Whole-view reductions (axis=None) run in bounded waves, exactly, with unwritten chunks taken from
    # the fill value (hubdask.compute): any size of array. With an axis they are dask.array's.
    def _reduction(self, op: str, axis: Any, kw: dict) -> da.Array:
        if axis is None and self._view.is_regular and set(kw) <= ({"ddof"} if op in ("std", "var") else set()):
            return lazy_reduce(self._view, op, **kw)
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


def _to_dask(x: Any) -> Any:
    """``x`` with every Array in it (also inside lists, tuples and dicts) replaced by its dask array."""
    if isinstance(x, Array):
        return x.to_dask()
    if isinstance(x, (list, tuple)):
        return type(x)(_to_dask(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_dask(v) for k, v in x.items()}
    return x


def _operator(op: str):
    def method(self: Array, *other: Any) -> Any:
        return getattr(self.to_dask(), op)(*_to_dask(other))

    method.__name__ = op
    return method


for _op in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
            "__floordiv__", "__rfloordiv__", "__pow__", "__rpow__", "__mod__", "__rmod__", "__divmod__",
            "__rdivmod__", "__matmul__", "__rmatmul__", "__lshift__", "__rlshift__", "__rshift__", "__rrshift__",
            "__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__", "__and__", "__rand__", "__or__", "__ror__",
            "__xor__", "__rxor__", "__neg__", "__pos__", "__abs__", "__invert__"):
    if hasattr(da.Array, _op):
        setattr(Array, _op, _operator(_op))
Array.__hash__ = object.__hash__


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


