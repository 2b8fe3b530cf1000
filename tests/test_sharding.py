"""zarr v3 sharding: the shard is the storage object (keys, fences, commits, gc, dask tasks), the inner
chunk the read unit; shard bytes are zarr's own; concurrent partial writers into one shard lose nothing."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import dask
import distributed
import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore, MemoryStore

import hubdask as hd
from hubdask import chunkio, spec
from hubdask.cli import main

from helpers import chunk_blocks, chunk_reads, run_python, snapshot


def _zarr_sharded(store, shape=(12, 10), chunks=(3, 5), shards=(6, 10), dtype="int32", codecs="zstd"):
    return zarr.create_array(store, shape=shape, chunks=chunks, shards=shards, dtype=dtype, fill_value=0,
                             compressors=spec.compressors(codecs), zarr_format=3)


@pytest.mark.parametrize("codecs", ["zstd", "lz4", "none"])
def test_shard_bytes_are_zarrs_both_ways(codecs):
    ref = np.arange(120, dtype="int32").reshape(12, 10)
    ref[0:3, 0:5] = 0  # one empty inner chunk: left out of the shard, as zarr does
    z = _zarr_sharded(MemoryStore(), codecs=codecs)
    z[:] = ref
    codec = chunkio.LeanCodec.from_metadata(z.metadata)
    assert codec is not None
    raw = zarr.core.sync.sync(z.store.get("c/0/0", zarr.core.buffer.default_buffer_prototype())).to_bytes()
    out = np.empty((6, 10), "int32")
    codec.decode(raw, out)
    np.testing.assert_array_equal(out, ref[:6])
    other = ref[6:] * 7
    z2 = _zarr_sharded(MemoryStore(), codecs=codecs)
    zarr.core.sync.sync(z2.store.set("c/1/0", zarr.core.buffer.default_buffer_prototype().buffer.from_bytes(
        codec.encode(other))))
    np.testing.assert_array_equal(z2[6:], other)
    np.testing.assert_array_equal(z2[:6], 0)
    damaged = bytearray(raw)
    damaged[-6] ^= 1  # inside the index
    with pytest.raises(ValueError, match="crc32c"):
        codec.decode(bytes(damaged), out)


def test_creation_checks_and_auto(tmp_path):
    root = str(tmp_path / "r")
    before = snapshot(root)
    with pytest.raises(ValueError, match=r"'x/bad'.*shards \(5, 10\) must be a multiple of chunks \(2, 10\)"):
        hd.array((20, 10), "x/bad", chunks=(2, 10), shards=(5, 10), storage=root)
    with pytest.raises(ValueError, match=r"'x/bad'.*shards \(4,\) has 1 axes"):
        hd.array((20, 10), "x/bad", chunks=(2, 10), shards=(4,), storage=root)
    with pytest.raises(ValueError, match=r"'x/bad'.*'big'"):
        hd.array((20, 10), "x/bad", chunks=(2, 10), shards="big", storage=root)
    assert snapshot(root) == before
    a = hd.array((1000, 64, 64), "x/auto", dtype="uint8", chunks=(1, 64, 64), shards="auto", storage=root)
    assert a.chunks == (1, 64, 64) and a.shards == (1000, 64, 64)  # 4 MiB: under the 128 MiB target, whole
    assert spec.ArraySpec.make("w", "", (10**6, 256, 256), "uint8", (1, 256, 256), shards="auto").shards == \
        (2048, 256, 256)
    plain = hd.array((10,), "x/plain", chunks=(5,), storage=root)
    assert plain.shards is None and plain.chunks == (5,)
    meta = json.loads((Path(root) / "x/auto/@hub").glob("nodes/*/zarr.json@*").__next__().read_bytes())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [1000, 64, 64]
    assert meta["codecs"][0]["name"] == "sharding_indexed"


def test_one_task_per_shard_and_byte_exact_reads(root):
    ref = np.random.default_rng(0).integers(0, 100, (40, 30)).astype("int16")
    a = hd.array(ref.shape, "s/a", dtype="int16", chunks=(5, 10), shards=(10, 30), storage=root)
    a[:] = ref
    a[3, 4] = -1
    ref[3, 4] = -1
    a[12:17, 5:25] = 7  # partial inner chunks of a partial shard
    ref[12:17, 5:25] = 7
    v = hd.load("s/a", storage=root)
    np.testing.assert_array_equal(v.read(), ref)
    np.testing.assert_array_equal(v[2:13, ::3].compute(), ref[2:13, ::3])
    rows, cols = np.array([17, 2, 3, 38]), np.array([29, 0, 11])
    np.testing.assert_array_equal(v[rows][:, cols].read(), ref[rows][:, cols])
    a[np.array([1, 11, 39])] = 3  # index-array writes: one read-modify-write per shard touched
    ref[[1, 11, 39]] = 3
    np.testing.assert_array_equal(hd.load("s/a", storage=root).read(), ref)
    d = v[1:9, 2:5].to_dask()  # inside one shard: one task
    assert chunk_reads(d) == 1
    assert v.to_dask().chunks == ((10,) * 4, (30,))
    assert chunk_blocks(v[5:25].to_dask()) == 3 and chunk_reads(v[5:25].to_dask()) == 3
    np.testing.assert_array_equal(v[5:25].compute(), ref[5:25])
    assert v.sum().compute() == ref.sum()


def test_store_plans_one_task_per_shard(tmp_path):
    import dask.array as da

    ref = np.arange(37 * 29, dtype="int32").reshape(37, 29)
    out = hd.store(da.from_array(ref, chunks=(7, 11)), "s/out", storage=str(tmp_path), chunks=(4, 29),
                   shards=(8, 29))
    assert out.chunks == (4, 29) and out.shards == (8, 29)
    np.testing.assert_array_equal(hd.load("s/out", storage=str(tmp_path)).read(), ref)
    keys = [p.name for p in (tmp_path / "s/out/@hub/nodes").glob("*/c/*/*")]
    assert len(keys) == 5  # one object per shard (5 shards of 8 rows), not per inner chunk


def _writer(name: str, root: str, rows: list[int]) -> None:
    a = hd.load(name, storage=root)
    for r in rows:
        a[r, :] = r + 1


def test_concurrent_partial_writers_into_one_shard_lose_nothing(tmp_path):
    """Threads, processes and dask workers each write their own rows of one shard (every write a
    read-modify-write of the whole shard): every row lands."""
    root = str(tmp_path / "r")
    hd.array((64, 8), "c/one", dtype="int32", chunks=(4, 8), shards=(64, 8), storage=root)
    threads = [threading.Thread(target=_writer, args=("c/one", root, list(range(i, 24, 6)))) for i in range(6)]
    for t in threads:
        t.start()
    procs = [run_python(f"import hubdask as hd\na = hd.load('c/one', storage={root!r})\n"
                        "for r in range(24, 48): a[r, :] = r + 1")]  # while the threads write
    for t in threads:
        t.join()
    assert all(p.returncode == 0 for p in procs), [p.stderr for p in procs]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        tasks = [dask.delayed(_writer)("c/one", root, list(range(r, 64, 4))) for r in range(48, 52)]
        dask.compute(*tasks)
    out = hd.load("c/one", storage=root).read()
    np.testing.assert_array_equal(out, np.repeat(np.arange(1, 65, dtype="int32")[:, None], 8, axis=1))


def test_concurrent_processes_into_one_shard(tmp_path):
    import subprocess
    import sys
    import textwrap

    root = str(tmp_path / "r")
    hd.array((16, 4), "c/p", dtype="int32", chunks=(2, 4), shards=(16, 4), storage=root)
    code = textwrap.dedent(f"""
        import sys, hubdask as hd
        a = hd.load('c/p', storage={root!r})
        k = int(sys.argv[1])
        for r in range(k, 16, 4):
            a[r, :] = r + 1
    """)
    env_path = str(Path(__file__).resolve().parents[1])
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k)], env={**__import__("os").environ,
                              "PYTHONPATH": env_path}, stderr=subprocess.PIPE) for k in range(4)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    np.testing.assert_array_equal(hd.load("c/p", storage=root).read(),
                                  np.repeat(np.arange(1, 17, dtype="int32")[:, None], 4, axis=1))


def test_commit_time_travel_merge_inside_a_shard(root):
    a = hd.array((8, 8), "m/a", dtype="int8", chunks=(2, 2), shards=(8, 8), storage=root)
    a[:] = 1
    base = a.commit("base")
    b = a.branch("other")
    a[0, 0] = 5
    b[7, 7] = 6  # the same shard, other elements: merged element-wise
    a.commit("ours")
    b.commit("theirs")
    a.merge("other")
    out = hd.load("m/a", storage=root).read()
    want = np.ones((8, 8), "int8")
    want[0, 0], want[7, 7] = 5, 6
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(hd.load(f"m/a:{base}", storage=root).read(), np.ones((8, 8), "int8"))
    b[0, 0] = 9
    b.commit("clash")
    with pytest.raises(hd.ConflictError, match="c/0/0"):
        a.merge("other")


def test_gc_export_cli_info(tmp_path, capsys, monkeypatch):
    root = str(tmp_path / "r")
    a = hd.array((20, 6), "e/a", dtype="float32", chunks=(5, 3), shards=(10, 6), storage=root)
    ref = np.arange(120, dtype="float32").reshape(20, 6)
    a[:] = ref
    keep = a.commit("one")
    a[0:10] = -1
    a.commit("two")
    assert len(hd.gc("e/a", storage=root, grace=0)) == 0
    hd.export(f"e/a:{keep}", str(tmp_path / "out.zarr"), storage=root)
    z = zarr.open_array(LocalStore(str(tmp_path / "out.zarr")), mode="r")
    assert z.chunks == (5, 3) and z.shards == (10, 6)
    np.testing.assert_array_equal(z[:], ref)
    hd.export(hd.load(f"e/a:{keep}", storage=root)[3:17, 1:], str(tmp_path / "view.zarr"))
    zv = zarr.open_array(LocalStore(str(tmp_path / "view.zarr")), mode="r")
    np.testing.assert_array_equal(zv[:], ref[3:17, 1:])
    monkeypatch.setenv("HUBDASK_ROOT", root)
    assert main(["info", "e/a"]) == 0
    out = capsys.readouterr().out
    assert "shards" in out and "10 x 6" in out and "5 x 3" in out
    assert "shards=(10, 6)" in repr(hd.load("e/a", storage=root))
    html = hd.load("e/a", storage=root)._repr_html_()
    assert "shards" in html


def test_petabyte_walkthrough_sharded(root):
    big = hd.array((10**10, 512, 512, 3), "pb/big", dtype="uint8", chunks=(1, 512, 512, 3),
                   shards=(1024, 512, 512, 3), storage=root)
    assert big.chunks == (1, 512, 512, 3) and big.shards == (1024, 512, 512, 3)
    img = (np.random.default_rng(0).random((512, 512, 3)) * 255).astype("uint8")
    big[1, :, :, :] = img
    x = hd.load("pb/big", storage=root)
    view = x[0:10, 100:200, 100:200]
    assert chunk_reads(view.to_dask()) == 1  # one shard touched: one read
    assert chunk_reads(x[1000:1030].to_dask()) <= 2  # two shards
    np.testing.assert_array_equal(x[1].read(), img)
    np.testing.assert_array_equal(x[0].read(), np.zeros((512, 512, 3), "uint8"))


def test_small_reads_fetch_only_their_inner_chunks_by_range(s3_root, monkeypatch):
    from hubdask.storage import Root

    ref = np.random.default_rng(5).integers(0, 255, (32, 64, 64)).astype("uint8")
    a = hd.array(ref.shape, "r/a", dtype="uint8", chunks=(1, 64, 64), shards=(32, 64, 64), codecs="none",
                 storage=s3_root)
    a[:] = ref
    a.commit("data")
    calls = {"whole": 0, "ranges": [], "bytes": 0}
    whole, ranged = Root.fetch_async, Root.fetch_range_async

    async def count_whole(self, key):
        calls["whole"] += "/c/" in key
        return await whole(self, key)

    async def count_ranged(self, key, start, end):
        out = await ranged(self, key, start, end)
        calls["ranges"].append((start, end))
        calls["bytes"] += len(out)
        return out

    monkeypatch.setattr(Root, "fetch_async", count_whole)
    monkeypatch.setattr(Root, "fetch_range_async", count_ranged)
    x = hd.load("r/a", storage=s3_root, cache=False)
    np.testing.assert_array_equal(x[5, 10:20].read(), ref[5, 10:20])
    assert calls["whole"] == 0 and len(calls["ranges"]) == 2  # the index, then one inner chunk
    assert calls["bytes"] < ref[0].nbytes + 1024  # one inner chunk of 32 (and the index)
    calls["ranges"].clear()
    np.testing.assert_array_equal(x[6:9].read(), ref[6:9])
    assert len(calls["ranges"]) == 2  # three adjacent inner chunks: one coalesced range
    np.testing.assert_array_equal(x.read(), ref)  # the whole shard: one plain GET
    assert calls["whole"] == 1


def test_dataset_arrays_can_be_sharded(tmp_path):
    root = str(tmp_path / "r")
    labels = np.arange(12, dtype="int64")
    ds = hd.dataset("d/s", storage=root, images=dict(shape=(12, 8, 8), dtype="uint8", chunks=(1, 8, 8),
                                                    shards=(4, 8, 8)), labels=labels)
    assert ds["images"].chunks == (1, 8, 8) and ds["images"].shards == (4, 8, 8) and ds["labels"].shards is None
    ds["images"][5] = 9
    np.testing.assert_array_equal(hd.load("d/s", storage=root)["images"][4:6].read()[:, 0, 0], [0, 9])
    with pytest.raises(ValueError, match=r"'d/t'.*array 'images'.*multiple of chunks"):
        hd.dataset("d/t", storage=root, images=dict(shape=(12, 8), dtype="uint8", chunks=(2, 8), shards=(3, 8)))
