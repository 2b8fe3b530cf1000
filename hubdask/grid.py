"""Regular chunk-grid arithmetic: views as per-axis progressions, never per-chunk lists of the array.

A view of an axis is either an int (the axis is dropped) or ``Span(start, step, n)``: element ``i`` of the
view is array index ``start + i*step`` (``step`` may be negative). Composing an index with a view is
O(ndim); splitting a span by chunks costs O(chunks it touches along that axis).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


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


Axis = int | Span


def full(shape: tuple[int, ...]) -> tuple[Axis, ...]:
    return tuple(Span(0, 1, s) for s in shape)


def view_shape(axes: tuple[Axis, ...]) -> tuple[int, ...]:
    return tuple(a.n for a in axes if isinstance(a, Span))


def normalize_index(index: Any, shape: tuple[int, ...], what: str) -> tuple[int | slice, ...]:
    """Expand ``...`` and check types and bounds of a basic index for a view of ``shape``."""
    if not isinstance(index, tuple):
        index = (index,)
    if sum(i is Ellipsis for i in index) > 1:
        raise IndexError(f"{what}: an index can only have a single ellipsis ('...')")
    if Ellipsis in index:
        k = index.index(Ellipsis)
        fill = len(shape) - (len(index) - 1)
        index = index[:k] + (slice(None),) * max(fill, 0) + index[k + 1:]
    if len(index) > len(shape):
        raise IndexError(f"{what}: too many indices: the view is {len(shape)}-dimensional, {len(index)} were given")
    index = index + (slice(None),) * (len(shape) - len(index))
    out: list[int | slice] = []
    for axis, (i, n) in enumerate(zip(index, shape)):
        if isinstance(i, numbers.Integral) and not isinstance(i, bool):
            i = int(i)
            if not -n <= i < n:
                raise IndexError(f"{what}: index {i} is out of bounds for axis {axis} with size {n}")
            out.append(i + n if i < 0 else i)
        elif isinstance(i, slice):
            for part in (i.start, i.stop, i.step):
                if part is not None and not (isinstance(part, numbers.Integral) and not isinstance(part, bool)):
                    raise IndexError(f"{what}: slice {i} on axis {axis} must have integer bounds")
            if i.step == 0:
                raise ValueError(f"{what}: slice step cannot be zero (axis {axis})")
            out.append(i)
        else:
            raise IndexError(
                f"{what}: only integers, slices and '...' index a hubdask view (got {type(i).__name__} on axis "
                f"{axis}); for fancy indexing use .to_dask()[...]"
            )
    return tuple(out)


def compose(axes: tuple[Axis, ...], index: Any, what: str) -> tuple[Axis, ...]:
    """The axes of ``view[index]`` for a view with ``axes``: O(ndim) arithmetic."""
    live = [k for k, a in enumerate(axes) if isinstance(a, Span)]
    norm = normalize_index(index, view_shape(axes), what)
    out = list(axes)
    for k, i in zip(live, norm):
        a = axes[k]
        assert isinstance(a, Span)
        if isinstance(i, int):
            out[k] = a.start + i * a.step
        else:
            s, e, st = i.indices(a.n)
            out[k] = Span(a.start + s * a.step, a.step * st, len(range(s, e, st)))
    return tuple(out)


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
