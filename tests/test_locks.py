"""Chunk locks without a cluster: stripes, modes, ordering, release on error, and the local (thread +
file) locks protecting partial-chunk writes from threads and from separate processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import hubdask as hd
from hubdask import locks
from hubdask.write import aligned_chunks, block_group, partial_chunks, write_region


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """File locks live in the cache folder: each test gets its own."""
    monkeypatch.setenv("HUBDASK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HUBDASK_LOCKS", raising=False)
    monkeypatch.delenv("HUBDASK_LOCK_STRIPES", raising=False)


def _taken_elsewhere(name: str) -> bool:
    """True if stripe ``name``'s lock is held (tried from another thread without blocking)."""
    result = []

    def probe():
        lk = locks._thread_lock(name)
        got = lk.acquire(blocking=False)
        if got:
            lk.release()
        result.append(not got)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return result[0]


def test_stripes_are_stable_bounded_and_spread():
    names = [locks.lock_name("/r", "o/d", "main", f"c/{i}/0") for i in range(5000)]
    stripes = [locks.stripe(n, 64) for n in names]
    assert stripes == [locks.stripe(n, 64) for n in names]  # same in every call (and every process)
    assert len(set(stripes)) == 64  # bounded, and every stripe is used
    counts = np.unique(stripes, return_counts=True)[1]
    assert counts.min() > 5000 / 64 / 3  # no stripe starves or hogs


def test_stripe_count_from_config(monkeypatch):
    monkeypatch.setenv("HUBDASK_LOCK_STRIPES", "3")
    assert len({locks.stripe(f"n{i}") for i in range(200)}) == 3


def test_modes(monkeypatch):
    assert locks.resolve_mode(False) == "off"
    assert locks.resolve_mode(None) == "local"  # no distributed client or worker here
    assert locks.resolve_mode(True) == "local"
    assert locks.resolve_mode("local") == "local"
    monkeypatch.setenv("HUBDASK_LOCKS", "off")
    assert locks.resolve_mode(None) == "off"
    assert locks.resolve_mode(True) == "local"  # an explicit lock=True wins over the setting
    with pytest.raises(ValueError, match="lock='sometimes'"):
        locks.resolve_mode("sometimes")
    monkeypatch.setenv("HUBDASK_LOCKS", "bogus")
    with pytest.raises(ValueError, match="HUBDASK_LOCKS"):
        locks.resolve_mode(None)


def test_distributed_mode_without_a_cluster_is_a_clear_error():
    with pytest.raises(RuntimeError, match="need a dask.distributed Client or worker; none is active"):
        with locks.chunk_locks(["x"], "distributed"):
            pass


def test_locks_are_held_in_the_body_and_released_after():
    name = locks.lock_name("/r", "o/d", "main", "c/0")
    s = locks.stripe(name)
    with locks.chunk_locks([name, name]):
        assert _taken_elsewhere(s)
    assert not _taken_elsewhere(s)


def test_lock_false_and_setting_off_take_nothing(monkeypatch):
    name = locks.lock_name("/r", "o/d", "main", "c/0")
    s = locks.stripe(name)
    with locks.chunk_locks([name], False):
        assert not _taken_elsewhere(s)
    monkeypatch.setenv("HUBDASK_LOCKS", "off")
    with locks.chunk_locks([name]):
        assert not _taken_elsewhere(s)


def test_released_on_error_in_the_body():
    names = [locks.lock_name("/r", "o/d", "main", f"c/{i}") for i in range(5)]
    with pytest.raises(KeyError):
        with locks.chunk_locks(names):
            raise KeyError("boom")
    assert not any(_taken_elsewhere(locks.stripe(n)) for n in names)


def test_released_on_error_while_taking_a_later_lock(monkeypatch):
    names = [locks.lock_name("/r", "o/d", "main", f"c/{i}") for i in range(4)]
    order = sorted({locks.stripe(n) for n in names})
    assert len(order) >= 2
    real = locks._file_lock

    def failing(name, root=None):
        if name == order[-1]:
            raise OSError("lock folder unavailable")
        return real(name)

    monkeypatch.setattr(locks, "_file_lock", failing)
    with pytest.raises(OSError, match="unavailable"):
        with locks.chunk_locks(names):
            pytest.fail("the body must not run")
    assert not any(_taken_elsewhere(s) for s in order)


def test_taken_in_sorted_order(monkeypatch):
    taken = []
    real = locks._file_lock

    def recording(name, root=None):
        taken.append(name)
        return real(name)

    monkeypatch.setattr(locks, "_file_lock", recording)
    names = [locks.lock_name("/r", "o/d", "main", f"c/{i}") for i in range(10)]
    with locks.chunk_locks(list(reversed(names))):
        pass
    assert taken == sorted({locks.stripe(n) for n in names})


def test_opposite_orders_do_not_deadlock(tmp_path):
    """Two threads each repeatedly lock {a, b} listed in opposite orders: both finish."""
    a, b = (locks.lock_name("/r", "o/d", "main", k) for k in ("c/0", "c/1"))
    done = []

    def run(names):
        for _ in range(200):
            with locks.chunk_locks(names):
                pass
        done.append(True)

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in ([a, b], [b, a])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert done == [True, True]


def test_whole_chunk_writes_take_no_lock():
    shape, chunks = (10, 10), (4, 4)
    assert partial_chunks((slice(0, 8, 1), slice(0, 8, 1)), shape, chunks) == []
    # an edge chunk cut by the shape is partial even when covered up to the shape: the array may grow and
    # an appender fill the rest of it (issue 15)
    assert partial_chunks((slice(0, 8, 1), slice(0, 10, 1)), shape, chunks) == [(0, 2), (1, 2)]
    assert partial_chunks((slice(0, 4, 1), slice(0, 3, 1)), shape, chunks) == [(0, 0)]
    assert partial_chunks((5, slice(0, 10, 1)), shape, chunks) == [(1, 0), (1, 1), (1, 2)]
    assert sorted(partial_chunks((slice(3, 9, 1), slice(4, 8, 1)), shape, chunks)) == [(0, 1), (2, 1)]


def test_store_plan_cuts_only_at_chunk_borders():
    """hd.store's blocks: every inner border is a storage chunk border, so no chunk has two writers."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        c = int(rng.integers(1, 20))
        o, n = int(rng.integers(0, 50)), int(rng.integers(1, 200))
        g = int(rng.integers(1, 4))
        (sizes,) = aligned_chunks((o,), (n,), (c,), (g,))
        assert sum(sizes) == n and all(s > 0 for s in sizes)
        borders = np.cumsum(sizes)[:-1] + o
        assert all(b % c == 0 for b in borders)
        assert all(s <= g * c for s in sizes)
    assert block_group(((1000, 1000, 1000), (7, 7)), (512, 8)) == (2, 1)  # about the source's block size
    assert aligned_chunks((3,), (50,), (8,)) == ((5, 8, 8, 8, 8, 8, 5),)


def test_write_region_locks_only_partial_chunks(tmp_path, monkeypatch):
    a = hd.array((8, 8), "o/lk", dtype="int32", chunks=(4, 4), storage=str(tmp_path / "root"))
    seen = []
    real = locks.chunk_locks

    def recording(names, lock=None, root=None):
        seen.append(sorted(names))
        return real(names, lock)

    monkeypatch.setattr("hubdask.write.chunk_locks", recording)
    a[0:4, 0:8] = 1  # two whole chunks
    a[5, 0:4] = 2  # part of chunk (1, 0)
    assert seen[0] == []
    assert len(seen[1]) == 1 and seen[1][0].endswith("c/1/0")
    assert np.asarray(a)[5, :4].tolist() == [2] * 4 and np.asarray(a)[0].tolist() == [1] * 8


def test_threads_writing_rows_of_one_chunk_lose_nothing(tmp_path):
    a = hd.array((32, 64), "o/threads", dtype="int64", chunks=(32, 64), storage=str(tmp_path / "root"))

    def write(i):
        for _ in range(3):
            a[i] = i + 1

    threads = [threading.Thread(target=write, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = np.asarray(hd.load("o/threads", storage=str(tmp_path / "root")))
    assert [i for i in range(32) if (got[i] != i + 1).any()] == []


def test_processes_sharing_a_local_root_lose_nothing(tmp_path):
    """Separate processes on one machine are coordinated by the file locks."""
    root = str(tmp_path / "root")
    hd.array((24, 256), "o/procs", dtype="int64", chunks=(24, 256), storage=root)
    code = """
        import sys, hubdask as hd
        a = hd.load("o/procs", storage=sys.argv[1])
        for _ in range(3):
            for i in range(int(sys.argv[2]), 24, 3):
                a[i] = i + 1
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), root, str(k)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    got = np.asarray(hd.load("o/procs", storage=root))
    assert [i for i in range(24) if (got[i] != i + 1).any()] == []


def test_write_region_holds_the_lock_during_the_read_modify_write(tmp_path, monkeypatch):
    """A write waits while another holder has its chunk's stripe."""
    a = hd.array((4, 4), "o/wait", dtype="int32", chunks=(4, 4), storage=str(tmp_path / "root"))
    name = locks.lock_name(a._source.root.url, a._source.ds, a._source.branch, "c/0/0")
    finished = threading.Event()

    def write():
        write_region(a._source, (slice(0, 1, 1), slice(0, 4, 1)), np.ones((1, 4), "int32"), (4, 4), (4, 4))
        finished.set()

    with locks.chunk_locks([name]):
        t = threading.Thread(target=write)
        t.start()
        assert not finished.wait(0.5)  # blocked behind us
    t.join(30)
    assert finished.is_set()
    assert np.asarray(a)[0].tolist() == [1, 1, 1, 1]
