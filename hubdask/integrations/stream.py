"""Sample streams over a dataset, the engine under the PyTorch and TensorFlow faces (framework-free).

A dataset's samples are rows along axis 0. The rows are cut into *blocks* aligned to the storage chunks
of the heaviest array (most bytes per row), so a block read fetches whole chunks. An epoch is a block
order (the same everywhere: shuffled by a seed shared for the epoch, or in sequence), read as one
sequence of sample positions. That sequence is split exactly, as ``DistributedSampler`` does: each rank
of a distributed job gets one contiguous share of the same size (padded by wrapping to the start, or
cut with ``drop_last``), so every rank yields the same number of batches; inside a rank, worker *w*
of *W* gets the contiguous part that holds the rank's batches *w, w+W, ...*, which is the order in
which a DataLoader takes its workers' batches. Each worker shuffles its part through a bounded buffer
of samples drawn at random from the blocks it holds (a pure function of seeds and sizes: the *draws*),
and reads the blocks that the draws need ahead in threads (``prefetch`` blocks in flight). Small arrays
(labels: at most ``preload_bytes`` together) are read whole once per process instead.

Because the draws depend on seeds and sizes only, an interrupted epoch can be rebuilt without reading
data: ``resume_draws`` gives the items left after the first ``done`` in the rank's order, for any number
of workers. The plan pins the dataset's state (a branch is read at its head when the plan was made), so
a stream over a tag or commit reads the same data forever.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from hubdask.chunkio import read_selection
from hubdask.source import Source

PRELOAD_BYTES = 64 * 2**20
INDEX_KEY = "index"
SAMPLE_DRAW = 64  # samples per draw of a shuffled per-sample stream

Draw = tuple[np.ndarray, list[int]]  # (sample ids, blocks whose last use this draw is)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a stream reads: pinned sources of the chosen arrays, their length, and the block size."""

    name: str
    sources: dict[str, Source]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    length: int
    block_rows: int
    preload: frozenset[str]

    @property
    def n_blocks(self) -> int:
        return -(-self.length // self.block_rows) if self.length else 0

    def block(self, b: int) -> tuple[int, int]:
        return b * self.block_rows, min((b + 1) * self.block_rows, self.length)


def make_plan(ds: Any, keys: Any = None, block_rows: int | None = None,
              preload_bytes: int = PRELOAD_BYTES) -> Plan:
    """The plan of a stream over ``ds``'s arrays ``keys`` (default all), which must share axis 0."""
    arrays = ds.arrays
    keys = list(arrays) if keys is None else [keys] if isinstance(keys, str) else list(keys)
    missing = [k for k in keys if k not in arrays]
    if missing or not keys:
        raise KeyError(f"dataset {ds.name!r} has no arrays {missing}; arrays: {', '.join(arrays) or 'none'}")
    if INDEX_KEY in keys:
        raise ValueError(f"dataset {ds.name!r}: an array named {INDEX_KEY!r} clashes with the sample index key")
    chosen = {k: arrays[k] for k in keys}
    for k, a in chosen.items():
        if a.ndim == 0:
            raise ValueError(f"dataset {ds.name!r}: array {k!r} is 0-d; samples are rows along axis 0")
    lengths = {k: a.shape[0] for k, a in chosen.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"dataset {ds.name!r}: arrays {keys} have different lengths along axis 0 "
                         f"({lengths}); expected one length (samples are rows)")
    row_bytes = {k: a.nbytes // max(a.shape[0], 1) for k, a in chosen.items()}
    heaviest = max(keys, key=lambda k: row_bytes[k])
    rows = block_rows or chosen[heaviest].chunks[0]
    if rows <= 0:
        raise ValueError(f"dataset {ds.name!r}: block_rows must be positive, got {rows}")
    preload, budget = set(), preload_bytes
    for k in sorted(keys, key=lambda k: chosen[k].nbytes):
        if k != heaviest and chosen[k].nbytes <= budget:
            preload.add(k)
            budget -= chosen[k].nbytes
    return Plan(ds.name, {k: a.frozen_view.source for k, a in chosen.items()}, {k: a.shape for k, a in chosen.items()},
                {k: a.dtype for k, a in chosen.items()}, lengths[heaviest], int(rows), frozenset(preload))


# --- who gets which samples, in which order -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Share:
    """One rank's epoch: the block order's seed, the rank among ``world``, the loader's ``workers``,
    ``batch`` samples per item (None: an item is one sample), the shuffle buffer and ``drop_last``."""

    seed: tuple[int, ...] | None
    shuffle: bool
    rank: int
    world: int
    workers: int
    batch: int | None
    buffer_size: int
    drop_last: bool

    @property
    def item_size(self) -> int:
        return self.batch or 1

    def rank_samples(self, n: int) -> int:
        """Samples of the rank's share: ``n / world`` rounded down with drop_last, else up (padded)."""
        return n // self.world if self.drop_last else -(-n // self.world)

    def items(self, n: int) -> int:
        """Items (batches, or samples) the rank yields in the epoch: the same on every rank."""
        s, b = self.rank_samples(n), self.item_size
        return s // b if self.drop_last else -(-s // b)

    def samples(self, n: int) -> int:
        """Samples the rank yields in the epoch (a drop_last short batch is left out)."""
        return self.items(n) * self.item_size if self.drop_last else self.rank_samples(n)

    def worker_part(self, n: int, w: int) -> tuple[int, int]:
        """(first position, samples) of worker ``w``'s part of the epoch's sequence: the rank's items
        ``w, w+W, ...``, the short last one included."""
        items, b, total = self.items(n), self.item_size, self.samples(n)
        counts = [len(range(v, items, self.workers)) * b for v in range(self.workers)]
        if items and total < items * b:
            counts[(items - 1) % self.workers] -= items * b - total
        return self.rank * self.rank_samples(n) + sum(counts[:w]), counts[w]

    def take(self, plan: Plan) -> int:
        """Samples per draw: a batch, else a small draw (shuffled) or a block (in order)."""
        return self.batch or (SAMPLE_DRAW if self.shuffle else plan.block_rows)


def block_order(plan: Plan, shuffle: bool, seed: Any) -> np.ndarray:
    """The epoch's block order: the same in every worker and rank given the same ``seed``."""
    order = np.arange(plan.n_blocks)
    if shuffle:
        np.random.default_rng(list(seed) if isinstance(seed, tuple) else seed).shuffle(order)
    return order


def units(plan: Plan, order: np.ndarray, start: int, count: int) -> list[tuple[int, int, int]]:
    """(block, first row, stop row) runs covering positions ``start .. start+count`` of the epoch's
    sequence (``order``'s blocks, rows in order); positions past the end wrap to the start (padding)."""
    n = plan.length
    if n == 0 or count <= 0:
        return []
    sizes = np.full(plan.n_blocks, plan.block_rows, np.int64)
    sizes[-1] = n - (plan.n_blocks - 1) * plan.block_rows
    sizes = sizes[order]
    ends = np.cumsum(sizes)
    out, p, stop = [], start, start + count
    while p < stop:
        q = p % n
        i = int(np.searchsorted(ends, q, side="right"))
        b = int(order[i])
        lo = q - int(ends[i] - sizes[i])
        k = min(int(sizes[i]) - lo, stop - p)
        first = plan.block(b)[0] + lo
        out.append((b, first, first + k))
        p += k
    return out


def draws(plan: Plan, parts: Iterable[tuple[int, int, int]], take: int, shuffle: bool, buffer_size: int,
          rng: np.random.Generator) -> Iterator[Draw]:
    """The draws of ``take`` samples (the last may be short) over ``parts`` read in order: in order, or
    drawn at random from a pool refilled to at least ``buffer_size`` samples (all that is left at the
    end; at the start the bound grows with the samples loaded so far, so the first batch waits for one
    block only). A pure function of sizes and ``rng``: no data is read."""
    full = max(buffer_size, take) if shuffle else take
    pool = np.empty(0, np.int64)
    left: dict[int, int] = {}
    todo = iter(parts)
    rows = plan.block_rows
    loaded = 0
    while True:
        low = min(full, max(take, loaded))  # ramps up: the first draw waits for one block, not a full buffer
        if len(pool) < low:
            grow = [pool]
            m = len(pool)
            for b, lo, hi in todo:
                grow.append(np.arange(lo, hi, dtype=np.int64))
                left[b] = left.get(b, 0) + hi - lo
                m += hi - lo
                loaded += hi - lo
                if m >= low:
                    break
            pool = np.concatenate(grow) if len(grow) > 1 else pool
        m = len(pool)
        if m == 0:
            return
        k = min(take, m)
        if shuffle:
            picks = rng.choice(m, size=k, replace=False)
            keep = np.ones(m, bool)
            keep[picks] = False
            ids, pool = pool[picks], pool[keep]
        else:
            ids, pool = pool[:k], pool[k:]
        released = []
        for b, c in zip(*np.unique(ids // rows, return_counts=True)):
            b = int(b)
            left[b] -= int(c)
            if not left[b]:
                del left[b]
                released.append(b)
        yield ids, released


def worker_draws(plan: Plan, share: Share, w: int) -> Iterator[Draw]:
    """Worker ``w``'s draws for its part of the rank's epoch."""
    start, count = share.worker_part(plan.length, w)
    order = block_order(plan, share.shuffle, share.seed)
    rng = np.random.default_rng(list(share.seed or ()) + [share.rank, w])
    return draws(plan, units(plan, order, start, count), share.take(plan), share.shuffle, share.buffer_size, rng)


def _worker_items(plan: Plan, share: Share, w: int) -> list[np.ndarray]:
    ids = [d[0] for d in worker_draws(plan, share, w)]
    if share.batch is not None:
        return ids
    flat = np.concatenate(ids) if ids else np.empty(0, np.int64)
    return [flat[i:i + 1] for i in range(len(flat))]


def resume_draws(plan: Plan, share: Share, done: int, workers: int, w: int) -> list[Draw]:
    """Worker ``w`` of ``workers``'s draws for the items of ``share``'s epoch after its first ``done``:
    the rank's remaining items in their original order, every ``workers``-th one from ``w`` on."""
    per = [_worker_items(plan, share, v) for v in range(share.workers)]
    total = share.items(plan.length)
    mine = [per[i % share.workers][i // share.workers] for i in range(done + w, total, workers)]
    if share.batch is None:  # single samples: read them in draws, as a stream does
        flat = np.concatenate(mine) if mine else np.empty(0, np.int64)
        size = share.take(plan)
        mine = [flat[i:i + size] for i in range(0, len(flat), size)]
    last: dict[int, int] = {}
    for i, ids in enumerate(mine):
        for b in np.unique(ids // plan.block_rows):
            last[int(b)] = i
    released: list[list[int]] = [[] for _ in mine]
    for b, i in last.items():
        released[i].append(b)
    return list(zip(mine, released))


# --- reading ------------------------------------------------------------------------------------------

_PRELOADED: dict[tuple, np.ndarray] = {}  # source key -> the whole array (at most 16 kept)
_LOADING: dict[tuple, Future] = {}  # source key -> its read in progress, in the process ``_LOADING_PID``
_LOADING_PID = -1
_LOADING_LOCK = threading.Lock()


def _whole(src: Source, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The whole (small) array, read once per process: concurrent callers wait for the one read."""
    global _LOADING, _LOADING_PID
    key = src.key
    arr = _PRELOADED.get(key)
    if arr is not None:
        return arr
    with _LOADING_LOCK:
        if _LOADING_PID != os.getpid():  # a forked child: the parent's reads in progress never end here
            _LOADING, _LOADING_PID = {}, os.getpid()
        loading = _LOADING.get(key)
        mine = loading is None
        if mine:
            loading = _LOADING[key] = Future()
    if not mine:
        return loading.result()
    try:
        arr = read_selection(src, tuple(slice(0, n, 1) for n in shape), name)
    except BaseException as exc:
        with _LOADING_LOCK:
            _LOADING.pop(key, None)  # the next caller reads again
        loading.set_exception(exc)
        raise
    _PRELOADED[key] = arr
    while len(_PRELOADED) > 16:
        _PRELOADED.pop(next(iter(_PRELOADED)))
    with _LOADING_LOCK:
        _LOADING.pop(key, None)
    loading.set_result(arr)
    return arr


class Spares:
    """Free buffers of a process's streams (blocks read, slots), taken again by the next reads and by
    the next pass (a persistent DataLoader worker's next epoch): a fresh multi-MB array is new memory
    whose every page the kernel zeroes on first touch (the largest item of a cold epoch's worker CPU
    when every block had its own), a reused one is mapped already. At most ``keep`` bytes are held,
    the buffers given back longest ago dropped first. Thread-safe (reads run in the read-ahead threads)."""

    def __init__(self, keep: int = 1 << 30) -> None:
        self.keep = keep
        self._free: list[tuple[tuple, np.ndarray]] = []  # (kind, buffer), in the order given back
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, key: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        kind = (key, tuple(shape), np.dtype(dtype))
        with self._lock:
            for i in range(len(self._free) - 1, -1, -1):  # the last given first: its pages are warmest
                if self._free[i][0] == kind:
                    buf = self._free.pop(i)[1]
                    self._bytes -= buf.nbytes
                    return buf
        return np.empty(shape, dtype)

    def give(self, key: Any, buf: np.ndarray) -> None:
        """Take back ``buf`` (of ``key``) once nothing else uses it."""
        with self._lock:
            self._free.append(((key, buf.shape, buf.dtype), buf))
            self._bytes += buf.nbytes
            while self._bytes > self.keep:
                self._bytes -= self._free.pop(0)[1].nbytes

    def give_block(self, plan: Plan, block: dict[str, np.ndarray]) -> None:
        """Take back a block's buffers (preloaded arrays are views: kept out)."""
        for k, v in block.items():
            if k not in plan.preload:
                self.give(k, v)


class _Workspace:
    """What a process's streams share, pass after pass: the read-ahead threads (each keeps its reused
    read buffer, storage.files) and the Spares. Made again in a forked child."""

    def __init__(self) -> None:
        self.spares = Spares()
        self.pool: ThreadPoolExecutor | None = None
        self.lock = threading.Lock()

    def threads(self, n: int) -> ThreadPoolExecutor:
        """A pool of at least ``n`` threads (a bigger one replaces a smaller, whose reads run on)."""
        with self.lock:
            if self.pool is None or self.pool._max_workers < n:
                if self.pool is not None:
                    self.pool.shutdown(wait=False)
                self.pool = ThreadPoolExecutor(n, thread_name_prefix="hubdask-prefetch")
            return self.pool


_WORKSPACES: dict[int, _Workspace] = {}


def workspace() -> _Workspace:
    """This process's workspace."""
    pid = os.getpid()
    found = _WORKSPACES.get(pid)
    if found is None:
        with _LOADING_LOCK:
            found = _WORKSPACES.setdefault(pid, _Workspace())
    return found


def read_block(plan: Plan, b: int, spares: Spares | None = None) -> dict[str, np.ndarray]:
    """Rows of block ``b`` of every array: whole chunks through the chunk engine (decoded into a buffer
    from ``spares`` when given), small arrays from memory."""
    start, stop = plan.block(b)
    out = {}
    for k, src in plan.sources.items():
        shape = plan.shapes[k]
        if k in plan.preload:
            out[k] = _whole(src, shape, f"{plan.name}[{k}]")[start:stop]
        else:
            sel = (slice(start, stop, 1),) + tuple(slice(0, n, 1) for n in shape[1:])
            buf = None if spares is None else spares.take(k, (stop - start,) + shape[1:], plan.dtypes[k])
            out[k] = read_selection(src, sel, f"{plan.name}[{k}]", buf)
    return out


def preload(plan: Plan) -> None:
    """Read the plan's small arrays whole (once per process)."""
    for k in plan.preload:
        _whole(plan.sources[k], plan.shapes[k], f"{plan.name}[{k}]")


Alloc = Callable[[dict[str, tuple[tuple[int, ...], np.dtype]]], dict[str, np.ndarray]]


def _new_arrays(specs: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, np.ndarray]:
    return {k: np.empty(shape, dtype) for k, (shape, dtype) in specs.items()}


class _Rows:
    """The samples a worker holds, in slots of one reused array per key: a block's rows are copied in
    when its first draw is served and their slots are freed as they are served. A shuffle buffer
    drains a block slowly (its last rows linger while later blocks come in), so holding whole blocks
    would keep most of a worker's blocks in memory, each in fresh pages that the kernel zeroes on
    first touch; slots keep about the buffer's samples, in memory mapped already."""

    def __init__(self, capacity: int = 0, spares: Spares | None = None) -> None:
        self.capacity = capacity  # slots made at the first load: growing later copies into new memory
        self.spares = spares or Spares()  # where the slot arrays come from and go back to
        self.arrays: dict[str, np.ndarray] = {}
        self.free = np.empty(0, np.int64)  # free slots (a stack: the last ones are taken first)
        self.slots: dict[int, np.ndarray] = {}  # block -> the slot of each of its rows (-1: served)

    def load(self, b: int, block: dict[str, np.ndarray]) -> None:
        """Copy the rows of block ``b`` into free slots (growing the arrays when too few are free)."""
        n = len(next(iter(block.values())))
        if len(self.free) < n:
            self._grow(block, n - len(self.free))
        got, self.free = self.free[len(self.free) - n:].copy(), self.free[:len(self.free) - n]
        for k, v in block.items():
            self.arrays[k][got] = v
        self.slots[b] = got

    def _grow(self, block: dict[str, np.ndarray], need: int) -> None:
        old = len(next(iter(self.arrays.values()))) if self.arrays else 0
        size = max(old * 2, old + need, self.capacity)
        for k, v in block.items():
            grown = self.spares.take(("slots", k), (size,) + v.shape[1:], v.dtype)
            if old:
                grown[:old] = self.arrays[k]
                self.spares.give(("slots", k), self.arrays[k])
            self.arrays[k] = grown
        self.free = np.concatenate([np.arange(size - 1, old - 1, -1, dtype=np.int64), self.free])

    def has(self, b: int, local: np.ndarray) -> bool:
        found = self.slots.get(b)
        return found is not None and bool((found[local] >= 0).all())

    def take(self, plan: Plan, ids: np.ndarray, blocks: list[int]) -> np.ndarray:
        """The slots of samples ``ids`` (in blocks ``blocks``, all loaded), freed for later rows."""
        rows = plan.block_rows
        if len(blocks) == 1:
            where = [slice(None)]
        else:
            where = [np.flatnonzero(ids // rows == b) for b in blocks]
        out = np.empty(len(ids), np.int64)
        for b, w in zip(blocks, where):
            local = ids[w] - b * rows
            out[w] = self.slots[b][local]
            self.slots[b][local] = -1
        self.free = np.concatenate([self.free, out])
        return out

    def release(self) -> None:
        """The pass is over: the slot arrays go back to the spares."""
        for k, v in self.arrays.items():
            self.spares.give(("slots", k), v)
        self.arrays, self.slots, self.free = {}, {}, np.empty(0, np.int64)

    def drop(self, b: int) -> None:
        """Block ``b`` is past its last draw: free the slots of its rows not served (outside this part)."""
        left = self.slots.pop(b, None)
        if left is not None:
            self.free = np.concatenate([self.free, left[left >= 0]])


def serve(plan: Plan, todo: Iterable[Draw], prefetch: int = 2, return_index: bool = False,
          alloc: Alloc | None = None, buffer_size: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """The data of each draw (a dict of new, writable arrays), reading the blocks the coming draws need
    ahead in threads (``prefetch`` reads in flight, from one at the start: the first draw's block is
    not slowed by the others) into reused buffers (Spares), and holding a block's rows (_Rows) until
    they are served. The first reads (and of the small arrays, read whole) start at once, before the
    first item is asked for. With ``alloc({key: (shape, dtype)}) -> {key: array}`` the rows are
    gathered into the arrays it gives (e.g. reused shared memory, so that handing the batch to another
    process copies nothing): the mapping it returns is what is yielded. ``buffer_size``: the draws'
    shuffle buffer, to size the slots for (the buffer, a block coming in, the rows of blocks at the
    part's ends)."""
    return _Serve(plan, todo, prefetch, return_index, alloc, buffer_size).items()


class _Serve:
    """One pass of ``serve``: its reads ahead and the rows it holds."""

    def __init__(self, plan: Plan, todo: Iterable[Draw], prefetch: int, return_index: bool,
                 alloc: Alloc | None, buffer_size: int) -> None:
        self.plan, self.prefetch, self.return_index, self.alloc = plan, prefetch, return_index, alloc
        space = workspace()
        self.pool, self.spares = space.threads(max(prefetch, 1)), space.spares
        self.kept = _Rows(buffer_size + 3 * plan.block_rows if buffer_size else 0, self.spares)
        self.held: dict[int, Future | None] = {}  # block -> its read (None: its rows are in ``kept``)
        self.needed: dict[int, int] = {}  # block -> draws read ahead that use it
        self.dead: set[int] = set()  # blocks past their last draw, kept while a draw read ahead needs them
        self.ahead: deque[tuple[np.ndarray, list[int], list[int], int]] = deque()
        self.fresh = 0  # blocks whose reads the draws ahead started: the read-ahead bound
        self.served = 0  # the bound ramps up from 1: the first draw's block is read alone, at full speed
        self.source = iter(todo)
        self.exhausted = False
        if plan.preload:
            self.pool.submit(preload, plan)  # beside the first block, not after it
        self._read_ahead()

    def _read(self, b: int) -> Future:
        return self.pool.submit(read_block, self.plan, b, self.spares)

    def _read_ahead(self) -> None:
        """Take draws and start the reads of their blocks, up to the read-ahead bound."""
        rows = self.plan.block_rows
        while not self.exhausted and (not self.ahead or self.fresh < min(self.prefetch, 1 + self.served)):
            nxt = next(self.source, None)
            if nxt is None:
                self.exhausted = True
                break
            ids, released = nxt
            blocks = np.unique(ids // rows).tolist()
            started = 0
            for b in blocks:
                self.needed[b] = self.needed.get(b, 0) + 1
                self.dead.discard(b)
                if b not in self.held:
                    self.held[b] = self._read(b)
                    started += 1
            self.ahead.append((ids, released, blocks, started))
            self.fresh += started

    def items(self) -> Iterator[dict[str, np.ndarray]]:
        plan, kept, held, rows = self.plan, self.kept, self.held, self.plan.block_rows
        try:
            while True:
                self._read_ahead()
                if not self.ahead:
                    return
                ids, released, blocks, started = self.ahead.popleft()
                self.fresh -= started
                for b in blocks:
                    read = held[b]
                    if read is None and not kept.has(b, ids[ids // rows == b] - b * rows):
                        read = self._read(b)  # a sample drawn again (padding wraps the epoch to its
                        kept.drop(b)  # start) whose rows were served: read again
                    if read is not None:
                        block = read.result()
                        kept.load(b, block)
                        self.spares.give_block(plan, block)  # copied into the slots: the buffers are free
                        held[b] = None
                slots = kept.take(plan, ids, blocks)
                out = _gather(kept.arrays, slots, ids, self.alloc or _new_arrays, self.return_index)
                for b in blocks:
                    self.needed[b] -= 1
                self.dead.update(released)
                for b in [b for b in self.dead if not self.needed.get(b)]:
                    self.dead.discard(b)
                    self.needed.pop(b, None)
                    held.pop(b, None)
                    kept.drop(b)
                self.served += 1
                yield out
        finally:
            for f in held.values():
                if f is not None:
                    f.cancel()
            kept.release()


def _gather(arrays: dict[str, np.ndarray], slots: np.ndarray, ids: np.ndarray, alloc: Alloc,
            return_index: bool = False) -> dict[str, np.ndarray]:
    """Rows ``slots`` of the held samples, stacked in order into arrays from ``alloc`` (with the sample
    ids under INDEX_KEY when ``return_index``)."""
    specs = {key: ((len(ids),) + v.shape[1:], v.dtype) for key, v in arrays.items()}
    if return_index:
        specs[INDEX_KEY] = ((len(ids),), np.dtype(np.int64))
    out = alloc(specs)
    if return_index:
        out[INDEX_KEY][...] = ids
    for key, v in arrays.items():
        np.take(v, slots, axis=0, out=out[key], mode="clip")  # "raise" would gather into a temp array first
    return out
