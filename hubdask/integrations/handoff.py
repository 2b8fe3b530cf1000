"""Batches handed from DataLoader worker processes to the training loop through reused shared memory.

torch sends a worker's tensor to the loop by passing a file descriptor per tensor storage: a socket
connection, an authentication handshake and an fd transfer for every tensor of every batch, plus fresh
pages to fault in each time. Here a worker gathers each batch into a *segment*, a memory file
(``memfd``) holding one batch. A segment's descriptor crosses to the loop's process once, with the
first batch that uses it; the loop keeps it mapped, and later batches in that segment travel as a few
numbers. The segment's first byte says who holds it: FREE, FILLED (the worker is building or holding
the batch), SENT (the loop has it). The loop sets FREE when the last tensor viewing its batch is freed
(a finalizer on the array that every tensor of the batch views); only then does the worker reuse the
segment, so a batch kept by the user is never overwritten (a worker's segments grow to the number of
its batches alive at once). Linux only (``os.memfd_create``): ``available()`` says whether to use it.
"""

from __future__ import annotations

import mmap
import os
import secrets
import threading
import weakref
from multiprocessing.reduction import DupFd
from typing import Any

import numpy as np

FREE, FILLED, SENT = 0, 1, 2
HEADER = 64  # the state byte, padded so the arrays start 64-byte aligned
ALIGN = 64


def available() -> bool:
    """Whether batches can go through memfd segments here (else torch's own shared memory)."""
    return hasattr(os, "memfd_create")


def _nbytes(shape: tuple[int, ...], dtype: Any) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _layout(specs: dict[str, tuple[tuple[int, ...], np.dtype]]) -> tuple[dict[str, int], int]:
    """Each array's offset in a segment, and the bytes the segment needs."""
    offsets, end = {}, HEADER
    for key, (shape, dtype) in specs.items():
        offsets[key] = end
        end += -(-_nbytes(shape, dtype) // ALIGN) * ALIGN
    return offsets, max(end, HEADER + ALIGN)


def _views(mapping: mmap.mmap, arrays: list[tuple[str, int, tuple[int, ...], Any]], finalizer: Any,
           *args: Any) -> dict[str, np.ndarray]:
    """Arrays ``(key, offset, shape, dtype)`` of a segment, all views of one base array on which
    ``finalizer(*args)`` is set: it runs once the last of them (and of any view of them) is gone."""
    end = max([off + _nbytes(shape, dt) for _, off, shape, dt in arrays] + [HEADER])
    base = np.frombuffer(mapping, np.uint8, end - HEADER, HEADER)
    weakref.finalize(base, finalizer, *args)
    return {key: base[off - HEADER:off - HEADER + _nbytes(shape, dt)].view(np.dtype(dt)).reshape(shape)
            for key, off, shape, dt in arrays}


class _Segment:
    """One batch's memory in a worker: a memory file, mapped, with its state byte."""

    def __init__(self, size: int) -> None:
        self.fd = os.memfd_create("hubdask-batch", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.size = size
        self.map = mmap.mmap(self.fd, size)
        self.state = np.frombuffer(self.map, np.uint8, 1)
        self.token = secrets.token_hex(8)
        self.announced = False  # the loop's process has been sent the descriptor
        self.generation = 0

    def release_unsent(self, generation: int) -> None:
        """A batch that never left the worker (e.g. a collate_fn copied it): the segment is free again."""
        if self.generation == generation and self.state[0] == FILLED:
            self.state[0] = FREE


class Batch(dict):
    """A batch's arrays (numpy views of one segment), with where they live (``shared`` sends them)."""

    segment: _Segment
    offsets: dict[str, int]


class _Pool:
    """A worker's segments, reused once the loop has freed them."""

    def __init__(self) -> None:
        self.segments: list[_Segment] = []
        self.lock = threading.Lock()

    def take(self, specs: dict[str, tuple[tuple[int, ...], np.dtype]]) -> Batch:
        offsets, need = _layout(specs)
        with self.lock:
            seg = next((s for s in self.segments if s.state[0] == FREE and s.size >= need), None)
            if seg is None:
                seg = _Segment(-(-need // mmap.PAGESIZE) * mmap.PAGESIZE)
                self.segments.append(seg)
            seg.state[0] = FILLED
            seg.generation += 1
        out = Batch(_views(seg.map, [(k, offsets[k], shape, dt) for k, (shape, dt) in specs.items()],
                           seg.release_unsent, seg.generation))
        out.segment, out.offsets = seg, offsets
        return out


_POOLS: dict[int, _Pool] = {}


def take(specs: dict[str, tuple[tuple[int, ...], np.dtype]]) -> Batch:
    """Arrays of the given shapes and dtypes in a free segment of this process's pool."""
    pid = os.getpid()
    pool = _POOLS.get(pid)
    if pool is None:
        pool = _POOLS.setdefault(pid, _Pool())
    return pool.take(specs)


class _SharedDict(dict):
    def __reduce__(self):
        return _rebuild, self._where()


class _SharedTuple(tuple):
    def __reduce__(self):
        return _rebuild, self._where()


def shared(batch: Batch, tensors: dict[str, Any], as_tuple: bool) -> Any:
    """``tensors`` (torch views of ``batch``'s arrays) as a dict or tuple that pickles to a reference
    to its segment: unpickled in the loop's process, it is the same tensors over the same memory."""
    seg, offsets = batch.segment, batch.offsets
    specs = tuple((k, offsets[k], tuple(batch[k].shape), batch[k].dtype.str) for k in tensors)
    generation = seg.generation

    def where() -> tuple:
        if seg.generation != generation or seg.state[0] != FILLED:
            raise RuntimeError("hubdask: a batch was pickled twice or after its memory was reused")
        fd = None
        if not seg.announced:
            fd, seg.announced = DupFd(seg.fd), True
        seg.state[0] = SENT
        return (os.getpid(), seg.token, seg.size, fd, specs, as_tuple)

    out = _SharedTuple(tensors.values()) if as_tuple else _SharedDict(tensors)
    out._where = where
    return out


# --- the loop's side ------------------------------------------------------------------------------------

_MAPS: dict[tuple[int, str], tuple[mmap.mmap, np.ndarray]] = {}
_MAPS_LOCK = threading.Lock()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mapping(pid: int, token: str, size: int, fd: Any) -> tuple[mmap.mmap, np.ndarray]:
    key = (pid, token)
    with _MAPS_LOCK:
        if fd is not None:
            handle = fd.detach()
            try:
                mm = mmap.mmap(handle, size)
            finally:
                os.close(handle)
            for old in [k for k in _MAPS if not _alive(k[0])]:  # a finished worker sends no more batches
                del _MAPS[old]
            _MAPS[key] = (mm, np.frombuffer(mm, np.uint8, 1))
        found = _MAPS.get(key)
    if found is None:
        raise RuntimeError(f"hubdask: a batch from worker {pid} refers to memory this process never received")
    return found


def _free(state: np.ndarray) -> None:
    state[0] = FREE


def _rebuild(pid: int, token: str, size: int, fd: Any, specs: tuple, as_tuple: bool) -> Any:
    """The batch as tensors over the loop's mapping of its segment (what a pickled batch becomes)."""
    import torch

    mm, state = _mapping(pid, token, size, fd)
    out = {k: torch.from_numpy(v) for k, v in _views(mm, list(specs), _free, state).items()}
    return tuple(out.values()) if as_tuple else out

