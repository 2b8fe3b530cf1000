"""Whole-array work in bounded waves: exact reductions, map_blocks, any scheduler, petabyte shapes."""

from __future__ import annotations

import math
from fractions import Fraction

import dask
import numpy as np
import pytest
from dask.callbacks import Callback

import hubdask as hd
from hubdask import compute


class GraphSizes(Callback):
    """Records the number of tasks of every graph dask runs."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def _start(self, dsk) -> None:
        self.sizes.append(len(dsk))


def test_petabyte_sum_with_100_written_chunks_is_exact(tmp_path):
    a = hd.array((10**10, 512, 512, 3), "pb/big", dtype="uint8", storage=str(tmp_path))
    c = a.chunks[0]
    rng = np.random.default_rng(0)
    frames = sorted(int(i) * c + int(rng.integers(0, c)) for i in rng.choice(10**10 // c, 100, replace=False))
    expected = 0
    for i in frames:
        img = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
        a[i] = img
        expected += int(img.sum(dtype=np.uint64))
    x = hd.load("pb/big", storage=str(tmp_path))
    with GraphSizes() as g:
        total = x.sum().compute()
    assert int(total) == expected
    assert max(g.sizes) < 100  # a few tasks of several chunks each, never one per chunk of the array
    assert x.mean().compute() == float(Fraction(expected, x.size))  # one correctly rounded division
    # a view: the first written frame and its neighbours, with a step
    i = frames[0]
    v = x[i:i + 2, 10:300:7, ::-1]
    ref = np.zeros((2, 42, 512, 3), np.uint8)
    ref[0] = np.asarray(x[i, 10:300:7, ::-1])
    if frames[1] == i + 1:
        ref[1] = np.asarray(x[i + 1, 10:300:7, ::-1])
    assert int(v.sum().compute()) == int(ref.sum(dtype=np.uint64))


@pytest.mark.parametrize("dtype,fill", [("uint8", 3), ("int16", -7), ("int64", 2**62), ("float32", 0.5),
                                         ("bool", True)])
def test_reductions_match_numpy_with_unwritten_chunks(tmp_path, dtype, fill):
    shape, chunks = (23, 17, 5), (4, 6, 5)
    a = hd.array(shape, "r/x", dtype=dtype, chunks=chunks, fill_value=fill, storage=str(tmp_path))
    rng = np.random.default_rng(1)
    ref = np.full(shape, fill, dtype)
    if dtype == "bool":
        block = rng.integers(0, 2, (9, 17, 5)).astype(bool)
    elif dtype.startswith("int64"):
        block = rng.integers(2**62 - 1000, 2**62, (9, 17, 5), dtype=np.int64)
    else:
        block = (rng.random((9, 17, 5)) * 100).astype(dtype)
    a[2:11] = block  # some chunks whole, some partial, most of the array never written
    ref[2:11] = block
    x = hd.load("r/x", storage=str(tmp_path))
    for view, r in ((x, ref), (x[::-2, 3, 1:], ref[::-2, 3, 1:]), (x[5:9, ::4], ref[5:9, ::4])):
        exact_sum = sum(int(v) for v in r.ravel().tolist()) if dtype != "float32" else None
        got = view.sum().compute()
        if exact_sum is not None:
            assert int(got) == exact_sum  # never wraps, even for int64 beyond 2**63
        else:
            assert got == pytest.approx(float(r.astype(np.float64).sum()), rel=1e-12)
        assert view.min().compute() == r.min() and view.max().compute() == r.max()
        rf = r.astype(np.float64)
        if exact_sum is not None:  # exact references: float64 cannot hold int64 values near 2**62
            n, vals = r.size, [int(v) for v in r.ravel().tolist()]
            s2 = sum(v * v for v in vals)
            assert view.mean().compute() == float(Fraction(exact_sum, n))
            for ddof in (0, 1):
                var = Fraction(n * s2 - exact_sum * exact_sum, n * (n - ddof))
                assert view.std(ddof=ddof).compute() == pytest.approx(math.sqrt(var), rel=1e-15, abs=1e-300)
        else:
            # float32 results (numpy's result dtype), computed in float64 then rounded once
            assert view.mean().compute() == np.float32(rf.mean())
            assert view.std().compute() == pytest.approx(rf.std(), rel=1e-6)
            assert view.std(ddof=1).compute() == pytest.approx(rf.std(ddof=1), rel=1e-6)


def test_waves_are_bounded_and_run_on_the_threaded_scheduler(tmp_path):
    data = np.random.default_rng(2).integers(0, 100, (40, 8), dtype=np.int32)
    a = hd.array(data.shape, "w/x", dtype="int32", chunks=(1, 8), storage=str(tmp_path))
    a[...] = data
    x = hd.load("w/x", storage=str(tmp_path))
    with GraphSizes() as g:
        total = compute.reduce(x, "sum", tasks_per_wave=3, scheduler="threads")
    assert total == int(data.sum())
    # 40 chunks of 32 bytes fit one task; force more tasks by shrinking the task size
    old = compute.TASK_BYTES
    compute.TASK_BYTES = 32 * 4  # four chunks per task: ten tasks, waves of three
    try:
        with GraphSizes() as g:
            assert compute.reduce(x, "sum", tasks_per_wave=3, scheduler="threads") == int(data.sum())
    finally:
        compute.TASK_BYTES = old
    assert len(g.sizes) == 4 and max(g.sizes) <= 3


def test_reduction_is_a_dask_result(tmp_path):
    a = hd.array((10, 10), "d/x", dtype="float64", chunks=(5, 5), storage=str(tmp_path))
    a[:5] = 2.0
    lazy = a.mean()
    assert dask.is_dask_collection(lazy) and len(lazy.__dask_graph__()) <= 2
    (m,) = dask.compute(lazy)
    assert m == 1.0
    assert a.sum(axis=0).compute().tolist() == [10.0] * 10  # with an axis: dask.array's reduction


def test_map_blocks_writes_results_and_skips_unwritten_chunks(tmp_path):
    root = str(tmp_path)
    a = hd.array((30, 12), "m/src", dtype="int16", chunks=(4, 6), storage=root)
    data = np.arange(8 * 12, dtype=np.int16).reshape(8, 12)
    a[4:12] = data
    out = hd.map_blocks(lambda b: b * 2, a, "m/double", progress=False)
    ref = np.zeros((30, 12), np.int16)
    ref[4:12] = data * 2
    np.testing.assert_array_equal(np.asarray(hd.load("m/double", storage=root)), ref)
    written = compute.stored_chunks(out._fresh_source(), 2)
    assert written == {(1, 0), (1, 1), (2, 0), (2, 1)}  # func(0) == 0: the unwritten chunks cost nothing
    # func(fill) != out's fill: every chunk is written
    plus = hd.map_blocks(lambda b: b + 1, a, "m/plus", progress=False)
    np.testing.assert_array_equal(np.asarray(plus), np.where(ref == 0, 1, ref // 2 + 1))
    # a view with a step into an existing array
    view = hd.load("m/src", storage=root)[2:30:3, ::5]
    target = hd.array(view.shape, "m/view", dtype="int16", chunks=(2, 3), storage=root)
    hd.map_blocks(np.negative, view, target, progress=False)
    full = np.zeros((30, 12), np.int16)
    full[4:12] = data
    np.testing.assert_array_equal(np.asarray(hd.load("m/view", storage=root)), -full[2:30:3, ::5])


def test_map_blocks_refuses_bad_output(tmp_path):
    a = hd.array((8, 8), "m/a", dtype="uint8", chunks=(4, 4), storage=str(tmp_path))
    with pytest.raises(TypeError, match="out="):
        hd.map_blocks(lambda b: b, a)
    small = hd.array((4, 8), "m/small", dtype="uint8", chunks=(4, 4), storage=str(tmp_path))
    with pytest.raises(ValueError, match="shape"):
        hd.map_blocks(lambda b: b, a, small)


def test_waves_on_a_distributed_cluster_of_processes(tmp_path):
    distributed = pytest.importorskip("distributed")
    data = np.random.default_rng(3).integers(0, 255, (64, 32, 32), dtype=np.uint8)
    a = hd.array(data.shape, "dist/x", dtype="uint8", chunks=(4, 32, 32), storage=str(tmp_path))
    a[...] = data
    a.commit("data")
    x = hd.load("dist/x", storage=str(tmp_path))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        old = compute.TASK_BYTES
        compute.TASK_BYTES = 4 * 32 * 32 * 3  # three chunks per task: six tasks over two workers
        try:
            assert compute.reduce(x, "sum", tasks_per_wave=2) == int(data.sum(dtype=np.int64))
            assert x.std().compute() == pytest.approx(data.astype(np.float64).std(), rel=1e-12)
        finally:
            compute.TASK_BYTES = old
