"""zarr v3 sharding (``sharding_indexed``): the shard is the storage object, the inner chunk the read unit.

hubdask reasons about storage objects everywhere (keys, locks, fenced versions, copy-on-write, commits,
gc, the dask graph): for a sharded array that object is the shard, which zarr's metadata already gives as
its chunk grid (``object_grid``). This module adds what is specific to shards: the shapes, the creation
check, ``shards="auto"``, and ``ShardCodec``, which encodes and decodes a whole shard for the lean engine
(chunkio): the inner chunks, each through the inner codec chain, then the index at the end, one
``(offset, nbytes)`` uint64 pair per inner chunk in C order (``2**64 - 1`` twice: empty) and its crc32c.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import numpy as np

from hubdask import config

EMPTY = 2**64 - 1
COALESCE_GAP = 64 * 1024  # inner chunks of one read closer than this go in one ranged GET


def object_grid(meta: Any) -> tuple[int, ...]:
    """The shape of one storage object of the array: the shard when sharded, else the chunk."""
    return tuple(meta.chunk_grid.chunk_shape)


def sharding_codec(meta: Any) -> Any | None:
    """The array's ShardingCodec, or None when it is not sharded."""
    from zarr.codecs import ShardingCodec

    codecs = list(meta.codecs)
    return codecs[0] if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec) else None


def read_chunks(meta: Any) -> tuple[int, ...]:
    """The read unit: the inner chunk of a sharded array, else the chunk."""
    codec = sharding_codec(meta)
    return tuple(codec.chunk_shape) if codec is not None else object_grid(meta)


def shard_shape(meta: Any) -> tuple[int, ...] | None:
    """The shard shape, or None when the array is not sharded."""
    return object_grid(meta) if sharding_codec(meta) is not None else None


def auto_shards(shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int,
                target: int | None = None) -> tuple[int, ...]:
    """A shard of whole chunks of at most ``target`` bytes (at least one chunk): trailing axes are
    grown to their full (chunk-rounded) extent first, then the leading ones, as far as the target allows."""
    target = target or config.shard_target_bytes()
    counts = [max(1, math.ceil(s / c)) for s, c in zip(shape, chunks)]  # chunks along each axis
    per = [1] * len(shape)
    size = math.prod(chunks) * itemsize
    for axis in reversed(range(len(shape))):
        grow = max(1, min(counts[axis], target // max(size, 1)))
        per[axis] = grow
        size *= grow
        if grow < counts[axis]:
            break
    return tuple(p * c for p, c in zip(per, chunks))


def check_shards(what: str, shards: Any, shape: tuple[int, ...], chunks: tuple[int, ...],
                 itemsize: int) -> tuple[int, ...] | None:
    """``shards`` (None: unsharded; ``"auto"``: ``auto_shards``) as positive ints, one per axis, each a
    multiple of the chunk length, else ValueError naming ``what`` and what was expected."""
    if shards is None:
        return None
    if isinstance(shards, str):
        if shards != "auto":
            raise ValueError(f"{what}: shards {shards!r} must be 'auto', None or a tuple of integers")
        return auto_shards(shape, chunks, itemsize)
    shards = tuple(shards) if isinstance(shards, (tuple, list)) else (shards,)
    if len(shards) != len(shape):
        raise ValueError(f"{what}: shards {shards} has {len(shards)} axes but shape {shape} has {len(shape)}")
    if any(isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s <= 0 for s in shards):
        raise ValueError(f"{what}: shards {shards} must be positive integers")
    if any(s % c for s, c in zip(shards, chunks)):
        raise ValueError(f"{what}: shards {shards} must be a multiple of chunks {chunks} on every axis "
                         "(a shard holds whole inner chunks)")
    return tuple(int(s) for s in shards)


def lean_parts(meta: Any) -> tuple[tuple, tuple] | None:
    """(the inner codecs, the inner chunk shape) when the shard layout is one ShardCodec decodes (index at
    the end, bytes + optional crc32c index codecs), else None (zarr's general pipeline reads it)."""
    from zarr.codecs import BytesCodec, Crc32cCodec

    codec = sharding_codec(meta)
    if codec is None or getattr(codec.index_location, "value", codec.index_location) != "end":
        return None
    idx = list(codec.index_codecs)
    if not idx or not isinstance(idx[0], BytesCodec) or not all(isinstance(c, Crc32cCodec) for c in idx[1:]) \
            or len(idx) > 2:
        return None
    return tuple(codec.codecs), tuple(codec.chunk_shape)


class ShardCodec:
    """One whole shard <-> its bytes, the inner chunks through ``inner`` (a chunkio.LeanCodec)."""

    def __init__(self, inner: Any, inner_chunks: tuple[int, ...], shard: tuple[int, ...], fill: Any,
                 dtype: np.dtype, index_crc: bool) -> None:
        self.inner, self.inner_chunks, self.shard, self.fill, self.dtype = inner, inner_chunks, shard, fill, dtype
        self.per = tuple(s // c for s, c in zip(shard, inner_chunks))
        self.index_crc = index_crc
        self.crc = inner.crc and index_crc  # damage anywhere is found by decoding

    @property
    def index_nbytes(self) -> int:
        return 16 * math.prod(self.per) + (4 if self.index_crc else 0)

    def regions(self) -> list[tuple[slice, ...]]:
        """Each inner chunk's slices in the shard, in the index's (C) order."""
        return [tuple(slice(j * c, (j + 1) * c) for j, c in zip(coords, self.inner_chunks))
                for coords in itertools.product(*(range(p) for p in self.per))]

    def index(self, raw: Any) -> np.ndarray:
        """The index of shard ``raw`` (or of its last ``index_nbytes`` bytes), shape ``(n inner chunks, 2)``
        uint64; ValueError when damaged."""
        import crc32c

        body = memoryview(raw)
        n = self.index_nbytes
        if len(body) < n:
            raise ValueError(f"shard of {len(body)} bytes is shorter than its index ({n} bytes)")
        tail = body[len(body) - n:]
        if self.index_crc:
            tail, stored = tail[:-4], int.from_bytes(tail[-4:], "little")
            if crc32c.crc32c(tail) != stored:
                raise ValueError("crc32c checksum mismatch in the shard index")
        idx = np.frombuffer(tail, "<u8").reshape(-1, 2)
        live = idx[:, 0] != EMPTY
        if len(body) > n and np.any(idx[live, 0] + idx[live, 1] > len(body) - n):  # (not for the index alone)
            raise ValueError("shard index points past the shard's data")
        return idx

    def decode(self, raw: Any, out: np.ndarray) -> None:
        """Decode the shard ``raw`` into ``out`` (the whole shard); ValueError when damaged."""
        self._decode_box(raw, [0] * len(self.per), [p - 1 for p in self.per], out)

    def _box(self, inner: tuple) -> tuple[list[int], list[int], tuple, list]:
        """(first and last inner chunk coordinates the selection ``inner`` touches, the selection
        relative to the box of those inner chunks, the coordinates it touches along each axis: a
        strided or index-array selection skips some inner chunks of its box)."""
        touched = [_touched(s, c) for s, c in zip(inner, self.inner_chunks)]
        first, last = [t[0] for t in touched], [t[-1] for t in touched]
        return first, last, tuple(_shift(s, f * c) for s, f, c in zip(inner, first, self.inner_chunks)), touched

    def _box_regions(self, first: list[int], last: list[int], touched: list | None = None
                     ) -> list[tuple[int, tuple[slice, ...]]]:
        """(index position, slices in the box) of every inner chunk of the box (``touched``: of those
        coordinates along each axis only)."""
        axes = touched or [range(f, l + 1) for f, l in zip(first, last)]
        return [(int(np.ravel_multi_index(coords, self.per)),
                 tuple(slice((j - f) * c, (j - f + 1) * c) for j, f, c in zip(coords, first, self.inner_chunks)))
                for coords in itertools.product(*axes)]

    def _decode_box(self, raw: Any, first: list[int], last: list[int], box: np.ndarray | None = None,
                    touched: list | None = None) -> np.ndarray:
        """The inner chunks from ``first`` to ``last`` (coordinates; ``touched``: only those) of shard
        ``raw`` (None: empty; or a Partial: the byte ranges fetched) in one box (the rest of it unset)."""
        if box is None:
            box = np.empty(tuple((l - f + 1) * c for f, l, c in zip(first, last, self.inner_chunks)), self.dtype)
        if isinstance(raw, Partial):
            idx, body = raw.idx, raw
        else:
            idx = self.index(raw) if raw is not None else None
            body = memoryview(raw) if raw is not None else None
        buf = np.empty(self.inner_chunks, self.dtype)
        for i, region in self._box_regions(first, last, touched):
            off, nb = idx[i] if idx is not None else (EMPTY, EMPTY)
            if off == EMPTY:
                box[region] = self.fill
                continue
            self.inner.decode(body[int(off):int(off) + int(nb)], buf)
            box[region] = buf
        return box

    def ranges(self, idx: np.ndarray, inner: tuple, gap: int = COALESCE_GAP) -> list[tuple[int, int]]:
        """The byte ranges ``(start, end)`` of the inner chunks that selection ``inner`` touches, in
        order, neighbours less than ``gap`` bytes apart merged into one request."""
        first, last, _, touched = self._box(inner)
        spans = sorted((int(idx[i, 0]), int(idx[i, 0] + idx[i, 1]))
                       for i, _ in self._box_regions(first, last, touched) if idx[i, 0] != EMPTY)
        out: list[list[int]] = []
        for a, b in spans:
            if out and a <= out[-1][1] + gap:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
        return [(a, b) for a, b in out]

    def decode_box(self, raw: Any, inner: tuple) -> tuple[np.ndarray, tuple]:
        """(the inner chunks that selection ``inner`` of the shard touches, decoded into one box; the
        selection relative to the box): a small read decodes a few inner chunks, not the whole shard."""
        first, last, rel, touched = self._box(inner)
        return self._decode_box(raw, first, last, touched=touched), rel

    def update(self, raw: Any, inner: tuple, change: Callable[[np.ndarray, tuple], None]) -> bytes | None:
        """The shard ``raw`` (None: empty) with ``change(box, selection in the box)`` applied to the inner
        chunks ``inner`` touches; the others keep their encoded bytes. None when every inner chunk is empty."""
        first, last, rel, touched = self._box(inner)
        box = self._decode_box(raw, first, last, touched=touched)
        change(box, rel)
        fresh: dict[int, bytes | None] = {}
        fill = np.array(self.fill, self.dtype)
        for i, region in self._box_regions(first, last, touched):
            chunk = box[region]
            empty = np.array_equal(chunk, np.broadcast_to(fill, chunk.shape), equal_nan=self.dtype.kind in "fc")
            fresh[i] = None if empty else self.inner.encode(chunk)
        idx = self.index(raw) if raw is not None else None
        body = memoryview(raw) if raw is not None else None
        pieces, offset = [], 0
        out = np.full((math.prod(self.per), 2), EMPTY, "<u8")
        for i in range(len(out)):
            if i in fresh:
                blob = fresh[i]
            elif idx is not None and idx[i, 0] != EMPTY:
                blob = body[int(idx[i, 0]):int(idx[i, 0]) + int(idx[i, 1])]
            else:
                blob = None
            if blob is None:
                continue
            out[i] = (offset, len(blob))
            pieces.append(blob)
            offset += len(blob)
        return self._finish(pieces, out) if pieces else None

    def _finish(self, pieces: list, idx: np.ndarray) -> bytes:
        import crc32c

        tail = idx.tobytes()
        pieces.append(tail)
        if self.index_crc:
            pieces.append(crc32c.crc32c(tail).to_bytes(4, "little"))
        return b"".join(pieces)

    def encode(self, shard: np.ndarray) -> bytes:
        """The shard's bytes: its non-empty inner chunks (fill-only ones are left out, as zarr does), then
        the index."""
        pieces, offset = [], 0
        idx = np.full((math.prod(self.per), 2), EMPTY, "<u8")
        fill = np.array(self.fill, self.dtype)
        for i, region in enumerate(self.regions()):
            chunk = shard[region]
            if np.array_equal(chunk, np.broadcast_to(fill, chunk.shape), equal_nan=self.dtype.kind in "fc"):
                continue
            blob = self.inner.encode(chunk)
            idx[i] = (offset, len(blob))
            pieces.append(blob)
            offset += len(blob)
        return self._finish(pieces, idx)


def _touched(s: Any, chunk: int) -> list[int]:
    """The inner chunk coordinates, ascending, that an ascending int, slice or index array selects
    along one axis of ``chunk`` elements per inner chunk."""
    if isinstance(s, slice):
        step = s.step or 1
        if step <= chunk:  # every inner chunk from the first element's to the last's
            last = s.start + (len(range(s.start, s.stop, step)) - 1) * step
            return list(range(s.start // chunk, last // chunk + 1))
        s = np.arange(s.start, s.stop, step)
    if isinstance(s, np.ndarray):
        return np.unique(s // chunk).tolist()
    return [int(s) // chunk]


def _shift(s: Any, origin: int) -> Any:
    if isinstance(s, slice):
        return slice(s.start - origin, s.stop - origin, s.step)
    return s - origin


class Partial:
    """Some byte ranges of a shard and its index: what a small read fetched (sliced like the shard)."""

    def __init__(self, idx: np.ndarray, pieces: list[tuple[int, Any]]) -> None:
        self.idx, self.pieces = idx, sorted(pieces, key=lambda p: p[0])
        self.starts = [p[0] for p in self.pieces]

    def __getitem__(self, s: slice) -> memoryview:
        import bisect

        k = bisect.bisect_right(self.starts, s.start) - 1
        start, data = self.pieces[max(k, 0)]
        if k < 0 or s.stop - start > len(data):
            raise ValueError(f"bytes {s.start}:{s.stop} of the shard were not fetched")
        return memoryview(data)[s.start - start:s.stop - start]
