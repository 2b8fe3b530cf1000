"""Regular chunk-grid arithmetic: views as per-axis progressions, never per-chunk lists of the array.

A view of an axis is an int (the axis is dropped), ``Span(start, step, n)``: element ``i`` of the view is
array index ``start + i*step`` (``step`` may be negative), or ``Points``: explicit indices (from an integer
array or boolean mask index, applied orthogonally per axis, like zarr's ``oindex``). Composing an index with a view is
O(ndim); splitting a span by chunks costs O(chunks it touches along that axis).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Span:
    start: int
    step: int
    n: int

    @property
    def last(self) -> int:
        return self.start + (self.n - 1) * self.step

    def ascending(self) -> "Span":
        """The same elements in ascending order (returns self when already ascending)."""
        if self.step > 0:
            return self
        if self.n <= 1:
            return Span(self.start, 1, self.n)
        return Span(self.last, -self.step, self.n)


class Points:
    """An axis picked by explicit array indices (an integer-array or boolean-mask index): element ``i`` of
    the view is array index ``idx[i]`` (any order, repeats allowed). Compared and tokenized by value."""

    __slots__ = ("idx", "_key")

    def __init__(self, idx: Any) -> None:
        arr = np.array(idx, dtype=np.int64).reshape(-1)
        arr.setflags(write=False)
        self.idx = arr
        self._key = (arr.size, arr.tobytes())

    @property
    def n(self) -> int:
        return int(self.idx.size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Points) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"Points({self.idx.tolist() if self.n <= 8 else f'<{self.n} indices>'})"

    def __reduce__(self) -> tuple:
        return (Points, (self.idx,))

    def __dask_tokenize__(self) -> tuple:
        return ("hubdask.Points", self._key)

    def sorted_unique(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(the distinct indices ascending, positions in them giving ``idx``; None when ``idx`` is that)."""
        u, inv = np.unique(self.idx, return_inverse=True)
        if u.size == self.idx.size and np.array_equal(u, self.idx):
            return u, None
        return u, inv.reshape(-1)


Axis = int | Span | Points
Index = int | slice | np.ndarray  # one axis of a normalized index (arrays: int64 indices, in bounds)


def full(shape: tuple[int, ...]) -> tuple[Axis, ...]:
    return tuple(Span(0, 1, s) for s in shape)


def is_live(a: Axis) -> bool:
    """Whether the axis appears in the view (an int axis is dropped)."""
    return not isinstance(a, int)


def view_shape(axes: tuple[Axis, ...]) -> tuple[int, ...]:
    return tuple(a.n for a in axes if is_live(a))


SUPPORTED = ("integers, slices, '...', None (reads), and one 1-d integer array or boolean mask per axis "
             "(orthogonal, like zarr's oindex)")


def split_newaxes(index: Any, ndim: int) -> tuple[tuple, tuple[int, ...]]:
    """``index`` without its ``None`` entries, and the output positions where they insert length-1 axes."""
    if not isinstance(index, tuple):
        index = (index,)
    if not any(i is None for i in index):
        return index, ()
    used = sum(1 for i in index if i is not None and i is not Ellipsis)
    out, new, pos = [], [], 0
    for i in index:
        if i is None:
            new.append(pos)
            pos += 1
            continue
        if i is Ellipsis:
            pos += max(ndim - used, 0)
        elif not (isinstance(i, numbers.Integral) and not isinstance(i, (bool, np.bool_))) \
                and not (isinstance(i, np.ndarray) and i.ndim == 0 and i.dtype.kind in "iu"):
            pos += 1
        out.append(i)
    return tuple(out), tuple(new)


def _as_index_array(i: Any, n: int, axis: int, what: str) -> Index:
    arr = np.asarray(i)
    if arr.dtype.kind == "b":
        if arr.ndim != 1 or arr.shape[0] != n:
            raise IndexError(f"{what}: boolean mask of shape {arr.shape} on axis {axis} does not match the axis "
                             f"length {n}; expected a 1-d mask of length {n}")
        return np.flatnonzero(arr).astype(np.int64)
    if arr.size == 0 and arr.dtype.kind == "f":
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise IndexError(f"{what}: {type(i).__name__} of dtype {arr.dtype} on axis {axis} is not an index; "
                         f"supported: {SUPPORTED}")
    if arr.ndim == 0:
        return _as_int(int(arr), n, axis, what)
    if arr.ndim != 1:
        raise IndexError(f"{what}: a {arr.ndim}-d integer array on axis {axis} is not supported; {SUPPORTED}")
    arr = arr.astype(np.int64)
    bad = (arr < -n) | (arr >= n)
    if bad.any():
        raise IndexError(f"{what}: index {int(arr[bad][0])} is out of bounds for axis {axis} with size {n}")
    return np.where(arr < 0, arr + n, arr)


def _as_int(i: int, n: int, axis: int, what: str) -> int:
    if not -n <= i < n:
        raise IndexError(f"{what}: index {i} is out of bounds for axis {axis} with size {n}")
    return i + n if i < 0 else i


def normalize_index(index: Any, shape: tuple[int, ...], what: str) -> tuple[Index, ...]:
    """Expand ``...`` and check types and bounds of an index (no ``None``) for a view of ``shape``."""
    if not isinstance(index, tuple):
        index = (index,)
    if sum(i is Ellipsis for i in index) > 1:
        raise IndexError(f"{what}: an index can only have a single ellipsis ('...')")
    if any(i is Ellipsis for i in index):
        k = next(j for j, i in enumerate(index) if i is Ellipsis)
        fill = len(shape) - (len(index) - 1)
        index = index[:k] + (slice(None),) * max(fill, 0) + index[k + 1:]
    if len(index) > len(shape):
        raise IndexError(f"{what}: too many indices: the view is {len(shape)}-dimensional, {len(index)} were given")
    index = index + (slice(None),) * (len(shape) - len(index))
    out: list[Index] = []
    for axis, (i, n) in enumerate(zip(index, shape)):
        if isinstance(i, numbers.Integral) and not isinstance(i, (bool, np.bool_)):
            out.append(_as_int(int(i), n, axis, what))
        elif isinstance(i, slice):
            for part in (i.start, i.stop, i.step):
                if part is not None and not (isinstance(part, numbers.Integral) and not isinstance(part, bool)):
                    raise IndexError(f"{what}: slice {i} on axis {axis} must have integer bounds")
            if i.step == 0:
                raise ValueError(f"{what}: slice step cannot be zero (axis {axis})")
            out.append(i)
        elif isinstance(i, (np.ndarray, list, range)) and not isinstance(i, str):
            out.append(_as_index_array(i, n, axis, what))
        elif i is None:
            raise IndexError(f"{what}: None (np.newaxis) is supported for reads only")
        else:
            raise IndexError(f"{what}: {type(i).__name__} on axis {axis} is not an index; supported: {SUPPORTED}")
    return tuple(out)


def compose(axes: tuple[Axis, ...], index: Any, what: str) -> tuple[Axis, ...]:
    """The axes of ``view[index]`` for a view with ``axes``: O(ndim) arithmetic for basic indices,
    O(len) for array indices."""
    live = [k for k, a in enumerate(axes) if is_live(a)]
    norm = normalize_index(index, view_shape(axes), what)
    out = list(axes)
    for k, i in zip(live, norm):
        a = axes[k]
        if isinstance(a, Points):
            out[k] = int(a.idx[i]) if isinstance(i, int) else Points(a.idx[i])
        elif isinstance(i, int):
            out[k] = a.start + i * a.step
        elif isinstance(i, slice):
            s, e, st = i.indices(a.n)
            out[k] = Span(a.start + s * a.step, a.step * st, len(range(s, e, st)))
        else:
            out[k] = Points(a.start + i * a.step)
    return tuple(out)


def runs_by_chunk(u: np.ndarray, c: int) -> list[tuple[int, int, int]]:
    """Split ascending distinct indices ``u`` by chunks of size ``c``: ``(chunk, i0, i1)`` per touched chunk,
    ``u[i0:i1]`` lying in that chunk."""
    if u.size == 0:
        return []
    ids = u // c
    cuts = np.flatnonzero(np.diff(ids)) + 1
    starts = np.concatenate(([0], cuts))
    stops = np.concatenate((cuts, [u.size]))
    return [(int(ids[a]), int(a), int(b)) for a, b in zip(starts, stops)]


def progressions(u: np.ndarray) -> list[tuple[int, int, slice]]:
    """Split ascending distinct indices ``u`` into maximal arithmetic runs: ``(i0, i1, slice)`` with
    ``u[i0:i1]`` equal to ``range(slice.start, slice.stop, slice.step)``."""
    out, i, n = [], 0, int(u.size)
    while i < n:
        if i + 1 == n:
            out.append((i, n, slice(int(u[i]), int(u[i]) + 1, 1)))
            break
        step = int(u[i + 1] - u[i])
        j = i + 1
        while j + 1 < n and int(u[j + 1] - u[j]) == step:
            j += 1
        out.append((i, j + 1, slice(int(u[i]), int(u[j]) + 1, step)))
        i = j + 1
    return out


@dataclass(frozen=True)
class Piece:
    """The part of one chunk along one axis that a span touches: chunk ``chunk``, elements
    ``[i0, i1)`` of the span, at offsets ``lo, lo+step, ...`` inside the chunk (ascending)."""

    chunk: int
    i0: int
    i1: int
    lo: int


def pieces(span: Span, c: int) -> Iterator[Piece]:
    """Split an ascending span by chunks of size ``c``: one Piece per touched chunk, in order."""
    assert span.step > 0
    i = 0
    while i < span.n:
        idx = span.start + i * span.step
        j = idx // c
        nxt = min(span.n, -(-((j + 1) * c - span.start) // span.step))
        yield Piece(j, i, nxt, idx - j * c)
        i = nxt


def count_pieces(span: Span, c: int) -> int:
    """How many chunks an ascending span touches, without listing them."""
    if span.n == 0:
        return 0
    if span.step >= c:
        return span.n
    if span.step == 1:
        return span.last // c - span.start // c + 1
    return sum(1 for _ in pieces(span, c))


def chunk_key(coords: tuple[int, ...], prefix: str = "") -> str:
    """zarr v3's default chunk key: ``c/i/j/k`` (``c`` alone for a 0-d array)."""
    key = "c" + "".join(f"/{x}" for x in coords)
    return f"{prefix}/{key}" if prefix else key
