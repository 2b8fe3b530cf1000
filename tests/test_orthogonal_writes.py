"""Index-array (orthogonal) writes: one read-modify-write per storage chunk touched, never one per index,
and no lost update when another writer changes other elements of the same chunks at the same time."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import hubdask as hd
from hubdask import locks, write
from hubdask.versioning import store as store_module


def _counting(monkeypatch, module, name):
    """Count the calls of ``module.name`` (the real function still runs)."""
    real, calls = getattr(module, name), []

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.parametrize("codecs", [None, "zarr-only"])
def test_one_write_and_one_lock_per_chunk_touched(tmp_path, monkeypatch, codecs):
    if codecs == "zarr-only":  # a codec chain the chunk engine does not run: the write goes through zarr
        from zarr.codecs import GzipCodec, ZstdCodec

        codecs = [ZstdCodec(), GzipCodec()]
    a = hd.array((10, 8), "t/o", dtype="int32", chunks=(3, 4), codecs=codecs, storage=str(tmp_path))
    ref = np.arange(80, dtype="int32").reshape(10, 8)
    a[...] = ref
    rows = np.array([9, 0, 4, 1, 7, 0])  # no arithmetic run: one write per index before
    cols = np.array([6, 1, 2])
    value = -np.arange(18, dtype="int32").reshape(6, 3)
    puts = _counting(monkeypatch, store_module, "put_version")
    taken = _counting(monkeypatch, write, "chunk_locks")
    a[rows, cols] = value
    ref[np.ix_(rows, cols)] = value  # numpy: a repeated index keeps its last value
    np.testing.assert_array_equal(np.asarray(hd.load("t/o", storage=str(tmp_path))), ref)
    assert len(taken) == 1, "one locked write for the whole assignment"
    touched = {(r // 3, c // 4) for r in rows for c in cols}
    if codecs is None:
        assert len(puts) == len(touched) == 8, "one new version per chunk touched"
    assert sorted(taken[0][0]) == sorted({locks.lock_name(a.frozen_view.source.root.url, "t/o", "main",
                                                          f"c/{i}/{j}") for i, j in touched})


def test_mask_and_index_writes_match_numpy(tmp_path, layout):
    a = hd.array((7, 5, 6), "t/m", dtype="float64", **layout((2, 5, 4)), storage=str(tmp_path))
    ref = np.zeros((7, 5, 6))
    rng = np.random.default_rng(0)
    for _ in range(6):
        rows = rng.integers(0, 7, 4)
        mask = rng.random(6) < 0.5
        v = rng.random((4, 2, int(mask.sum())))
        a[rows, 1:5:2, mask] = v
        ref[np.ix_(rows, [1, 3], np.flatnonzero(mask))] = v
        a[2, [4, 0]] = 9.0
        ref[2, [4, 0]] = 9.0
    np.testing.assert_array_equal(np.asarray(a), ref)


def test_concurrent_index_writes_to_the_same_chunks_lose_nothing(tmp_path, monkeypatch, layout):
    """Two writers, without locks, write different rows of the same chunks at the same time: every
    chunk is a read-modify-write, and each must keep the other's rows (fenced by put_version)."""
    monkeypatch.setenv("HUBDASK_LOCKS", "off")
    a = hd.array((12, 4), "t/c", dtype="int64", **layout((6, 4)), storage=str(tmp_path))
    start = threading.Barrier(2)
    errors = []

    rows = {0: np.array([10, 0, 3, 7, 2]), 1: np.array([1, 11, 4, 5, 9, 6, 8])}  # no arithmetic runs

    def writer(parity: int) -> None:
        mine = hd.load("t/c", storage=str(tmp_path))
        try:
            start.wait()
            for k in range(1, 9):
                mine[rows[parity], :] = k * 10 + parity
        except Exception as exc:  # shown by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    got = np.asarray(a)
    np.testing.assert_array_equal(got[rows[0]], 80)
    np.testing.assert_array_equal(got[rows[1]], 81)
