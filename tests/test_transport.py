"""The batched dask paths on a remote root (moto S3): group read tasks, one open-node listing per
compute, hd.store's big write tasks with one seal check per job; each against a second actor acting at
the worst instant."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

import hubdask as hd
from hubdask import daskgraph, write
from hubdask.versioning import store as store_module

from helpers import chunk_blocks, chunk_reads


def _count_calls(monkeypatch: pytest.MonkeyPatch, module, name: str) -> list:
    calls: list = []
    real = getattr(module, name)

    async def counted(*args, **kwargs):
        calls.append(args)
        return await real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_group_reads_see_a_write_that_returned_after_the_graph_was_built(s3_root, monkeypatch):
    ref = np.arange(64 * 6, dtype="int32").reshape(64, 6)
    a = hd.array(ref.shape, "t/a", dtype="int32", chunks=(4, 6), storage=s3_root)
    a[:] = ref
    d = hd.load("t/a", storage=s3_root)[::-1].to_dask()  # built at the head now; flipped: picks reorder
    assert chunk_blocks(d) == 16 and chunk_reads(d) == 16
    groups = [k for k in dict(d.__dask_graph__()) if isinstance(k, tuple) and k[0].endswith("-group")]
    assert 1 < len(groups) < 16  # several chunks per read task
    a[8:12] = -5  # a second writer: returns after the graph was built, before it runs
    ref[8:12] = -5
    lists = _count_calls(monkeypatch, store_module, "node_versions")
    per_chunk = _count_calls(monkeypatch, store_module, "newest_version")
    np.testing.assert_array_equal(d.compute(scheduler="threads"), ref[::-1])
    # the open node listed once for the whole compute (not at all here: this process is its only writer)
    assert len(lists) <= 1 and per_chunk == []


def test_group_reads_of_a_commit_on_a_distributed_cluster(s3_root):
    import distributed

    ref = np.random.default_rng(1).integers(0, 100, (50, 30)).astype("int16")
    a = hd.array(ref.shape, "t/c", dtype="int16", chunks=(4, 8), fill_value=3, storage=s3_root)
    a[:24] = ref[:24]
    ref[24:] = 3
    cid = a.commit("half")
    a[:] = 0  # later writes: never seen at the commit
    v = hd.load(f"t/c:{cid}", storage=s3_root)
    sel = (slice(2, 47, 2), np.array([29, 1, 5, 17]))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as lc, distributed.Client(lc):
        np.testing.assert_array_equal(v[sel].compute(), ref[2:47:2][:, [29, 1, 5, 17]])
        np.testing.assert_array_equal(v.to_dask().compute(), ref)
    assert chunk_reads(v.to_dask()) == 6 * 4  # the 7 unwritten rows of chunks are fill values, never read


def test_store_repeats_the_job_when_a_commit_seals_the_node_mid_store(s3_root, monkeypatch):
    ref = np.random.default_rng(2).integers(0, 1000, (64, 16)).astype("int32")
    a = hd.array(ref.shape, "t/s", dtype="int32", chunks=(4, 16), storage=s3_root)
    a[:] = 1
    monkeypatch.setattr(write, "WRITE_TASK_BYTES", 4 * 16 * 4 * 4)  # 4 chunks per write task: 4 tasks
    committed: list = []
    real = write.write_once

    def then_commit(src, *args, **kwargs):
        created = real(src, *args, **kwargs)
        if not committed:  # a second actor commits right after the first block landed
            other = hd.load("t/s", storage=s3_root)
            committed.append((other.commit("mid-store"), other.read()))
        return created

    monkeypatch.setattr(write, "write_once", then_commit)
    hd.store(da.from_array(ref, chunks=(4, 16)), a, progress=False)
    np.testing.assert_array_equal(hd.load("t/s", storage=s3_root).read(), ref)  # every block on the branch
    cid, seen = committed[0]
    np.testing.assert_array_equal(hd.load(f"t/s:{cid}", storage=s3_root).read(), seen)  # the commit unchanged


def test_a_lazy_store_whose_node_was_sealed_raises_instead_of_losing_writes(s3_root, monkeypatch):
    a = hd.array((32, 8), "t/l", dtype="int32", chunks=(4, 8), storage=s3_root)
    monkeypatch.setattr(write, "WRITE_TASK_BYTES", 4 * 8 * 4 * 2)
    job = hd.store(da.ones((32, 8), chunks=(4, 8), dtype="int32"), a, compute=False)
    real = write.write_once
    done: list = []

    def then_commit(src, *args, **kwargs):
        created = real(src, *args, **kwargs)
        if not done:
            done.append(hd.load("t/l", storage=s3_root).commit("mid-store"))
        return created

    monkeypatch.setattr(write, "write_once", then_commit)
    with pytest.raises(write.SealedWhileStoring, match="t/l.*store again"):
        job.compute(scheduler="threads")


def test_write_tasks_on_remote_roots_hold_about_write_task_bytes():
    assert write.block_group(((256,) * 64, (1024,)), (256, 1024), 16 * 2**20, 4) == (16, 1)
    assert write.block_group(((10,) * 4, (100,) * 50), (10, 100), 10 * 100 * 8 * 10, 8) == (1, 10)
    assert write.block_group(((256,) * 64, (1024,)), (256, 1024)) == (1, 1)  # local: the source's blocks
    per_group = min(32, 64 // daskgraph.MIN_GROUPS)  # at least MIN_GROUPS read tasks, at most 32 chunks each
    assert daskgraph._group_extent([64, 1], 2**20) == [per_group, 1]
    assert daskgraph._group_extent([3, 5], 2**20) == [1, min(5, -(-15 // daskgraph.MIN_GROUPS))]


def test_loading_a_tag_sends_its_get_beside_the_branch_list(s3_root, monkeypatch):
    import threading

    from hubdask.versioning import refs

    a = hd.array((8, 8), "t/g", dtype="int8", chunks=(4, 8), storage=s3_root)
    a[:] = 7
    a.tag("v1")
    tag_asked, lists = threading.Event(), []
    real_list, real_tag = refs._list, refs.read_tag

    def waiting_list(*args):
        lists.append(tag_asked.wait(10))  # sequential lookups would ask for the tag only after this LIST
        return real_list(*args)

    def read_tag(*args):
        tag_asked.set()
        return real_tag(*args)

    monkeypatch.setattr(refs, "_list", waiting_list)
    monkeypatch.setattr(refs, "read_tag", read_tag)
    v = hd.load("t/g:v1", storage=s3_root)
    assert lists and all(lists)
    assert (v.read() == 7).all()
    with pytest.raises(hd.NotFoundError, match="t/g.*no branch, tag or commit 'v9'"):
        hd.load("t/g:v9", storage=s3_root)
    with pytest.raises(hd.NotFoundError, match="no dataset 't/none'"):
        hd.load("t/none:v1", storage=s3_root)
