"""The local disk cache of committed chunks, against moto's S3 server in its own process."""

from __future__ import annotations

import json
import re
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

import hubdask as hd
from hubdask.storage import cache, open_root
from helpers import run_python

CHUNKS = (4, 16, 16)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("HUBDASK_CACHE", str(folder))
    monkeypatch.delenv("HUBDASK_CACHE_SIZE", raising=False)
    cache.reset()
    cache.clear()
    yield folder
    cache.reset()


def _make(root: str, name: str = "c/arr", commit: bool = True) -> tuple[hd.Array, np.ndarray]:
    data = np.random.default_rng(1).integers(0, 200, (16, 16, 16), dtype=np.uint8)
    a = hd.array(data.shape, name, dtype="uint8", chunks=CHUNKS, storage=root)
    a[...] = data
    if commit:
        a.commit("data")
    return a, data


def _chunk_gets(moto_server) -> int:
    """Successful chunk GETs so far (a branch read also asks its open node, which answers 404)."""
    return sum(1 for line in moto_server.log_lines() if '"GET ' in line and '" 200' in line
               and re.search(r"/nodes/[0-9a-f]+/c/[0-9]", line))


def test_cold_then_warm_reads_serve_committed_chunks_from_disk(s3_root, moto_server, cache_dir):
    _, data = _make(s3_root)
    x = hd.load("c/arr", storage=s3_root)
    np.testing.assert_array_equal(np.asarray(x), data)
    assert cache.info()["misses"] >= 4 and cache.info()["entries"] >= 4 and cache.info()["bytes"] > 0
    before, hits = _chunk_gets(moto_server), cache.info()["hits"]
    np.testing.assert_array_equal(np.asarray(hd.load("c/arr", storage=s3_root)), data)
    assert cache.info()["hits"] == hits + 5  # the 4 chunks and the committed zarr.json hd.load reads
    assert _chunk_gets(moto_server) == before, "a warm read must not GET chunks from storage"
    assert int(x.sum().compute()) == int(data.sum(dtype=np.int64))  # the wave engine reads through it too


def test_uncommitted_chunks_are_never_cached_or_stale(s3_root, cache_dir):
    a, data = _make(s3_root, commit=False)
    np.testing.assert_array_equal(np.asarray(a), data)
    meta = cache.info()["entries"]  # the array's committed zarr.json, read once when it was opened
    assert meta <= 1  # open-node chunks bypass the cache
    a.commit("one")
    np.testing.assert_array_equal(np.asarray(hd.load("c/arr", storage=s3_root)), data)
    assert cache.info()["entries"] == meta + 4
    a[0:4] = 7  # a new open node now shadows the cached committed chunk
    data[0:4] = 7
    np.testing.assert_array_equal(np.asarray(hd.load("c/arr", storage=s3_root)), data)


def test_cache_false_bypasses_the_cache(s3_root, cache_dir):
    _, data = _make(s3_root)
    before = {k: cache.info()[k] for k in ("hits", "misses", "entries")}
    x = hd.load("c/arr", storage=s3_root, cache=False)
    np.testing.assert_array_equal(np.asarray(x), data)
    np.testing.assert_array_equal(np.asarray(x[1:3]), data[1:3])
    assert {k: cache.info()[k] for k in ("hits", "misses", "entries")} == before


def test_corrupted_or_truncated_entries_are_refetched(s3_root, cache_dir):
    data = np.random.default_rng(4).integers(0, 255, (64, 64, 64), dtype=np.uint8)
    a = hd.array(data.shape, "c/arr", dtype="uint8", chunks=(16, 64, 64), storage=s3_root, codecs="none")
    a[...] = data
    a.commit("x")
    np.asarray(hd.load("c/arr", storage=s3_root))
    cache.flush()  # entries are written by a background thread
    files = sorted(p for p in Path(cache_dir).rglob("*")  # the four chunk entries (metadata is small)
                   if p.is_file() and not p.name.startswith(".") and p.stat().st_size > 32 * 1024)
    assert len(files) == 4
    files[0].write_bytes(files[0].read_bytes()[:-7])  # truncated
    raw = bytearray(files[1].read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte
    files[1].write_bytes(bytes(raw))
    np.testing.assert_array_equal(np.asarray(hd.load("c/arr", storage=s3_root)), data)
    info = cache.info()
    assert info["corrupt"] == 2 and info["hits"] >= 2
    hits = info["hits"]
    np.testing.assert_array_equal(np.asarray(hd.load("c/arr", storage=s3_root)), data)
    # the refetched entries were stored again, intact: 4 chunk hits and the zarr.json hd.load reads
    assert cache.info()["hits"] == hits + 5 and cache.info()["corrupt"] == 2


def test_size_bound_evicts_least_recently_used(s3_root, cache_dir, monkeypatch):
    data = np.random.default_rng(2).integers(0, 255, (64, 64, 64), dtype=np.uint8)  # incompressible-ish
    a = hd.array(data.shape, "c/big", dtype="uint8", chunks=(8, 64, 64), storage=s3_root, codecs="none")
    a[...] = data
    a.commit("x")
    one = 8 * 64 * 64
    monkeypatch.setenv("HUBDASK_CACHE_SIZE", str(3 * one + 40_000))  # about three chunks plus the index
    cache.reset()
    x = hd.load("c/big", storage=s3_root)
    np.testing.assert_array_equal(np.asarray(x), data)
    info = cache.info()
    assert info["entries"] < 8 and info["bytes"] <= info["size_limit"] + one
    np.testing.assert_array_equal(np.asarray(x[0:8]), data[0:8])  # still correct after eviction


def test_local_and_memory_roots_are_not_cached(tmp_path, cache_dir):
    assert cache.reader(open_root(str(tmp_path / "r"))) is None
    assert cache.reader(open_root("memory://cache-test")) is None


def test_shared_by_processes_and_survives_restart(s3_root, moto_server, cache_dir):
    _, data = _make(s3_root)
    code = f"""
        import json, numpy as np, hubdask as hd
        x = np.asarray(hd.load("c/arr", storage={s3_root!r}))
        print(json.dumps({{"sum": int(x.sum(dtype=np.int64)), **{{k: hd.cache.info()[k] for k in ("hits", "misses")}}}}))
    """
    env = {**moto_server.env(), "HUBDASK_CACHE": str(cache_dir)}
    first = [run_python(code, env) for _ in range(2)]  # two processes, one after the other: a restart
    outs = []
    for r in first:
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert all(o["sum"] == int(data.sum(dtype=np.int64)) for o in outs)
    assert outs[0]["misses"] >= 4 and outs[1]["hits"] >= 4 and outs[1]["misses"] == 0


def test_full_disk_turns_caching_off_and_reads_go_on(s3_root, tmp_path, monkeypatch):
    mount = tmp_path / "tiny"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {r.stderr.decode().strip()}")
    try:
        monkeypatch.setenv("HUBDASK_CACHE", str(mount))
        cache.reset()
        data = np.random.default_rng(5).integers(0, 255, (128, 128, 128), dtype=np.uint8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = hd.array(data.shape, "c/full", dtype="uint8", chunks=(16, 128, 128), storage=s3_root, codecs="none")
            a[...] = data
            a.commit("x")
            got = np.asarray(hd.load("c/full", storage=s3_root))
            cache.flush()  # entries are written by a background thread
        np.testing.assert_array_equal(got, data)
        assert any("turned off" in str(w.message) for w in caught), [str(w.message) for w in caught]
        assert cache.info()["enabled"] is False
        np.testing.assert_array_equal(np.asarray(hd.load("c/full", storage=s3_root)), data)
    finally:
        cache.reset()
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_clear_and_info_after_the_cache_folder_was_deleted(s3_root, cache_dir):
    import shutil

    _, data = _make(s3_root)
    np.testing.assert_array_equal(np.asarray(hd.load("c/arr", storage=s3_root)), data)
    assert cache.info()["entries"] >= 4
    shutil.rmtree(cache_dir)  # another process, or the user, removed the whole folder
    assert cache.info()["entries"] == 0 and cache.info()["enabled"] is True
    assert hd.cache.clear() == 0
    np.testing.assert_array_equal(np.asarray(hd.load("c/arr", storage=s3_root)), data)  # reads go on, and
    assert cache.info()["entries"] >= 4  # the cache fills again in the recreated folder
    shutil.rmtree(cache_dir)
    assert hd.cache.clear() == 0


def _record_stores(monkeypatch, reading: dict) -> list[bool]:
    """Every cache entry the writer stores, as whether a read was in flight at that instant."""
    seen: list[bool] = []
    real = cache._store

    def store(full_key, data):
        seen.append(reading["now"])
        reading["stored"].set()
        real(full_key, data)

    monkeypatch.setattr(cache, "_store", store)
    return seen


def test_a_cold_read_writes_no_cache_entry_while_it_runs(s3_root, cache_dir, monkeypatch):
    """Cache writes stay off the read's critical path: the worst instant is the writer storing the
    first chunks' entries while the read still decodes the last one (on two cores, the disk copy then
    competes with the decode). The last decode waits for a store to be attempted; none may come."""
    import threading

    from hubdask.chunkio import LeanCodec

    _, data = _make(s3_root)
    reading = {"now": False, "stored": threading.Event()}
    seen = _record_stores(monkeypatch, reading)
    real_decode, calls = LeanCodec.decode, []

    def decode(self, raw, out):
        calls.append(1)
        if len(calls) == 4:  # the last chunk of four: the others' entries are queued by now
            reading["stored"].wait(2.0)
        return real_decode(self, raw, out)

    monkeypatch.setattr(LeanCodec, "decode", decode)
    x = hd.load("c/arr", storage=s3_root)
    reading["now"] = True
    got = np.asarray(x)
    reading["now"] = False
    np.testing.assert_array_equal(got, data)
    cache.flush()
    assert len(calls) == 4 and len(seen) >= 4, "every chunk decoded, every entry stored once the read ended"
    assert not any(seen), f"{sum(seen)} cache entries were written while the read was still running"


def test_a_read_bigger_than_the_writers_bound_still_caches_every_chunk(s3_root, cache_dir, monkeypatch):
    """Entries wait for the read to end only while little is queued: past half the writer's bound they
    are written during the read, so a read larger than the bound keeps memory bounded and is cached whole."""
    import time

    from hubdask.chunkio import LeanCodec

    _, data = _make(s3_root)
    x = hd.load("c/arr", storage=s3_root)
    monkeypatch.setattr(cache._Writer, "MAX_PENDING", 3 * 1024)  # about two stored chunks of this array
    real_decode = LeanCodec.decode

    def decode(self, raw, out):  # a reader no faster than the writer (on a loaded machine it can be)
        deadline = time.monotonic() + 10
        while 2 * cache._writer()._pending > cache._Writer.MAX_PENDING and time.monotonic() < deadline:
            time.sleep(0.01)
        return real_decode(self, raw, out)

    monkeypatch.setattr(LeanCodec, "decode", decode)
    np.testing.assert_array_equal(np.asarray(x), data)
    assert cache.info()["entries"] >= 4
    before = cache.info()["hits"]
    np.testing.assert_array_equal(np.asarray(hd.load("c/arr", storage=s3_root)), data)
    assert cache.info()["hits"] >= before + 4


def test_flush_drains_while_another_thread_reads(s3_root, cache_dir, monkeypatch):
    """flush() waits for the entries queued so far even while another thread's read is in flight (and
    so keeps the writer waiting): it must return, with the entry on disk."""
    import threading

    from hubdask.chunkio import LeanCodec

    _, data = _make(s3_root)
    x = hd.load("c/arr", storage=s3_root)
    release, entered, calls = threading.Event(), threading.Event(), []
    real_decode = LeanCodec.decode

    def decode(self, raw, out):
        calls.append(1)
        if len(calls) == 1:  # the other thread's first chunk: held until the end
            entered.set()
            release.wait(60)
        return real_decode(self, raw, out)

    monkeypatch.setattr(LeanCodec, "decode", decode)
    got: list[np.ndarray] = []
    other = threading.Thread(target=lambda: got.append(np.asarray(x[4:12])))  # two chunks: decoded in the pool
    other.start()
    try:
        assert entered.wait(60)
        np.testing.assert_array_equal(np.asarray(x[0:4]), data[0:4])
        cache.flush()  # returns while the other read is still in flight
        assert other.is_alive() and cache.info()["entries"] >= 2  # zarr.json and chunk 0 at least
    finally:
        release.set()
        other.join(60)
    np.testing.assert_array_equal(got[0], data[4:12])


def test_an_entry_waiting_for_the_writer_serves_the_next_read(s3_root, cache_dir, monkeypatch):
    """The worst instant for a cache whose writes wait: a read repeats while another read keeps the
    writer waiting, so nothing is on disk yet. It must be served from the waiting entries (no second
    fetch from storage), with the values exact."""
    from hubdask.storage.root import Root

    _, data = _make(s3_root)
    fetches: list[str] = []
    real_fetch = Root.fetch_async

    async def fetch_async(self, key, *args, **kwargs):
        fetches.append(key)
        return await real_fetch(self, key, *args, **kwargs)

    with cache._writer().reading():  # another thread's read in flight, all along
        x = hd.load(f"c/arr:{hd.load('c/arr', storage=s3_root).commit_id}", storage=s3_root)
        np.testing.assert_array_equal(np.asarray(x), data)
        monkeypatch.setattr(Root, "fetch_async", fetch_async)
        before = cache._STATS["hits"]
        np.testing.assert_array_equal(np.asarray(x), data)
        assert cache._STATS["hits"] >= before + 4
        assert fetches == [], f"fetched again from storage: {fetches}"
