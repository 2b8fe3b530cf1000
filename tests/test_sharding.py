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
from hubdask import shards as shards_module
from hubdask.cli import main
from hubdask.storage import open_root

from helpers import chunk_blocks, chunk_reads, committed_object, run_python, snapshot


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


def _inner_bytes(a, raw: bytes) -> list[bytes | None]:
    """Each inner chunk's encoded bytes in shard ``raw`` (None: empty), in the index's order."""
    codec = chunkio.LeanCodec.from_metadata(a.frozen_view.source.zarr().metadata)
    return [None if off == shards_module.EMPTY else raw[int(off):int(off + nb)] for off, nb in codec.index(raw)]


def test_a_partial_write_of_a_shard_keeps_the_untouched_inner_chunks_bytes(tmp_path, monkeypatch):
    """Only the inner chunks a write touches are re-encoded: every other one keeps its exact bytes
    (spliced from the old shard), the index is rewritten to match."""
    root = str(tmp_path / "r")
    ref = np.random.default_rng(3).integers(0, 9, (16, 12)).astype("int16")
    a = hd.array(ref.shape, "b/a", dtype="int16", chunks=(4, 4), shards=(16, 12), storage=root)
    a[:] = ref
    first = a.commit("one")
    encoded = []
    encode = chunkio.LeanCodec.encode
    monkeypatch.setattr(chunkio.LeanCodec, "encode", lambda self, chunk: encoded.append(1) or encode(self, chunk))
    a[5:7, 4:6] = -3  # inside inner chunk (1, 1) only
    a[15, 11] = -4  # the last inner chunk (3, 2)
    assert len(encoded) == 2  # one inner chunk re-encoded per write, not the shard's 12
    ref[5:7, 4:6], ref[15, 11] = -3, -4
    second = a.commit("two")
    old = open_root(root).get(committed_object(a, first, "c/0/0"))
    new = open_root(root).get(committed_object(a, second, "c/0/0"))
    before, after = _inner_bytes(a, old), _inner_bytes(a, new)
    touched = {1 * 3 + 1, 3 * 3 + 2}
    assert all(after[i] == before[i] for i in range(12) if i not in touched)
    assert all(after[i] != before[i] for i in touched)
    np.testing.assert_array_equal(hd.load("b/a", storage=root).read(), ref)
    a[0:4, 0:4] = 0  # an inner chunk back to the fill value: left out of the shard, as zarr does
    assert _inner_bytes(a, open_root(root).get(committed_object(a, a.commit("three"), "c/0/0")))[0] is None


def _writer(name: str, root: str, rows: list[int]) -> None:
    a = hd.load(name, storage=root)
    for r in rows:
        a[r, :] = r + 1


def test_concurrent_partial_writers_into_one_shard_lose_nothing(tmp_path):
    """Threads, a process and dask workers, all at once, each write their own rows of one shard (every
    write a read-modify-write of the whole shard): every row lands."""
    root = str(tmp_path / "r")
    hd.array((64, 8), "c/one", dtype="int32", chunks=(4, 8), shards=(64, 8), storage=root)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        tasks = [dask.delayed(_writer)("c/one", root, list(range(r, 64, 4))) for r in range(48, 52)]
        on_workers = client.compute(tasks)  # running while the threads and the process write
        threads = [threading.Thread(target=_writer, args=("c/one", root, list(range(i, 24, 6)))) for i in range(6)]
        for t in threads:
            t.start()
        proc = run_python(f"import hubdask as hd\na = hd.load('c/one', storage={root!r})\n"
                          "for r in range(24, 48): a[r, :] = r + 1")
        for t in threads:
            t.join()
        client.gather(on_workers)
    assert proc.returncode == 0, proc.stderr
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


def _count_shard_reads(monkeypatch) -> dict:
    """Count, for local and remote roots alike, whole reads of chunk objects, ranged reads and their bytes."""
    from hubdask.storage import Root, files

    calls = {"whole": 0, "ranges": [], "bytes": 0}
    whole, ranged = Root.fetch_async, Root.fetch_range_async
    read, tail_then = files.read, files.read_tail_then

    async def count_whole(self, key):
        calls["whole"] += "/c/" in key
        return await whole(self, key)

    async def count_ranged(self, key, start, end):
        out = await ranged(self, key, start, end)
        calls["ranges"].append((start, end))
        calls["bytes"] += len(out)
        return out

    def count_read(path, **kw):
        calls["whole"] += "/c/" in str(path)
        return read(path, **kw)

    def count_tail_then(path, tail, spans):
        out = tail_then(path, tail, spans)
        calls["ranges"].append((None, tail))
        calls["ranges"].extend((a, a + len(p)) for a, p in out[1])
        calls["bytes"] += len(out[0]) + sum(len(p) for _, p in out[1])
        return out

    monkeypatch.setattr(Root, "fetch_async", count_whole)
    monkeypatch.setattr(Root, "fetch_range_async", count_ranged)
    monkeypatch.setattr(files, "read", count_read)
    monkeypatch.setattr(files, "read_tail_then", count_tail_then)
    return calls


@pytest.mark.parametrize("where", ["local", "s3"])
def test_small_reads_fetch_only_their_inner_chunks_by_range(where, tmp_path, request, monkeypatch):
    root = str(tmp_path / "r") if where == "local" else request.getfixturevalue("s3_root")
    ref = np.random.default_rng(5).integers(0, 255, (32, 64, 64)).astype("uint8")
    a = hd.array(ref.shape, "r/a", dtype="uint8", chunks=(1, 64, 64), shards=(32, 64, 64), codecs="none",
                 storage=root)
    a[:] = ref
    a.commit("data")
    calls = _count_shard_reads(monkeypatch)
    x = hd.load("r/a", storage=root, cache=False)
    np.testing.assert_array_equal(x[5, 10:20].read(), ref[5, 10:20])
    assert calls["whole"] == 0 and len(calls["ranges"]) == 2  # the index, then one inner chunk
    assert calls["bytes"] < ref[0].nbytes + 1024  # one inner chunk of 32 (and the index)
    calls["ranges"].clear()
    np.testing.assert_array_equal(x[6:9].read(), ref[6:9])
    assert len(calls["ranges"]) == 2  # three adjacent inner chunks: one coalesced range
    calls["ranges"].clear()
    np.testing.assert_array_equal(x[[2, 20]].read(), ref[[2, 20]])
    assert len(calls["ranges"]) == 3  # two inner chunks far apart: two ranges
    np.testing.assert_array_equal(x.read(), ref)  # the whole shard: one plain read
    assert calls["whole"] == 1


def test_a_cached_shard_serves_small_reads_and_a_rewrite_is_never_stale(s3_root, tmp_path, monkeypatch):
    from hubdask.storage import cache

    monkeypatch.setenv("HUBDASK_CACHE", str(tmp_path / "cache"))
    cache.reset()
    try:
        ref = np.random.default_rng(6).integers(0, 255, (16, 32)).astype("uint8")
        a = hd.array(ref.shape, "k/a", dtype="uint8", chunks=(1, 32), shards=(16, 32), storage=s3_root)
        a[:] = ref
        first = a.commit("one")
        calls = _count_shard_reads(monkeypatch)
        x = hd.load(f"k/a:{first}", storage=s3_root)
        np.testing.assert_array_equal(x.read(), ref)  # the whole shard, now in the disk cache
        assert calls["whole"] == 1
        calls["ranges"].clear()
        np.testing.assert_array_equal(x[3, 2:9].read(), ref[3, 2:9])  # served by the cached shard
        assert calls["whole"] == 1 and calls["ranges"] == []
        a[3, 2:9] = 200  # a partial rewrite of the cached shard, then a commit
        ref2 = ref.copy()
        ref2[3, 2:9] = 200
        second = a.commit("two")
        for name in ("k/a", f"k/a:{second}"):
            y = hd.load(name, storage=s3_root)
            np.testing.assert_array_equal(y[3, 0:10].read(), ref2[3, 0:10])
            np.testing.assert_array_equal(y[2:5].read(), ref2[2:5])
        np.testing.assert_array_equal(hd.load(f"k/a:{first}", storage=s3_root)[3].read(), ref[3])
    finally:
        cache.reset()


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
