"""Many writers on a real dask.distributed cluster (scheduler and worker processes): chunk locks
through the scheduler, lost updates, independent clients, a killed lock holder, and hd.store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import dask
import dask.array as da
import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import hubdask as hd  # noqa: E402
from hubdask import grid, locks  # noqa: E402
from hubdask.write import write_region  # noqa: E402

STRIPES = 64  # small, so a test can write more chunks than there are stripes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A LocalCluster with 2 worker processes x 2 threads, and a Client that is the default one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUBDASK_LOCK_STRIPES", str(STRIPES))  # every process must agree: set before spawning
        mp.setenv("HUBDASK_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("HUBDASK_LOCKS", raising=False)
        with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=2,
                                      dashboard_address=":0") as lc, distributed.Client(lc) as client:
            yield client


def _lock_state(dask_scheduler, prefix: str = "hubdask-lock-") -> dict:
    """What the scheduler keeps for hubdask's locks: names known, acquisitions, leases held now."""
    ext = dask_scheduler.extensions["semaphores"]
    names = [n for n in ext.max_leases if str(n).startswith(prefix)]
    return {"names": len(names),
            "acquired": sum(ext.metrics["acquire_total"].get(n, 0) for n in names),
            "held": {n: len(ext.leases[n]) for n in names if ext.leases.get(n)},
            "all_names": len(ext.max_leases)}


def _no_lease_held(client, timeout: float = 30) -> dict:
    """The scheduler's lock state once no hubdask lease is held (workers release without waiting for the
    scheduler's reply, so the last releases may still be on the wire); fails if one stays held."""
    deadline = time.monotonic() + timeout
    while True:
        state = client.run_on_scheduler(_lock_state)
        if not state["held"] or time.monotonic() > deadline:
            assert state["held"] == {}
            return state
        time.sleep(0.05)


def _write_row(root: str, name: str, i: int, locks_setting: str, repeats: int = 1) -> int:
    """One task: ``hd.load(name)[i] = i + 1`` (a read-modify-write of the shared chunk)."""
    os.environ["HUBDASK_LOCKS"] = locks_setting  # the same value for every task of one run
    a = hd.load(name, storage=root)
    for _ in range(repeats):
        a[i] = np.full(a.shape[1], i + 1, dtype=a.dtype)
    return i


def _lost_rows(root: str, name: str) -> list[int]:
    got = np.asarray(hd.load(name, storage=root))
    return [i for i in range(got.shape[0]) if (got[i] != i + 1).any()]


def _run_rows(client, root: str, name: str, locks_setting: str, repeats: int = 1) -> list[int]:
    hd.array((64, 1024), name, dtype="int64", chunks=(64, 1024), storage=root)  # one chunk, 64 rows
    try:
        futures = [client.submit(_write_row, root, name, i, locks_setting, repeats, pure=False) for i in range(64)]
        assert sorted(client.gather(futures)) == list(range(64))
    finally:
        client.run(lambda: os.environ.pop("HUBDASK_LOCKS", None))  # later tests get the default again
    return _lost_rows(root, name)


def test_64_tasks_writing_rows_of_one_chunk_lose_nothing(cluster, tmp_path):
    root = str(tmp_path / "root")
    before = cluster.run_on_scheduler(_lock_state)
    assert _run_rows(cluster, root, "o/rows", "auto") == []
    after = _no_lease_held(cluster)
    # the writes were coordinated by the scheduler (distributed locks), not only by this machine's file locks
    assert after["acquired"] - before["acquired"] >= 64


def test_without_locks_no_row_is_lost_either(cluster, tmp_path):
    """With HUBDASK_LOCKS=off, four writers in two worker processes read-modify-write the same chunks at
    once: the versions' exclusive create fences every stale write, so nothing is lost without locks
    either (the locks only make writers take turns instead of retrying)."""
    assert _run_rows(cluster, str(tmp_path / "root"), "o/rows", "off", repeats=2) == []


def test_scheduler_lock_state_stays_bounded(cluster, tmp_path):
    """Partial writes to many more chunks than there are stripes: the scheduler knows at most STRIPES
    hubdask lock names, each worker keeps at most STRIPES lock objects, and nothing is left held."""
    root = str(tmp_path / "root")
    n = 5 * STRIPES
    hd.array((n, 8), "o/many", dtype="int32", chunks=(1, 8), storage=root)

    def write_half_chunk(i):
        hd.load("o/many", storage=root)[i, 0:4] = i + 1  # part of chunk (i, 0): locked
        return i

    futures = cluster.map(write_half_chunk, range(n), pure=False)
    cluster.gather(futures)
    state = _no_lease_held(cluster)
    assert 0 < state["names"] <= STRIPES
    per_worker = cluster.run(lambda: sum(len(v) for v in locks._DIST.values()))
    assert all(k <= STRIPES for k in per_worker.values()), per_worker
    got = np.asarray(hd.load("o/many", storage=root))
    assert (got[:, :4] == np.arange(1, n + 1)[:, None]).all() and (got[:, 4:] == 0).all()


CLIENT_SCRIPT = """
import sys, numpy as np, hubdask as hd
from distributed import Client

address, root, name, parity = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def write(i):
    a = hd.load(name, storage=root)
    a[i] = np.full(a.shape[1], i + 1, dtype=a.dtype)
    return i

with Client(address) as client:
    rows = list(range(parity, 64, 2))
    futures = client.map(write, rows[::2], pure=False)   # half through this client's tasks
    a = hd.load(name, storage=root)
    for i in rows[1::2]:                                 # half from this process, under the same locks
        a[i] = np.full(a.shape[1], i + 1, dtype=a.dtype)
    client.gather(futures)
print("ok")
"""


def test_two_independent_clients_writing_interleaved_rows(cluster, tmp_path):
    root = str(tmp_path / "root")
    hd.array((64, 2048), "o/shared", dtype="int64", chunks=(16, 2048), storage=root)  # 4 chunks, both write each
    address = cluster.scheduler.address
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(CLIENT_SCRIPT), address, root, "o/shared",
                               str(parity)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for parity in (0, 1)]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0 and "ok" in out, err[-3000:]
    assert _lost_rows(root, "o/shared") == []


def test_store_of_a_misaligned_dask_array_is_exact(cluster, tmp_path):
    root = str(tmp_path / "root")
    src = np.arange(50 * 37, dtype="int64").reshape(50, 37)
    source = da.from_array(src, chunks=(7, 5))  # cuts storage chunks (8, 8) everywhere
    target = hd.array((64, 48), "o/store", dtype="int64", chunks=(8, 8), storage=root)
    target[:] = -1
    hd.store(source, target, region=(slice(3, 53), slice(5, 42)))
    expected = np.full((64, 48), -1, dtype="int64")
    expected[3:53, 5:42] = src
    assert np.array_equal(np.asarray(hd.load("o/store", storage=root)), expected)

    job = hd.store(source * 2, "o/store2", storage=root, chunks=(8, 8), compute=False)
    assert isinstance(job, da.Array)  # lazy: nothing written yet
    assert "o/store2" in hd.ls("o", storage=root) and (np.asarray(hd.load("o/store2", storage=root)) == 0).all()
    # blocks cut only at storage chunk borders: each of the 7 x 5 storage chunks has exactly one writer
    writes = [k for k in dict(job.__dask_graph__()) if dask.utils.key_split(k) == "write_block"]
    assert 1 <= len(writes) <= 7 * 5
    assert job.compute() == len(writes)
    assert np.array_equal(np.asarray(hd.load("o/store2", storage=root)), src * 2)


# --- a worker killed while it holds a chunk lock ------------------------------------------------------

LEASE = {"distributed.scheduler.locks.lease-timeout": "2s",
         "distributed.scheduler.locks.lease-validation-interval": "200ms"}


def _hold_and_write(root: str, name: str, flag: str) -> str:
    """Take the chunk's lock and rewrite rows 0..8 with 1, 2, 3, ... until killed."""
    if os.path.exists(flag):
        return "rescheduled after the kill: nothing to do"
    a = hd.load(name, storage=root)
    src = a._source
    held = locks.lock_name(src.root.url, src.ds, src.branch, grid.chunk_key((0, 0), src.path))
    sel = (slice(0, 8, 1), slice(0, a.shape[1], 1))
    with locks.chunk_locks([held]):
        k = 0
        while True:
            k += 1
            write_region(src, sel, np.full((8, a.shape[1]), k, "int64"), a.storage_shape, a.storage_chunks,
                         lock=False)  # we hold the lock already
            if k == 1:
                open(flag, "w").close()


def _write_rows(root: str, name: str, value: int) -> int:
    hd.load(name, storage=root)[0:8] = value
    return value


def test_worker_killed_while_holding_a_chunk_lock(tmp_path):
    root, flag = str(tmp_path / "root"), str(tmp_path / "holding")
    a = hd.array((16, 4096), "o/kill", dtype="int64", chunks=(16, 4096), storage=root)
    a[:] = -7
    with dask.config.set(LEASE), pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUBDASK_CACHE", str(tmp_path / "cache"))
        mp.delenv("HUBDASK_LOCKS", raising=False)
        with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                      dashboard_address=":0") as lc, distributed.Client(lc) as client:
            victim = sorted(client.scheduler_info()["workers"])[0]
            pid = client.run(os.getpid, workers=[victim])[victim]
            holder = client.submit(_hold_and_write, root, "o/kill", flag, workers=[victim], pure=False)
            deadline = time.monotonic() + 120
            while not os.path.exists(flag):
                assert time.monotonic() < deadline and holder.status == "pending", holder
                time.sleep(0.02)
            time.sleep(np.random.default_rng().uniform(0, 0.2))  # land anywhere in the write loop
            assert sum(client.run_on_scheduler(_lock_state)["held"].values()) == 1  # the lease is held
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            holder.cancel()

            # the chunk holds a whole write: rows 0..8 all one value, rows 8..16 untouched
            got = np.asarray(hd.load("o/kill", storage=root))
            assert (got[8:] == -7).all()
            assert len(np.unique(got[:8])) == 1 and got[0, 0] >= 1, np.unique(got[:8])

            # the lease expires, the lock is taken again, and the job is retried to completion
            retry = client.submit(_write_rows, root, "o/kill", 99, pure=False)
            assert retry.result(timeout=120) == 99
            print(f"lock re-acquired and retry done {time.monotonic() - killed_at:.1f} s after the kill")
            _no_lease_held(client)
    got = np.asarray(hd.load("o/kill", storage=root))
    assert (got[:8] == 99).all() and (got[8:] == -7).all()
