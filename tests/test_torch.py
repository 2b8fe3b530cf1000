"""PyTorch streaming over S3 (moto's server): exactly once per epoch with workers, seeded order, tags."""

from __future__ import annotations

import collections
import os

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


def test_forked_child_reopens_storage(s3_root):
    """A child forked after the parent used the S3 client reads through a fresh store (no hang)."""
    ds = make(s3_root)
    np.testing.assert_array_equal(ds["labels"][:3].read(), [0, 1, 2])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: bounded by an alarm, reports through the pipe
        import signal

        signal.alarm(60)
        try:
            value = hd.load("ml/train", storage=s3_root)["labels"][N - 3:].read().tolist()
            os.write(write, repr(value).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        got = f.read()
    os.waitpid(pid, 0)
    assert got == repr([N - 3, N - 2, N - 1])


def test_bad_arguments(s3_root):
    ds = make(s3_root)
    ds.create_array("short", shape=(10,), dtype="int8")
    with pytest.raises(ValueError, match="different lengths"):
        ds.pytorch()
    with pytest.raises(KeyError, match="nope"):
        ds.pytorch(keys=["images", "nope"])
    with pytest.raises(TypeError, match="set by ds.pytorch"):
        ds.pytorch(keys=["images"], sampler=None)
