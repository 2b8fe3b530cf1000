"""PyTorch: a dataset streamed as a ``torch.utils.data.IterableDataset``, and a DataLoader over it that
knows its length and can stop and resume mid-epoch.

Every rank of a ``torch.distributed`` job (ranks from torch.distributed when it is initialised, else
``rank=``/``world_size=``) gets the same number of samples and so of batches: the epoch's sequence is
padded by wrapping to its start, or cut with ``drop_last``, as ``DistributedSampler`` does. Inside a
rank, worker *w* of *W* builds the rank's batches *w, w+W, ...*, the order in which the DataLoader
takes them, so the rank's batch order does not depend on how many workers read it (stream.py). Blocks
are whole storage chunks, read ahead in threads. Shuffling is the block order plus a bounded sample
buffer. With ``seed`` the order is a function of (seed, epoch): call ``set_epoch(e)`` (as with
``DistributedSampler``) for a new order each epoch; without it the order follows torch's RNG
(``torch.manual_seed`` or the DataLoader's ``generator``).

``StreamLoader.state_dict()`` records the epoch and how many batches the loop has taken;
``load_state_dict`` makes the next pass yield exactly the rest of that epoch, in the same order, with
any number of workers (the draws are rebuilt from seeds and sizes, no data is read to skip).

Workers may be forked (Linux default) or spawned: the dataset pickles to its pinned state; a forked
worker reopens its storage connections (storage.root).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info
from torch.utils.data import IterableDataset as _TorchIterable

from hubdask.integrations import handoff
from hubdask.integrations.stream import INDEX_KEY, Plan, Share, make_plan, resume_draws, serve, worker_draws

STATE_VERSION = 1
_SAME = ("length", "world_size", "rank", "batch_size", "shuffle", "seed", "buffer_size", "drop_last", "block_rows")


def _shared(specs: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, np.ndarray]:
    """Tensors in shared memory (as torch's default_collate makes in a worker), where there is no memfd:
    their numpy views, the tensors themselves under ``.tensors``."""
    out = _InTensors()
    for key, (shape, dtype) in specs.items():
        t = torch.empty(0, dtype=torch.from_numpy(np.empty(0, dtype)).dtype)
        storage = t._typed_storage()._new_shared(int(np.prod(shape)), device=t.device)
        out.tensors[key] = t.new(storage).resize_(*shape)
        out[key] = out.tensors[key].numpy()
    return out


class _InTensors(dict):
    def __init__(self) -> None:
        super().__init__()
        self.tensors: dict[str, torch.Tensor] = {}


def _tensor(v: Any) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, np.ndarray):
        if not v.flags.writeable:
            v = v.copy()
        return torch.from_numpy(v)
    return torch.as_tensor(v)


class StreamDataset(_TorchIterable):
    """Samples (dicts of tensors, or tuples with ``output="tuple"``) of a pinned dataset state; with
    ``batch_size``, whole batches. ``len()`` is the samples this rank yields per epoch."""

    def __init__(self, plan: Plan, batch_size: int | None = None, shuffle: bool = False, seed: int | None = None,
                 transform: Callable | None = None, buffer_size: int = 2048, prefetch: int = 4,
                 return_index: bool = False, drop_last: bool = False, output: str = "dict",
                 rank: int | None = None, world_size: int | None = None) -> None:
        if output not in ("dict", "tuple"):
            raise ValueError(f"dataset {plan.name!r}: output must be 'dict' or 'tuple', got {output!r}")
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"dataset {plan.name!r}: batch_size must be positive or None, got {batch_size}")
        if (rank is None) != (world_size is None):
            raise ValueError(f"dataset {plan.name!r}: pass rank= and world_size= together (got rank={rank}, "
                             f"world_size={world_size})")
        if world_size is not None and not (world_size >= 1 and 0 <= rank < world_size):
            raise ValueError(f"dataset {plan.name!r}: expected 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        self.plan, self.batch_size, self.shuffle, self.seed = plan, batch_size, shuffle, seed
        self.transform, self.buffer_size, self.prefetch = transform, buffer_size, prefetch
        self.return_index, self.drop_last, self.output = return_index, drop_last, output
        self._rank, self._world = rank, world_size
        self.epoch = 0
        self._base: int | None = None  # an unseeded shuffle's epoch seed, set by the loader
        self._resume: dict[str, Any] | None = None  # a pending mid-epoch resume (StreamLoader.load_state_dict)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order a seeded shuffle gives (call before iterating); a pending
        resume of another epoch is dropped."""
        self.epoch = int(epoch)
        if self._resume is not None and self._resume["epoch"] != self.epoch:
            self._resume = None

    def ranks(self) -> tuple[int, int]:
        """(rank, world size): torch.distributed's when initialised, else ``rank=``/``world_size=``, else (0, 1)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        if self._world is not None:
            return int(self._rank), int(self._world)
        return 0, 1

    def share(self, base: int | None = None, workers: int = 1, epoch: int | None = None,
              sizes_only: bool = False) -> Share:
        """This rank's Share of an epoch (default: the current one) read by ``workers`` workers
        (``sizes_only``: for counting, whatever the seed)."""
        rank, world = self.ranks()
        if sizes_only:
            return Share(None, self.shuffle, rank, world, 1, self.batch_size, self.buffer_size, self.drop_last)
        epoch = self.epoch if epoch is None else epoch
        if self.seed is not None:
            seed: tuple[int, ...] | None = (int(self.seed), int(epoch))
        elif self.shuffle:
            if world > 1:
                raise ValueError(f"dataset {self.plan.name!r}: with {world} ranks pass seed= so that every rank "
                                 "shuffles the blocks alike (each sample once per epoch)")
            seed = (int(base if base is not None else torch.empty((), dtype=torch.int64).random_().item()),)
        else:
            seed = None
        return Share(seed, self.shuffle, rank, world, max(1, workers), self.batch_size, self.buffer_size,
                     self.drop_last)

    def __len__(self) -> int:
        return self.share(sizes_only=True).samples(self.plan.length)

    def batches(self) -> int:
        """Items this rank yields per epoch: batches (with ``batch_size``), else samples."""
        return self.share(sizes_only=True).items(self.plan.length)

    @property
    def num_samples(self) -> int:
        return self.plan.length

    def __repr__(self) -> str:
        return (f"hubdask.torch.StreamDataset<{self.plan.name!r}, {self.plan.length} samples, "
                f"arrays={list(self.plan.sources)}, shuffle={self.shuffle}, batch_size={self.batch_size}>")

    def config(self) -> dict[str, Any]:
        """What fixes the epoch's order (a resumed state must match it)."""
        rank, world = self.ranks()
        return {"length": self.plan.length, "world_size": world, "rank": rank, "batch_size": self.batch_size,
                "shuffle": self.shuffle, "seed": self.seed, "buffer_size": self.buffer_size,
                "drop_last": self.drop_last, "block_rows": self.plan.block_rows}

    def __iter__(self):
        worker = get_worker_info()
        w, n_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        resume, self._resume = self._resume, None  # once per process: a persistent worker resumes once
        if resume is not None:
            old = self.share(resume["base"], resume["num_workers"], resume["epoch"])
            todo = resume_draws(self.plan, old, resume["batches"], n_workers, w)
        else:
            base = self._base if worker is None else int(worker.seed - worker.id)  # the loader's base seed
            todo = worker_draws(self.plan, self.share(base, n_workers), w)
        batched = self.transform is None and self.batch_size is not None
        # a worker's batches go to the loop's process: gather them into memory shared with it
        alloc = (handoff.take if handoff.available() else _shared) if batched and worker is not None else None
        # the reads start now: a DataLoader worker calls iter() at its start, before it is asked for a batch
        data = serve(self.plan, todo, self.prefetch, self.return_index, alloc, self.buffer_size if self.shuffle else 0)
        return self._generate(data)

    def _generate(self, data: Iterator[dict[str, np.ndarray]]):
        keys = list(self.plan.sources) + ([INDEX_KEY] if self.return_index else [])
        if self.transform is None:
            for item in data:
                if self.batch_size is None:
                    for i in range(len(item[keys[0]])):
                        yield self._shape({k: _tensor(item[k][i]) for k in keys}, keys)
                elif isinstance(item, handoff.Batch):
                    yield handoff.shared(item, {k: torch.from_numpy(item[k]) for k in keys}, self.output == "tuple")
                else:
                    tensors = item.tensors if isinstance(item, _InTensors) else {k: _tensor(item[k]) for k in keys}
                    yield self._shape(tensors, keys)
            return
        from torch.utils.data import default_collate

        for item in data:
            outs = [self.transform({k: _tensor(item[k][i]) for k in keys}) for i in range(len(item[keys[0]]))]
            if self.batch_size is None:
                yield from outs
            else:
                yield self._shape(default_collate(outs), keys)

    def _shape(self, item: Any, keys: list[str]) -> Any:
        if self.output == "tuple" and isinstance(item, dict):
            return tuple(item[k] for k in keys)
        return item


def _as_made(item: Any) -> Any:
    """The items are tensors already, built in the workers: pass them on as they are."""
    return item


class StreamLoader(DataLoader):
    """A DataLoader over a StreamDataset: ``len()`` is this rank's batches per epoch, and
    ``state_dict()``/``load_state_dict()`` stop and resume an epoch mid-way."""

    dataset: StreamDataset

    def __init__(self, dataset: StreamDataset, **kwargs: Any) -> None:
        kwargs.setdefault("collate_fn", _as_made)  # torch's default would turn tuples into lists
        super().__init__(dataset, batch_size=None, **kwargs)
        self._progress: dict[str, Any] | None = None

    def __len__(self) -> int:
        return self.dataset.batches()

    def __iter__(self):
        ds = self.dataset
        resume = ds._resume
        if self.num_workers == 0 and resume is None:
            ds._base = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item())
        it = super().__iter__()
        if resume is not None:
            base, done = resume["base"], resume["batches"]
            if self.num_workers > 0:
                ds._resume = None  # the workers took their copies; the main process's is spent
        else:
            base = ds._base if self.num_workers == 0 else int(it._base_seed)
            done = 0
        progress = self._progress = {"epoch": ds.epoch, "batches": done,
                                     "base": base if ds.shuffle and ds.seed is None else None}
        for item in it:
            progress["batches"] += 1
            yield item

    def state_dict(self) -> dict[str, Any]:
        """Where the current (or last) epoch stands: its number and how many batches the loop took."""
        ds = self.dataset
        progress = self._progress or {"epoch": ds.epoch, "batches": 0, "base": None}
        if progress["base"] is None and ds.shuffle and ds.seed is None and not progress["batches"]:
            progress = {**progress, "base": 0}  # nothing taken yet: any order will do
        return {"version": STATE_VERSION, "dataset": ds.plan.name, **progress,
                "num_workers": max(1, self.num_workers), **ds.config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next pass yield the batches of ``state``'s epoch that it had not taken, in order."""
        ds = self.dataset
        name = ds.plan.name
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"dataset {name!r}: not a hubdask loader state (expected version {STATE_VERSION})")
        mine = ds.config()
        diff = {k: (state.get(k), mine[k]) for k in _SAME if state.get(k) != mine[k]}
        if diff:
            raise ValueError(f"dataset {name!r}: the state was saved by a loader with other settings "
                             f"(saved, now): {diff}; expected the same data, ranks, batch and shuffle settings")
        if not 0 <= int(state["batches"]) <= ds.batches():
            raise ValueError(f"dataset {name!r}: the state took {state['batches']} batches of an epoch of "
                             f"{ds.batches()}")
        ds.epoch = int(state["epoch"])
        ds._resume = {k: state[k] for k in ("epoch", "batches", "base", "num_workers")}
        self._progress = {k: state[k] for k in ("epoch", "batches", "base")}
        if getattr(self, "_iterator", None) is not None:  # persistent workers: start new ones that resume
            self._iterator._shutdown_workers()
            self._iterator = None


def torch_dataset(ds: Any, batch_size: int | None = None, shuffle: bool = False, seed: int | None = None,
                  transform: Callable | None = None, *, keys: Any = None, buffer_size: int = 2048,
                  prefetch: int = 4, return_index: bool = False, drop_last: bool = False,
                  output: str = "dict", block_rows: int | None = None, rank: int | None = None,
                  world_size: int | None = None) -> StreamDataset:
    """The IterableDataset over ``ds`` (an hd.Dataset) at its current state, for your own DataLoader.

    With ``batch_size`` it yields whole batches (use ``DataLoader(..., batch_size=None)``).
    """
    plan = make_plan(ds, keys, block_rows)
    return StreamDataset(plan, batch_size, shuffle, seed, transform, buffer_size, prefetch, return_index,
                         drop_last, output, rank, world_size)


def dataloader(ds: Any, batch_size: int | None = None, shuffle: bool = False, seed: int | None = None,
               transform: Callable | None = None, num_workers: int = 0, *, keys: Any = None,
               buffer_size: int = 2048, prefetch: int = 4, return_index: bool = False, drop_last: bool = False,
               output: str = "dict", block_rows: int | None = None, rank: int | None = None,
               world_size: int | None = None, **loader_kwargs: Any) -> StreamLoader:
    """A StreamLoader streaming ``ds``: batches are built in the workers (``loader.dataset`` is the
    StreamDataset: call ``loader.dataset.set_epoch(e)`` for a new seeded order). Other keyword arguments
    (``pin_memory``, ``multiprocessing_context``, ``prefetch_factor``, ...) go to the DataLoader."""
    data = torch_dataset(ds, batch_size, shuffle, seed, transform, keys=keys, buffer_size=buffer_size,
                         prefetch=prefetch, return_index=return_index, drop_last=drop_last, output=output,
                         block_rows=block_rows, rank=rank, world_size=world_size)
    for bad in ("batch_size", "shuffle", "sampler", "batch_sampler"):
        if bad in loader_kwargs:
            raise TypeError(f"dataset {data.plan.name!r}: {bad} is set by ds.pytorch itself")
    if loader_kwargs.get("in_order") is False:
        raise TypeError(f"dataset {data.plan.name!r}: in_order=False would mix up the batch order that "
                        "state_dict() and the equal batch counts of ranks rely on")
    return StreamLoader(data, num_workers=num_workers, **loader_kwargs)
