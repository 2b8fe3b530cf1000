"""Sample streams over a dataset, the engine under the PyTorch and TensorFlow faces (framework-free).

A dataset's samples are rows along axis 0. The rows are cut into *blocks* aligned to the storage chunks
of the heaviest array (most bytes per row), so a block read fetches whole chunks and no chunk is read
by two workers. An epoch is a block order (the same in every worker: shuffled by a seed shared for the
epoch, or in sequence), split among the workers (and the ranks of a distributed job) round-robin, so
every sample comes exactly once. Each worker reads its blocks ahead in threads (``prefetch`` blocks in
flight), and shuffles by a bounded buffer of samples drawn at random from the blocks it holds. Small
arrays (labels: at most ``preload_bytes`` together) are read whole once per process instead.

The plan pins the dataset's state (a branch is read at its head when the plan was made), so a stream
over a tag or commit reads the same data forever.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from hubdask.source import Source

PRELOAD_BYTES = 64 * 2**20
INDEX_KEY = "index"


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
    return Plan(ds.name, {k: a._source for k, a in chosen.items()}, {k: a.shape for k, a in chosen.items()},
                {k: a.dtype for k, a in chosen.items()}, lengths[heaviest], int(rows), frozenset(preload))


# --- which blocks, in which order, for whom ---------------------------------------------------------


def block_order(plan: Plan, shuffle: bool, seed: Any) -> np.ndarray:
    """The epoch's block order: the same in every worker given the same ``seed``."""
    order = np.arange(plan.n_blocks)
    if shuffle:
        np.random.default_rng(seed).shuffle(order)
    return order


def my_blocks(order: np.ndarray, shard: int, n_shards: int) -> np.ndarray:
    """This shard's blocks: round-robin over the epoch's order, so every block goes to exactly one shard."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is not in 0..{n_shards - 1}")
    return order[shard::n_shards]


# --- reading ------------------------------------------------------------------------------------------

_PRELOADED: dict[tuple, np.ndarray] = {}


def _whole(src: Source, shape: tuple[int, ...], name: str) -> np.ndarray:
    key = src.key
    arr = _PRELOADED.get(key)
    if arr is None:
        from hubdask.array import read_selection

        arr = _PRELOADED[key] = read_selection(src, tuple(slice(0, n, 1) for n in shape), name)
        while len(_PRELOADED) > 16:
            _PRELOADED.pop(next(iter(_PRELOADED)))
    return arr


def read_block(plan: Plan, b: int) -> dict[str, np.ndarray]:
    """Rows of block ``b`` of every array: whole chunks through the chunk engine, small arrays from memory."""
    from hubdask.array import read_selection

    start, stop = plan.block(b)
    out = {}
    for k, src in plan.sources.items():
        shape = plan.shapes[k]
        if k in plan.preload:
            out[k] = _whole(src, shape, f"{plan.name}[{k}]")[start:stop].copy()  # callers may write to it
        else:
            sel = (slice(start, stop, 1),) + tuple(slice(0, n, 1) for n in shape[1:])
            out[k] = read_selection(src, sel, f"{plan.name}[{k}]")
    return out


def read_ahead(plan: Plan, blocks: np.ndarray, prefetch: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(block, data) for ``blocks`` in order, with up to ``prefetch`` block reads in flight in threads."""
    if prefetch <= 0:
        for b in blocks:
            yield int(b), read_block(plan, int(b))
        return
    pool = ThreadPoolExecutor(prefetch, thread_name_prefix="hubdask-prefetch")
    pending: deque[tuple[int, Future]] = deque()
    todo = iter(int(b) for b in blocks)
    try:
        for b in todo:
            pending.append((b, pool.submit(read_block, plan, b)))
            if len(pending) >= prefetch:
                break
        while pending:
            b, fut = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(read_block, plan, nxt)))
            yield b, fut.result()
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


# --- the sample stream ------------------------------------------------------------------------------


def stream(plan: Plan, blocks: np.ndarray, *, batch_size: int | None = None, shuffle: bool = False,
           buffer_size: int = 2048, rng: np.random.Generator | None = None, prefetch: int = 2,
           return_index: bool = False, drop_last: bool = False) -> Iterator[dict[str, Any]]:
    """Samples (``batch_size=None``: dicts of rows) or batches (dicts of stacked rows) of ``blocks``.

    Without shuffle the samples come in block order, rows in order. With shuffle each output is drawn at
    random from a pool that holds at least ``buffer_size`` samples (all remaining ones at the end).
    ``return_index`` adds the sample's row number as ``"index"``.
    """
    rng = rng if rng is not None else np.random.default_rng()
    take = batch_size or (64 if shuffle else plan.block_rows)
    low = max(buffer_size, take) if shuffle else take
    held: dict[int, dict[str, np.ndarray]] = {}  # block -> its rows (index included)
    left: dict[int, int] = {}
    pool_block = np.empty(0, np.int64)
    pool_row = np.empty(0, np.int64)
    source = read_ahead(plan, blocks, prefetch)
    exhausted = False
    while True:
        while not exhausted and len(pool_row) < low:
            nxt = next(source, None)
            if nxt is None:
                exhausted = True
                break
            b, data = nxt
            start, stop = plan.block(b)
            if return_index:
                data[INDEX_KEY] = np.arange(start, stop, dtype=np.int64)
            held[b], left[b] = data, stop - start
            pool_block = np.concatenate([pool_block, np.full(stop - start, b, np.int64)])
            pool_row = np.concatenate([pool_row, np.arange(stop - start, dtype=np.int64)])
        m = len(pool_row)
        if m == 0:
            break
        k = min(take, m)
        if shuffle:
            picks = rng.choice(m, size=k, replace=False)
            keep = np.ones(m, bool)
            keep[picks] = False
        else:
            picks = np.arange(k)
            keep = slice(k, None)
        pb, pr = pool_block[picks], pool_row[picks]
        pool_block, pool_row = pool_block[keep], pool_row[keep]
        out = _gather(held, pb, pr)
        for b, c in zip(*np.unique(pb, return_counts=True)):
            left[b] -= int(c)
            if not left[b]:
                del held[b], left[b]
        if batch_size is None:
            for i in range(k):
                yield {key: v[i] for key, v in out.items()}
            continue
        if k < batch_size and drop_last:  # only the last draw can be short: the pool refills to >= take
            break
        yield out


def _gather(held: dict[int, dict[str, np.ndarray]], pb: np.ndarray, pr: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``pr`` of blocks ``pb``, stacked in pick order (a plain slice when they are consecutive)."""
    blocks = np.unique(pb)
    first = held[int(pb[0])]
    if len(blocks) == 1 and len(pr) and pr[-1] - pr[0] == len(pr) - 1 and np.all(np.diff(pr) == 1):
        return {key: v[pr[0]:pr[-1] + 1] for key, v in first.items()}
    out = {key: np.empty((len(pb),) + v.shape[1:], v.dtype) for key, v in first.items()}
    for b in blocks:
        where = np.nonzero(pb == b)[0]
        data = held[int(b)]
        for key, v in data.items():
            out[key][where] = v[pr[where]]
    return out
