"""PyTorch: a dataset streamed as a ``torch.utils.data.IterableDataset`` (and a DataLoader over it).

With ``num_workers > 0`` each worker (and each rank of a ``torch.distributed`` job) takes every
n-th block of the epoch's block order, so every sample comes exactly once per epoch; blocks are whole
storage chunks, read ahead in threads (see stream.py). Shuffling is the block order plus a bounded
sample buffer. With ``seed`` the order is a function of (seed, epoch): call ``set_epoch(e)`` (as with
``DistributedSampler``) for a new order each epoch; without it the order follows torch's RNG
(``torch.manual_seed`` or the DataLoader's ``generator``).

Workers may be forked (Linux default) or spawned: the dataset pickles to its pinned state; a forked
worker reopens its storage connections (storage.root drops the parent's after fork).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info
from torch.utils.data import IterableDataset as _TorchIterable

from hubdask.integrations.stream import INDEX_KEY, Plan, block_order, make_plan, my_blocks, stream


def _tensor(v: Any) -> torch.Tensor:
    if isinstance(v, np.ndarray):
        if not v.flags.writeable:
            v = v.copy()
        return torch.from_numpy(v)
    return torch.as_tensor(v)


def _rank() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class StreamDataset(_TorchIterable):
    """Samples (dicts of tensors, or tuples with ``output="tuple"``) of a pinned dataset state."""

    def __init__(self, plan: Plan, batch_size: int | None = None, shuffle: bool = False, seed: int | None = None,
                 transform: Callable | None = None, buffer_size: int = 2048, prefetch: int = 2,
                 return_index: bool = False, drop_last: bool = False, output: str = "dict") -> None:
        if output not in ("dict", "tuple"):
            raise ValueError(f"dataset {plan.name!r}: output must be 'dict' or 'tuple', got {output!r}")
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"dataset {plan.name!r}: batch_size must be positive or None, got {batch_size}")
        self.plan, self.batch_size, self.shuffle, self.seed = plan, batch_size, shuffle, seed
        self.transform, self.buffer_size, self.prefetch = transform, buffer_size, prefetch
        self.return_index, self.drop_last, self.output = return_index, drop_last, output
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order a seeded shuffle gives (call before iterating)."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        return self.plan.length

    def __repr__(self) -> str:
        return (f"hubdask.torch.StreamDataset<{self.plan.name!r}, {self.plan.length} samples, "
                f"arrays={list(self.plan.sources)}, shuffle={self.shuffle}, batch_size={self.batch_size}>")

    def _seeds(self, worker: Any, shard: int, world: int) -> tuple[list[int], list[int]]:
        if self.seed is not None:
            base = [int(self.seed), self.epoch]
        elif worker is not None:
            base = [int(worker.seed - worker.id)]  # the loader's base seed: shared by this epoch's workers
        else:
            base = [int(torch.empty((), dtype=torch.int64).random_().item())]
        if self.shuffle and world > 1 and self.seed is None:
            raise ValueError(f"dataset {self.plan.name!r}: with torch.distributed ({world} ranks) pass seed= so "
                             "that every rank shuffles the blocks alike (each sample exactly once)")
        return base, base + [shard]

    def __iter__(self):
        worker = get_worker_info()
        wid, n_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        rank, world = _rank()
        shard, n_shards = rank * n_workers + wid, world * n_workers
        order_seed, buffer_seed = self._seeds(worker, shard, world)
        blocks = my_blocks(block_order(self.plan, self.shuffle, order_seed), shard, n_shards)
        per_sample = self.transform is not None
        samples = stream(self.plan, blocks, batch_size=None if per_sample else self.batch_size,
                         shuffle=self.shuffle, buffer_size=self.buffer_size,
                         rng=np.random.default_rng(buffer_seed), prefetch=self.prefetch,
                         return_index=self.return_index, drop_last=self.drop_last)
        keys = list(self.plan.sources) + ([INDEX_KEY] if self.return_index else [])
        if not per_sample:
            for item in samples:
                yield self._shape({k: _tensor(item[k]) for k in keys}, keys)
            return
        from torch.utils.data import default_collate

        batch: list = []
        for item in samples:
            out = self.transform({k: _tensor(item[k]) for k in keys})
            if self.batch_size is None:
                yield out
                continue
            batch.append(out)
            if len(batch) == self.batch_size:
                yield self._shape(default_collate(batch), keys)
                batch = []
        if batch and not self.drop_last:
            yield self._shape(default_collate(batch), keys)

    def _shape(self, item: Any, keys: list[str]) -> Any:
        if self.output == "tuple" and isinstance(item, dict):
            return tuple(item[k] for k in keys)
        return item


def torch_dataset(ds: Any, batch_size: int | None = None, shuffle: bool = False, seed: int | None = None,
                  transform: Callable | None = None, *, keys: Any = None, buffer_size: int = 2048,
                  prefetch: int = 2, return_index: bool = False, drop_last: bool = False,
                  output: str = "dict", block_rows: int | None = None) -> StreamDataset:
    """The IterableDataset over ``ds`` (an hd.Dataset) at its current state, for your own DataLoader.

    With ``batch_size`` it yields whole batches (use ``DataLoader(..., batch_size=None)``).
    """
    plan = make_plan(ds, keys, block_rows)
    return StreamDataset(plan, batch_size, shuffle, seed, transform, buffer_size, prefetch, return_index,
                         drop_last, output)


def dataloader(ds: Any, batch_size: int | None = None, shuffle: bool = False, seed: int | None = None,
               transform: Callable | None = None, num_workers: int = 0, *, keys: Any = None,
               buffer_size: int = 2048, prefetch: int = 2, return_index: bool = False, drop_last: bool = False,
               output: str = "dict", block_rows: int | None = None, **loader_kwargs: Any) -> DataLoader:
    """A DataLoader streaming ``ds``: batches are built in the workers (``loader.dataset`` is the
    StreamDataset: call ``loader.dataset.set_epoch(e)`` for a new seeded order). Other keyword arguments
    (``pin_memory``, ``multiprocessing_context``, ``prefetch_factor``, ...) go to the DataLoader."""
    data = torch_dataset(ds, batch_size, shuffle, seed, transform, keys=keys, buffer_size=buffer_size,
                         prefetch=prefetch, return_index=return_index, drop_last=drop_last, output=output,
                         block_rows=block_rows)
    for bad in ("batch_size", "shuffle", "sampler", "batch_sampler"):
        if bad in loader_kwargs:
            raise TypeError(f"dataset {data.plan.name!r}: {bad} is set by ds.pytorch itself")
    return DataLoader(data, batch_size=None, num_workers=num_workers, **loader_kwargs)
