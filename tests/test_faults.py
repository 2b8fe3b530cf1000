"""Reliability under network faults: hubdask over S3 (moto's server) through the fault-injecting proxy.

Each test asserts exact data or a clean, specific error, and what storage holds afterwards (read
straight from moto, around the proxy). The retry settings are in hubdask/storage/retry.py and
docs/reliability.md.
"""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pytest

import hubdask as hd
from hubdask.storage import open_root
from hubdask.storage.retry import Policy, is_transient
from hubdask.versioning import repository
from hubdask.versioning.refs import read_head

from support.faultproxy import FaultProxy
from helpers import committed_object, internal

SHAPE, CHUNKS = (200, 500), (1, 500)  # 200 chunks of 4 KB
CHUNK_GET = r"^GET /[^?]*/nodes/[^?]*/c/"
CHUNK_PUT = r"^PUT /[^?]*/nodes/[^?]*/c/"
SHORT_BUDGET = {"HUBDASK_RETRIES": "2", "HUBDASK_RETRY_WAIT": "0.01", "HUBDASK_RETRY_MAX_WAIT": "0.05",
                "HUBDASK_RETRY_TIMEOUT": "10"}


pytestmark = pytest.mark.usefixtures("private_cache")  # the cache folder of this test alone


@pytest.fixture(params=["obstore", "s3fs"])
def client(request, monkeypatch):
    """Both S3 clients hubdask can use: obstore (default) and s3fs (fallback)."""
    monkeypatch.setenv("HUBDASK_S3_CLIENT", request.param)
    return request.param


def direct(url: str, moto_server) -> object:
    """A root on the same bucket that reaches moto without the proxy: what storage really holds."""
    return open_root(url, {"endpoint_url": moto_server.endpoint, "key": "testing", "secret": "testing"})


def data(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(SHAPE)


def short_budget(monkeypatch) -> None:
    for k, v in SHORT_BUDGET.items():
        monkeypatch.setenv(k, v)


def test_200_chunks_exact_under_503s_and_resets(client, s3_root_faulty, fault_proxy: FaultProxy):
    """10% of requests answered 503 and 10% reset mid-body: writes, a commit and reads all complete exactly."""
    expected = data()
    a = hd.array(SHAPE, name="f/a", dtype="float64", chunks=CHUNKS, storage=s3_root_faulty)
    fault_proxy.set(error_rate=0.1, reset_rate=0.1)
    a[:] = expected
    cid = a.commit("under faults")
    np.testing.assert_array_equal(hd.load("f/a", storage=s3_root_faulty, cache=False).read(), expected)
    at_commit = hd.load(f"f/a:{cid}", storage=s3_root_faulty, cache=False)
    np.testing.assert_array_equal(at_commit.compute(), expected)  # dask tasks, one per chunk
    counts = fault_proxy.counters
    assert counts["errors"] >= 20 and counts["resets"] >= 20, counts


def test_truncated_bodies_are_detected_and_refetched(client, s3_root_faulty, fault_proxy, moto_server):
    """Chunk GETs cut short (clean FIN, 15% of them): never decoded into garbage, always refetched."""
    expected = data(1)
    a = hd.array(SHAPE, name="f/t", dtype="float64", chunks=CHUNKS, storage=s3_root_faulty)
    a[:] = expected
    a.commit("c")
    fault_proxy.set(truncate_rate=0.15, match=CHUNK_GET)
    np.testing.assert_array_equal(hd.load("f/t", storage=s3_root_faulty, cache=False).read(), expected)
    np.testing.assert_array_equal(hd.load("f/t", storage=s3_root_faulty).read(), expected)  # through the cache
    assert fault_proxy.counters["truncations"] >= 20
    fault_proxy.clear()
    hd.cache.reset()
    np.testing.assert_array_equal(hd.load("f/t", storage=s3_root_faulty).read(), expected)  # cached copies exact


def test_damaged_bytes_in_flight_are_refetched(s3_root, monkeypatch):
    """A body that arrives with bad bytes (its crc32c fails) is fetched again, not decoded."""
    from hubdask.storage.root import Root

    expected = data(2)
    a = hd.array(SHAPE, name="f/d", dtype="float64", chunks=CHUNKS, storage=s3_root)
    a[:] = expected
    a.commit("c")
    damaged: set[str] = set()
    real = Root.fetch_async

    async def flaky(self, key):
        raw = await real(self, key)
        if raw is not None and "/c/" in key and key not in damaged:  # every chunk: first copy damaged
            damaged.add(key)
            raw = bytearray(bytes(raw))
            raw[len(raw) // 2] ^= 0xFF
            return bytes(raw)
        return raw

    monkeypatch.setattr(Root, "fetch_async", flaky)
    np.testing.assert_array_equal(hd.load("f/d", storage=s3_root, cache=False).read(), expected)
    assert len(damaged) == 200


def test_damaged_in_storage_is_an_error_not_garbage(s3_root):
    """A committed chunk damaged in storage (bit flip, cut short, replaced): CorruptChunkError naming the
    dataset and chunk, for the whole read and for the dask path; the other chunks still read."""
    expected = data(3)[:20]
    a = hd.array(expected.shape, name="f/s", dtype="float64", chunks=CHUNKS, storage=s3_root)
    a[:] = expected
    cid = a.commit("c")
    root = open_root(s3_root)
    b = hd.load(f"f/s:{cid}", storage=s3_root, cache=False)
    for row, damage in enumerate(["flip", "short", "garbage"]):
        key = committed_object(a, cid, f"c/{row}/0")
        good = root.get(key)
        raw = bytearray(good)
        if damage == "flip":
            raw[10] ^= 0x01
        elif damage == "short":
            raw = raw[: len(raw) // 2]
        else:
            raw = bytearray(os.urandom(len(raw)))
        root.put(key, bytes(raw))
        with pytest.raises(hd.CorruptChunkError, match=rf"f/s.*c/{row}/0"):
            b.read()
        with pytest.raises(hd.CorruptChunkError, match=rf"f/s.*c/{row}/0"):
            b[row].compute()
        np.testing.assert_array_equal(b[row + 1:].read(), expected[row + 1:])  # the others read
        root.put(key, good)
    np.testing.assert_array_equal(b.read(), expected)


def test_read_fault_past_budget_names_dataset_and_chunk(s3_root_faulty, fault_proxy, monkeypatch):
    short_budget(monkeypatch)
    a = hd.array(SHAPE, name="f/r", dtype="float64", chunks=CHUNKS, storage=s3_root_faulty)
    a[:] = data(4)
    a.commit("c")
    for faults in ({"error_rate": 1.0}, {"reset_rate": 1.0}):
        fault_proxy.clear()
        fault_proxy.set(match=CHUNK_GET, **faults)
        with pytest.raises(hd.StorageError, match=r"dataset 'f/r'.*chunk 'c/\d+/0'") as info:
            hd.load("f/r", storage=s3_root_faulty, cache=False)[3:6].read()
        assert "retry budget" in str(info.value) and "testing" not in str(info.value)
        assert len(str(info.value)) < 1500  # a clear line, not a client's debug dump
    fault_proxy.clear()
    np.testing.assert_array_equal(hd.load("f/r", storage=s3_root_faulty, cache=False).read(), data(4))


def test_write_fault_past_budget_leaves_no_bad_chunk(s3_root_faulty, fault_proxy, moto_server, monkeypatch):
    """Chunk PUTs reset mid-upload past the budget: StorageError naming dataset and chunk; every object
    storage holds decodes (no partial chunk), each chunk reads old or new; rerunning the write completes."""
    short_budget(monkeypatch)
    old, new = data(5), data(6)
    a = hd.array(SHAPE, name="f/w", dtype="float64", chunks=CHUNKS, storage=s3_root_faulty)
    a[:] = old
    a.commit("old")
    fault_proxy.set(reset_rate=1.0, reset_phase="request", match=r"^PUT /[^?]*/nodes/[^?]*/c/1\d\d/")
    with pytest.raises(hd.StorageError, match=r"dataset 'f/w'.*chunk 'c/1\d\d/0'.*written"):
        a[:] = new  # chunks 100..199 never get through
    fault_proxy.clear()
    truth = direct(s3_root_faulty, moto_server)
    head = read_head(truth, "f/w", "main")
    landed = {k.rsplit("/c/", 1)[1].split("@")[0] for k in truth.list_prefix(internal("f/w", f"nodes/{head.node}/c/"))}
    assert not {f"{i}/0" for i in range(100, 200)} & landed  # no cut upload left an object
    got = hd.load("f/w", storage=s3_root_faulty, cache=False).read()  # every stored object decodes
    for i in range(SHAPE[0]):
        assert np.array_equal(got[i], old[i]) or np.array_equal(got[i], new[i]), i
    a[:] = new  # rerun
    np.testing.assert_array_equal(hd.load("f/w", storage=s3_root_faulty, cache=False).read(), new)


STEPS = {  # the requests of each commit step (see versioning/repository.py), by the proxy's regex
    "seal": r"^PUT /[^?]*/seals/",  # of the head this process made: no LIST of the branch first
    "written marks": r"^GET /[^?]*/refs/heads/[^?]*/written-",  # the node needs no LIST: one writer
    "commit record": r"^PUT /[^?]*/commits/",
    "head claim": r"^PUT /[^?]*/refs/log/",
    "head name": r"^PUT /[^?]*/refs/heads/[^?]*\.",  # claimed, not named: the next commit names it
}


def test_commit_interrupted_at_each_step(s3_root_faulty, fault_proxy, moto_server, monkeypatch):
    """A commit failing at any step leaves the branch at the old commit (every version intact); the
    branch still shows the writes; the next commit completes it."""
    short_budget(monkeypatch)
    truth = direct(s3_root_faulty, moto_server)
    a = hd.array((20, 50), name="f/c", dtype="int32", chunks=(5, 50), storage=s3_root_faulty)
    versions = {}
    expected = np.zeros((20, 50), np.int32)
    for i, (step, pattern) in enumerate(STEPS.items()):
        c1 = a.commit(f"before {step}")
        versions[c1] = expected.copy()
        a[i * 5:i * 5 + 3] = i + 1
        expected[i * 5:i * 5 + 3] = i + 1
        fault_proxy.set(error_rate=1.0, match=pattern)
        with pytest.raises(hd.StorageError, match="f/c"):
            a.commit(step)
        assert fault_proxy.counters["errors"] > 0
        fault_proxy.clear()
        fault_proxy.reset_counters()
        assert read_head(truth, "f/c", "main").base == c1, step
        np.testing.assert_array_equal(hd.load("f/c", storage=s3_root_faulty, cache=False).read(), expected)
        c2 = hd.load("f/c", storage=s3_root_faulty).commit(step)
        assert c2 != c1 and read_head(truth, "f/c", "main").base == c2
        versions[c2] = expected.copy()
        for cid, state in versions.items():
            np.testing.assert_array_equal(hd.load(f"f/c:{cid}", storage=s3_root_faulty, cache=False).read(), state)


def test_commits_under_random_faults_land_whole_or_not(s3_root_faulty, fault_proxy, moto_server, monkeypatch):
    """Many commits under heavy random faults and a short budget: after each, success or not, the
    branch is at one of the commits made and each commit reads exactly what was written before it."""
    short_budget(monkeypatch)
    a = hd.array((20, 50), name="f/m", dtype="int32", chunks=(5, 50), storage=s3_root_faulty)
    truth = direct(s3_root_faulty, moto_server)
    model = np.zeros((20, 50), np.int32)
    commits = {read_head(truth, "f/m", "main").base: model.copy()}
    failures = 0
    for i in range(8):
        fault_proxy.clear()
        row = i % 20
        a[row] = i + 1  # written without faults; the commit gets them
        model[row] = i + 1
        fault_proxy.set(error_rate=0.35, reset_rate=0.15)
        try:
            cid = hd.load("f/m", storage=s3_root_faulty).commit(f"c{i}")
            commits[cid] = model.copy()
        except (hd.StorageError, hd.ConflictError):
            failures += 1
        fault_proxy.clear()
        base = read_head(truth, "f/m", "main").base
        if base not in commits:  # the commit landed, only its answer was lost
            commits[base] = model.copy()
        for cid, state in commits.items():
            np.testing.assert_array_equal(hd.load(f"f/m:{cid}", storage=s3_root_faulty, cache=False).read(), state)
        hd.load("f/m", storage=s3_root_faulty).commit("settle")  # completes an interrupted commit, if any
        commits[read_head(truth, "f/m", "main").base] = model.copy()
    assert failures > 0, "the faults never interrupted a commit: make them harsher"


def test_store_on_local_cluster_through_faulty_proxy(s3_root_faulty, fault_proxy, moto_server, monkeypatch):
    """hd.store from worker processes: exact under 10% faults; under faults past a short budget it
    finishes exactly or fails with a clean error, and rerunning it completes."""
    distributed = pytest.importorskip("distributed")
    source = da.from_array(data(9), chunks=(40, 500))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as dclient:
        fault_proxy.set(error_rate=0.1, reset_rate=0.1)
        hd.store(source, "f/out", storage=s3_root_faulty, chunks=CHUNKS)
        fault_proxy.clear()
        np.testing.assert_array_equal(hd.load("f/out", storage=s3_root_faulty, cache=False).read(), data(9))

        dclient.run(os.environ.update, SHORT_BUDGET)
        dclient.run(lambda: __import__("hubdask").storage.root._OPEN.clear())  # reopen with the short budget
        other = da.from_array(data(10), chunks=(40, 500))
        fault_proxy.set(reset_rate=0.5, reset_phase="request", match=CHUNK_PUT)
        try:
            hd.store(other, "f/out", storage=s3_root_faulty)
            failed = None
        except hd.StorageError as exc:
            failed = exc
        fault_proxy.clear()
        if failed is not None:
            assert "f/out" in str(failed)
            got = hd.load("f/out", storage=s3_root_faulty, cache=False).read()
            for i in range(SHAPE[0]):
                assert np.array_equal(got[i], data(9)[i]) or np.array_equal(got[i], data(10)[i]), i
            hd.store(other, "f/out", storage=s3_root_faulty)  # rerun to completion
        np.testing.assert_array_equal(hd.load("f/out", storage=s3_root_faulty, cache=False).read(), data(10))


def test_create_is_ours_when_only_the_answer_was_lost(s3_root_faulty, fault_proxy, moto_server):
    """An exclusive create (refs, commits, tags) whose answer is lost is retried; the retry finds our own
    bytes there and reports the create as ours, not as a lost race."""
    root = open_root(s3_root_faulty)
    fault_proxy.set(reset_rate=0.6, reset_phase="response", match=r"^PUT /[^?]*/k\d")
    assert all(root.create(f"k{i}", f"mine {i}".encode()) for i in range(10))
    assert fault_proxy.counters["resets"] > 0
    fault_proxy.clear()
    assert root.create("k1", b"mine 1") is True  # the same bytes again: idempotent
    assert root.create("k1", b"theirs") is False  # different bytes: someone else's
    assert direct(s3_root_faulty, moto_server).get("k1") == b"mine 1"


def test_transient_classification():
    import asyncio

    class GenericError(Exception):
        pass

    assert is_transient(GenericError("Generic S3 error: HTTP error: request or response body error"))
    assert is_transient(GenericError("Server returned non-2xx status code: 503 Service Unavailable"))
    assert is_transient(ConnectionResetError()) and is_transient(asyncio.TimeoutError())
    assert not is_transient(FileNotFoundError("k")) and not is_transient(PermissionError("403"))
    assert not is_transient(hd.CorruptChunkError("crc")) and not is_transient(ValueError("503"))
    waits = list(Policy(retries=5, wait=0.1, max_wait=0.3).waits())
    assert len(waits) == 5 and all(0.05 <= w <= 0.3 for w in waits) and waits[-1] >= 0.15
