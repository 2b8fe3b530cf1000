"""``View``: the frozen value of what a view is (a Source state, per-axis spans, metadata, name).

``hd.Array`` is the user's handle and holds one; the read and write paths, compute, viz and the
integrations take the value. A View never changes: indexing gives a new one, and a branch view's
``current()`` is the same view at the branch's head now.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

import numpy as np

from hubdask import chunkio, grid, shards
from hubdask.source import Source


@dataclass(frozen=True)
class View:
    source: Source
    name: str  # the display name, used in every message
    axes: tuple[grid.Axis, ...]
    metadata: Any = field(compare=False, repr=False)  # the array's zarr ArrayV3Metadata

    @classmethod
    def of(cls, source: Source, name: str, axes: tuple[grid.Axis, ...] | None = None,
           metadata: Any = None) -> "View":
        """The view of ``axes`` (default: the whole array) of ``source``'s array."""
        metadata = metadata if metadata is not None else source.zarr().metadata
        return cls(source, name, axes if axes is not None else grid.full(tuple(metadata.shape)), metadata)

    # --- what it is ---------------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        return grid.view_shape(self.axes)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.metadata.dtype.to_native_dtype())

    @property
    def storage_shape(self) -> tuple[int, ...]:
        return tuple(self.metadata.shape)

    @property
    def storage_chunks(self) -> tuple[int, ...]:
        """The shape of one storage object (the shard of a sharded array), on every axis of the array."""
        return shards.object_grid(self.metadata)

    @property
    def inner_chunks(self) -> tuple[int, ...]:
        """The read unit (the inner chunk of a sharded array), on every axis of the array."""
        return shards.read_chunks(self.metadata)

    def _live(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(c for c, a in zip(shape, self.axes) if grid.is_live(a))

    @property
    def chunks(self) -> tuple[int, ...]:
        """The chunk shape (the read unit: a sharded array's inner chunk) along the view's axes."""
        return self._live(self.inner_chunks)

    @property
    def shards(self) -> tuple[int, ...] | None:
        """The shard shape along the view's axes, or None when the array is not sharded."""
        return self._live(self.storage_chunks) if shards.sharding_codec(self.metadata) is not None else None

    @property
    def blocks(self) -> tuple[int, ...]:
        """The storage object's shape along the view's axes (the shard, else the chunk)."""
        return self._live(self.storage_chunks)

    @property
    def fill_value(self) -> Any:
        return self.metadata.fill_value

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def is_view(self) -> bool:
        return self.axes != grid.full(self.storage_shape)

    @property
    def is_regular(self) -> bool:
        """Whether every axis is an int or a span (no array index): what the bounded waves handle."""
        return not any(isinstance(a, grid.Points) for a in self.axes)

    @property
    def what(self) -> str:
        return f"dataset {self.name!r}"

    # --- new values ---------------------------------------------------------------------------------

    def index(self, index: Any) -> "View":
        """The view of ``self[index]`` (no ``None``): O(ndim) for basic indices."""
        return dataclasses.replace(self, axes=grid.compose(self.axes, index, self.what))

    def at(self, source: Source) -> "View":
        return dataclasses.replace(self, source=source)

    def current(self) -> "View":
        """This view at its branch's head now (a commit's view is itself); a whole-array view follows a
        resize or append there to the array's new shape."""
        return self if self.source.branch is None else self.reshaped(self.source.current())

    def reshaped(self, source: Source) -> "View":
        """This view at ``source``, with ``source``'s metadata (its shape may differ: a resize or append);
        a whole-array view becomes the whole array at the new shape, a view of a part keeps its axes."""
        same = source.meta_seq == self.source.meta_seq and source.commit == self.source.commit
        if same and (not source.meta_seq or source.node == self.source.node):  # a version number is per node
            return self.at(source)
        meta = source.zarr().metadata
        if tuple(meta.shape) == self.storage_shape:
            return dataclasses.replace(self, source=source, metadata=meta)
        axes = self.axes if self.is_view else grid.full(tuple(meta.shape))
        return dataclasses.replace(self, source=source, axes=axes, metadata=meta)

    # --- reading ------------------------------------------------------------------------------------

    def selection(self) -> tuple[tuple[grid.Index, ...], tuple[int, ...], tuple[tuple[int, np.ndarray], ...]]:
        """(the ascending selection in the array: ints, slices, distinct ascending index arrays; the
        output axes to flip afterwards; ``(axis, positions)`` to take afterwards for index arrays that
        are not ascending and distinct)."""
        sel: list[grid.Index] = []
        flips, takes, out_axis = [], [], 0
        for a in self.axes:
            if isinstance(a, int):
                sel.append(a)
                continue
            if isinstance(a, grid.Points):
                u, inv = a.sorted_unique()
                sel.append(u)
                if inv is not None:
                    takes.append((out_axis, inv))
            else:
                asc = a.ascending()
                if asc is not a:
                    flips.append(out_axis)
                sel.append(slice(asc.start, asc.start + (asc.n - 1) * asc.step + 1 if asc.n else asc.start, asc.step))
            out_axis += 1
        return tuple(sel), tuple(flips), tuple(takes)

    def read(self) -> np.ndarray:
        """The view's values, read now at ``self.source`` (no dask scheduler; see chunkio)."""
        sel, flips, takes = self.selection()
        return finish(chunkio.read_selection(self.source, sel, self.name), flips, takes)


def finish(block: np.ndarray, flips: tuple[int, ...], takes: tuple = ()) -> np.ndarray:
    """An ascending read turned into the view's order: flipped axes, then index arrays' own order."""
    if flips:
        block = np.flip(block, flips)
    for axis, pos in takes:
        block = np.take(block, pos, axis=axis)
    return block


@runtime_checkable
class HasView(Protocol):
    """What shows a View (``hd.Array``): the layers below Array take it, or a View, without knowing Array."""

    @property
    def frozen_view(self) -> View: ...


Viewable = Union[View, HasView]


def view_of(x: Viewable) -> View:
    """The View of an ``hd.Array`` (or the View itself)."""
    return x if isinstance(x, View) else x.frozen_view
