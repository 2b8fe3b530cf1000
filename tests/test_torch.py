"""PyTorch streaming over S3 (moto's server): exactly once per epoch with workers, seeded order, tags."""

from __future__ import annotations

import collections
import itertools
import os

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch==2.13.0)")

import hubdask as hd  # noqa: E402

N = 300


def make(root: str, name: str = "ml/train") -> hd.Dataset:
    images = np.arange(N * 12, dtype=np.float32).reshape(N, 3, 4)  # row i holds 12*i .. 12*i+11
    return hd.dataset(name, images=dict(data=images, chunks=(32, 3, 4)), labels=dict(data=np.arange(N), chunks=(50,)),
                      storage=root)


def indices(loader) -> list[int]:
    out = []
    for batch in loader:
        idx = batch["index"]
        assert torch.equal(batch["labels"], idx)
        assert torch.equal(batch["images"][:, 0, 0], (idx * 12).float())
        out += idx.tolist()
    return out


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_workers_yield_every_index_once(s3_root, shuffle):
    ds = make(s3_root)
    loader = ds.pytorch(batch_size=16, shuffle=shuffle, num_workers=2, return_index=True, buffer_size=64)
    seen = indices(loader)
    assert sorted(seen) == list(range(N)) and len(seen) == N
    if not shuffle:  # worker 0 holds the rank's batches 0, 2, .., 18 (the short one): rows 0..155; worker 1 the rest
        assert seen[:16] == list(range(16)) and seen[16:32] == list(range(156, 172))
    else:
        assert seen != sorted(seen)
    again = indices(loader)  # a second epoch: again every sample exactly once
    assert sorted(again) == list(range(N))


def test_per_sample_and_transform(s3_root):
    ds = make(s3_root)
    loader = ds.pytorch(num_workers=2, shuffle=True, seed=1, return_index=True)
    counts = collections.Counter(int(s["index"]) for s in loader)
    assert sorted(counts) == list(range(N)) and set(counts.values()) == {1}

    def double(sample):
        return sample["images"] * 2, sample["labels"]

    batches = list(ds.pytorch(batch_size=50, transform=double, keys=["images", "labels"]))
    assert [len(y) for _, y in batches] == [50] * 6
    x, y = batches[1]
    assert torch.equal(y, torch.arange(50, 100)) and torch.equal(x[:, 0, 0], y.float() * 24)


def test_seed_makes_the_order_reproducible(s3_root):
    ds = make(s3_root)
    a = indices(ds.pytorch(batch_size=10, shuffle=True, seed=7, num_workers=2, return_index=True))
    b = indices(ds.pytorch(batch_size=10, shuffle=True, seed=7, num_workers=2, return_index=True))
    assert a == b and sorted(a) == list(range(N))
    loader = ds.pytorch(batch_size=10, shuffle=True, seed=7, num_workers=2, return_index=True)
    loader.dataset.set_epoch(1)
    c = indices(loader)
    assert c != a and sorted(c) == list(range(N))


def test_tag_keeps_training_data_fixed_while_main_changes(s3_root):
    ds = make(s3_root)
    ds.tag("train-v1")
    pinned = hd.load("ml/train:train-v1", storage=s3_root).pytorch(batch_size=100, num_workers=2)
    ds["labels"][0:50] = -1
    ds.commit("relabel the first 50")
    ds["images"][0] = 0.0  # uncommitted on main
    labels = torch.cat([b["labels"] for b in pinned])
    assert torch.equal(torch.sort(labels).values, torch.arange(N))
    main = torch.cat([b["labels"] for b in hd.load("ml/train", storage=s3_root).pytorch(batch_size=100)])
    assert int((main == -1).sum()) == 50


def test_spawned_workers(s3_root):
    ds = make(s3_root)
    loader = ds.pytorch(batch_size=25, num_workers=2, return_index=True, multiprocessing_context="spawn")
    assert sorted(indices(loader)) == list(range(N))


def _in_fork(child) -> str:
    """``repr(child())`` computed in a forked child (bounded by an alarm), reported through a pipe."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        import signal

        signal.alarm(60)
        try:
            os.write(write, repr(child()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        got = f.read()
    os.waitpid(pid, 0)
    return got


def test_forked_child_reopens_storage(s3_root):
    """A child forked after the parent used the S3 client reads through a fresh store (no hang), and
    that store is obstore's (a fresh copy of its runtime), not the s3fs fallback."""
    from hubdask.storage import open_root

    ds = make(s3_root)
    np.testing.assert_array_equal(ds["labels"][:3].read(), [0, 1, 2])
    assert type(open_root(s3_root).store).__name__ == "ObjectStore"
    got = _in_fork(lambda: (hd.load("ml/train", storage=s3_root)["labels"][N - 3:].read().tolist(),
                            type(open_root(s3_root).store).__name__))
    assert got == repr(([N - 3, N - 2, N - 1], "ObjectStore"))
    np.testing.assert_array_equal(ds["labels"][N - 3:].read(), [N - 3, N - 2, N - 1])  # the parent's still works


def test_forked_child_never_frees_the_parents_obstore_objects(s3_root):
    """Freeing an object of the parent's obstore in a forked child runs its native destructor, which
    takes a lock that a runtime thread of the parent may have held at the fork: the child hangs for ever
    (seen in a DataLoader worker at startup). So the child keeps them: the parent's store outlives
    the child's reopening, its reads and a garbage collection."""
    import gc
    import weakref

    from hubdask.storage import open_root

    ds = make(s3_root)
    np.testing.assert_array_equal(ds["labels"][:3].read(), [0, 1, 2])
    parents = weakref.ref(open_root(s3_root).store)
    def child() -> tuple:
        value = hd.load("ml/train", storage=s3_root)["labels"][:2].read().tolist()
        fresh = open_root(s3_root).store
        gc.collect()
        return value, parents() is not None, fresh is not parents()

    assert _in_fork(child) == repr(([0, 1], True, True))


def _client_of_worker(root_url: str, out: str) -> Any:
    def init(worker_id: int) -> None:
        from hubdask.storage import open_root

        with open(f"{out}-{worker_id}", "w") as f:
            f.write(type(open_root(root_url).store).__name__)
    return init


def test_forked_loader_workers_keep_obstore(s3_root, tmp_path):
    ds = make(s3_root)
    loader = ds.pytorch(batch_size=50, num_workers=2, return_index=True,
                        worker_init_fn=_client_of_worker(s3_root, str(tmp_path / "client")))
    assert sorted(indices(loader)) == list(range(N))
    assert [(tmp_path / f"client-{w}").read_text() for w in range(2)] == ["ObjectStore", "ObjectStore"]


def test_bad_arguments(s3_root):
    ds = make(s3_root)
    ds.create_array("short", shape=(10,), dtype="int8")
    with pytest.raises(ValueError, match="different lengths"):
        ds.pytorch()
    with pytest.raises(KeyError, match="nope"):
        ds.pytorch(keys=["images", "nope"])
    with pytest.raises(TypeError, match="set by ds.pytorch"):
        ds.pytorch(keys=["images"], sampler=None)


# --- ranks, lengths, resume, tensors ----------------------------------------------------------------------

M = 280  # 7 blocks of 40 rows: over 2 ranks round-robin blocks gave 4 and 3 batches (a hang at the last step)


def seven_blocks(root: str) -> hd.Dataset:
    images = np.arange(M * 12, dtype=np.float32).reshape(M, 3, 4)
    return hd.dataset("ml/seven", images=dict(data=images, chunks=(40, 3, 4)), labels=dict(data=np.arange(M), chunks=(40,)),
                      storage=root)


def batches_of(loader) -> list[list[int]]:
    out = []
    for batch in loader:
        idx = batch["index"]
        assert torch.equal(batch["labels"], idx) and torch.equal(batch["images"][:, 0, 0], (idx * 12).float())
        out.append(idx.tolist())
    return out


@pytest.mark.parametrize("world, drop_last, per_rank, sizes", [
    (2, False, 140, [40, 40, 40, 20]),
    (2, True, 120, [40, 40, 40]),
    (3, False, 94, [40, 40, 14]),  # 282 samples: the epoch's first two come twice, as DistributedSampler pads
    (3, True, 80, [40, 40]),
])
def test_every_rank_gets_the_same_batches(s3_root, world, drop_last, per_rank, sizes):
    ds = seven_blocks(s3_root)
    seen = []
    for rank in range(world):
        loader = ds.pytorch(batch_size=40, shuffle=True, seed=3, rank=rank, world_size=world, drop_last=drop_last,
                            return_index=True, num_workers=2 if rank == 0 else 0)
        got = batches_of(loader)
        assert [len(b) for b in got] == sizes
        assert len(loader) == len(sizes) and len(loader.dataset) == per_rank == sum(sizes)
        seen += [i for b in got for i in b]
    counts = collections.Counter(seen)
    if drop_last:
        assert len(seen) == world * per_rank and set(counts.values()) == {1}  # each sample at most once
    else:
        assert sorted(counts) == list(range(M)) and sum(counts.values()) - M == world * per_rank - M


def test_ranks_come_from_torch_distributed(s3_root, tmp_path):
    """Two real gloo processes: ranks from torch.distributed, equal batch counts (an all_reduce per batch
    would hang otherwise), every sample exactly once over both."""
    ds = seven_blocks(s3_root)
    ds.tag("v1")
    code = f"""
        import json, sys
        import torch, torch.distributed as dist
        import hubdask as hd
        rank = int(sys.argv[1])
        dist.init_process_group("gloo", init_method="file://{tmp_path}/rendezvous", rank=rank, world_size=2)
        loader = hd.load("ml/seven:v1", storage="{s3_root}").pytorch(batch_size=40, shuffle=True, seed=5,
                                                                    return_index=True)
        got = [b["index"].tolist() for b in loader]
        dist.barrier()
        print(json.dumps({{"len": len(loader), "batches": got}}))
        dist.destroy_process_group()
    """
    import json
    import subprocess
    import sys
    import textwrap

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(r)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in range(2)]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=180)
        finally:
            p.kill()
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert [len(o["batches"]) for o in outs] == [4, 4] and [o["len"] for o in outs] == [4, 4]
    both = [i for o in outs for b in o["batches"] for i in b]
    assert sorted(both) == list(range(M))


@pytest.mark.parametrize("kw, n_items, n_samples", [
    (dict(batch_size=16), 19, N),
    (dict(batch_size=16, drop_last=True), 18, 288),
    (dict(), N, N),
    (dict(batch_size=50, shuffle=True, seed=1, rank=1, world_size=4), 2, 75),
])
def test_len_of_loader_and_dataset(s3_root, kw, n_items, n_samples):
    ds = make(s3_root)
    loader = ds.pytorch(num_workers=2, return_index=True, **kw)
    assert len(loader) == n_items and len(loader.dataset) == n_samples
    items = list(loader)
    assert len(items) == n_items
    assert sum(int(b["index"].numel()) for b in items) == n_samples


@pytest.mark.parametrize("first, then", [(0, 0), (2, 2), (2, 0), (0, 3), (2, 3)])
@pytest.mark.parametrize("seeded", [True, False])
def test_resume_mid_epoch_yields_the_rest_in_order(s3_root, first, then, seeded):
    ds = make(s3_root)
    kw = dict(batch_size=16, shuffle=True, return_index=True, buffer_size=64)
    if seeded:
        kw["seed"] = 11

    def loader(workers):
        return ds.pytorch(num_workers=workers, **kw)

    torch.manual_seed(0)
    a = loader(first)
    a.dataset.set_epoch(2)
    full = [b["index"].tolist() for b in a]
    torch.manual_seed(0)
    b = loader(first)
    b.dataset.set_epoch(2)
    taken = []
    for batch in b:
        taken.append(batch["index"].tolist())
        if len(taken) == 7:
            break
    state = b.state_dict()
    assert state["epoch"] == 2 and state["batches"] == 7
    torch.manual_seed(123)  # another process: another RNG state, the order still comes from the state
    c = loader(then)
    c.load_state_dict(state)
    rest = [x["index"].tolist() for x in c]
    assert taken + rest == full
    assert sorted(i for bt in taken + rest for i in bt) == list(range(N))
    assert c.state_dict()["batches"] == len(c) == 19
    c.dataset.set_epoch(3)  # the next epoch is whole again
    assert sorted(i for x in c for i in x["index"].tolist()) == list(range(N))


def test_resume_of_single_samples_and_persistent_workers(s3_root):
    ds = make(s3_root)
    kw = dict(shuffle=True, seed=2, return_index=True, num_workers=2, persistent_workers=True)
    full = [int(s["index"]) for s in ds.pytorch(**kw)]
    loader = ds.pytorch(**kw)
    taken = [int(s["index"]) for s in itertools.islice(loader, 101)]
    state = loader.state_dict()
    again = [int(s["index"]) for s in ds.pytorch(**kw)]  # its workers are running: the state restarts them
    assert again == full
    loader.load_state_dict(state)
    assert taken + [int(s["index"]) for s in loader] == full
    assert sorted(int(s["index"]) for s in loader) == list(range(N))  # then whole epochs


def test_bad_state_is_refused(s3_root):
    ds = make(s3_root)
    state = ds.pytorch(batch_size=16, shuffle=True, seed=1).state_dict()
    with pytest.raises(ValueError, match="ml/train.*batch_size"):
        ds.pytorch(batch_size=32, shuffle=True, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="ml/train.*not a hubdask loader state"):
        ds.pytorch(batch_size=16).load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="rank=.*world_size="):
        ds.pytorch(rank=1)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        ds.pytorch(rank=2, world_size=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_are_writable_tensors_and_tuples(s3_root, workers, recwarn):
    ds = make(s3_root)
    loader = ds.pytorch(batch_size=50, num_workers=workers, output="tuple")
    for images, labels in loader:
        assert isinstance(images, torch.Tensor) and images.shape[1:] == (3, 4) and labels.dtype == torch.int64
        images.add_(1)
        labels.mul_(-1)  # in place: the batch owns its memory
    assert not [w for w in recwarn.list if "writable" in str(w.message) or "writeable" in str(w.message)]
    again = torch.cat([y for _, y in loader])  # the in-place edits touched no shared block
    assert torch.equal(torch.sort(again).values, torch.arange(N))
    sample = next(iter(ds.pytorch(output="tuple", keys=["labels", "images"], return_index=True)))
    assert isinstance(sample, tuple) and len(sample) == 3 and int(sample[0]) == int(sample[2]) == 0


def test_dataset_arrays_default_to_a_codec_for_training_reads(tmp_path):
    ds = hd.dataset("ml/codec", images=np.zeros((8, 4, 4), np.uint8), labels=np.arange(8), storage=str(tmp_path))
    names = [[type(c).__name__ for c in a._source.zarr().metadata.codecs] for a in ds.arrays.values()]
    assert names == [["BytesCodec", "BloscCodec", "Crc32cCodec"]] * 2
    assert ds["images"]._source.zarr().metadata.codecs[1].cname.value == "lz4"
    z = hd.dataset("ml/zstd", images=dict(data=np.zeros((8, 4), np.uint8), codecs="zstd"), storage=str(tmp_path))
    assert type(z["images"]._source.zarr().metadata.codecs[1]).__name__ == "ZstdCodec"


# --- batches handed from the workers through reused shared memory (integrations/handoff.py) -------------


def check(batch) -> list[int]:
    """The batch's sample ids, after checking that its rows are those samples' values."""
    idx = batch["index"]
    assert torch.equal(batch["labels"], idx)
    assert torch.equal(batch["images"], (idx[:, None, None] * 12 + torch.arange(12).reshape(3, 4)).float())
    return idx.tolist()


def test_held_batches_are_never_overwritten_by_later_ones(s3_root):
    """Every batch kept by the loop (all of them, or every third while the rest are dropped) keeps its
    values while the workers go on filling memory freed by the dropped ones."""
    ds = make(s3_root)
    loader = ds.pytorch(batch_size=4, shuffle=True, num_workers=2, return_index=True, persistent_workers=True)
    kept = list(loader)
    assert sorted(i for b in kept for i in check(b)) == list(range(N))
    del kept
    some = [b for i, b in enumerate(loader) if i % 3 == 0]  # the others are freed at once and reused
    assert len(some) == 25 and len({i for b in some for i in check(b)}) == 100


def test_freed_batch_memory_is_reused(s3_root):
    """75 batches dropped one by one travel in a few memory segments per worker, each mapped once here."""
    from hubdask.integrations import handoff

    ds = make(s3_root)
    before = set(handoff._MAPS)
    seen = []
    for batch in ds.pytorch(batch_size=4, num_workers=2, return_index=True):
        seen += check(batch)
    assert sorted(seen) == list(range(N))
    per_worker = collections.Counter(pid for pid, _ in set(handoff._MAPS) - before)
    assert len(per_worker) == 2 and max(per_worker.values()) <= 8, per_worker


def _copy_in_worker(batch: dict) -> dict:
    """A collate_fn copying the batch in the worker; it reports how many segments the worker has made."""
    from hubdask.integrations import handoff

    out = {k: v.clone() for k, v in batch.items()}
    out["segments"] = len(handoff._POOLS[os.getpid()].segments)
    return out


def test_batches_copied_in_the_worker_free_their_memory(s3_root):
    """A batch that never reaches the loop as shared memory (the collate_fn copies it) frees its segment
    in the worker: values right, a few segments for 75 batches."""
    ds = make(s3_root)
    batches = list(ds.pytorch(batch_size=4, num_workers=2, return_index=True, collate_fn=_copy_in_worker))
    assert sorted(i for b in batches for i in check(b)) == list(range(N))
    assert max(b["segments"] for b in batches) <= 4


def test_without_memfd_batches_go_through_torch_shared_memory(s3_root, monkeypatch):
    from hubdask.integrations import handoff

    monkeypatch.setattr(handoff, "available", lambda: False)  # the forked workers inherit it
    ds = make(s3_root)
    before = set(handoff._MAPS)
    batches = list(ds.pytorch(batch_size=16, shuffle=True, num_workers=2, return_index=True))
    assert sorted(i for b in batches for i in check(b)) == list(range(N))
    assert set(handoff._MAPS) == before


# --- memory a worker holds: rows in reused slots (stream._Rows), blocks in reused buffers (stream.Spares)


def test_rows_are_held_in_reused_slots_and_blocks_in_reused_buffers(s3_root, monkeypatch):
    """A block's buffer is reused by the next read only once its rows are copied out, and a slot only
    once its sample is served: a shuffle buffer spanning blocks, a wide read-ahead, the last rank's
    share wrapping to the start of the epoch, every sample's values right. An epoch of 10 blocks reads
    into a few buffers and holds its rows in one allocation of slots (never grown)."""
    from hubdask.integrations import stream

    taken, grown = [], []
    real_take, real_grow = stream.Spares.take, stream._Rows._grow

    def take(self, key, shape, dtype):
        buf = real_take(self, key, shape, dtype)
        if key == "images" and shape[0] == 32:
            taken.append(id(buf))
        return buf

    def grow(self, block, need):
        grown.append(need)
        return real_grow(self, block, need)

    monkeypatch.setattr(stream.Spares, "take", take)
    monkeypatch.setattr(stream._Rows, "_grow", grow)
    ds = make(s3_root)
    loader = ds.pytorch(batch_size=5, shuffle=True, seed=3, buffer_size=40, prefetch=8, return_index=True,
                        rank=6, world_size=7)
    seen = [i for batch in loader for i in check(batch)]
    assert len(seen) == 43 and len(set(seen)) == 43  # 300 = 6 * 43 + 42: the last share wraps by one
    taken.clear()
    grown.clear()
    seen = [i for batch in ds.pytorch(batch_size=8, shuffle=True, seed=4, buffer_size=48, prefetch=2,
                                      return_index=True) for i in check(batch)]
    assert sorted(seen) == list(range(N))
    assert len(taken) == 9 and len(set(taken)) <= 4, (len(taken), len(set(taken)))
    assert len(grown) == 1, grown  # the slots, made once for the buffer and three blocks
