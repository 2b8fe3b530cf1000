"""Resize and append under version control (issue 15): time travel, shrink-then-grow, merges of shapes,
and concurrent appenders (threads, processes racing commits, a LocalCluster) with exact final content."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import hubdask as hd
from hubdask.errors import ConflictError, ReadOnlyError
from hubdask.storage import open_root
from hubdask.versioning import refs


@pytest.fixture(params=["local", "s3"])
def any_root(request, tmp_path):
    return str(tmp_path / "root") if request.param == "local" else request.getfixturevalue("s3_root")


def rows(owner: int, k: int, width: int = 2) -> np.ndarray:
    """k rows that say who appended them and which they are: row r of owner o is o * 1000 + r."""
    return np.repeat((owner * 1000 + np.arange(k))[:, None], width, axis=1).astype("int64")


def check_appends(values: np.ndarray, regions: dict[int, list[tuple[int, int]]], k_of: dict[int, int]) -> None:
    """Every appender's regions hold exactly its rows, none overlaps, together they cover the array."""
    spans = sorted((a, b, o) for o, rs in regions.items() for a, b in rs)
    assert spans[0][0] == 0 and spans[-1][1] == len(values)
    for (a0, b0, _), (a1, _, _) in zip(spans, spans[1:]):
        assert b0 == a1, "regions overlap or leave a hole"
    for a, b, o in spans:
        assert b - a == k_of[o]
        np.testing.assert_array_equal(values[a:b], rows(o, b - a))


# --- resize, time travel, fill --------------------------------------------------------------------

def test_resize_time_travel_and_bounds(any_root):
    a = hd.array((10, 3), "t/r", dtype="int64", chunks=(4, 2), storage=any_root)
    a[:] = np.arange(30).reshape(10, 3)
    c10 = a.commit("ten rows")
    a.tag("ten")
    a.resize((14, 5))
    assert a.shape == (14, 5)
    expect = np.zeros((14, 5), "int64")
    expect[:10, :3] = np.arange(30).reshape(10, 3)
    np.testing.assert_array_equal(np.asarray(a), expect)
    c14 = a.commit("grown")
    a.resize((6, 2))
    with pytest.raises(IndexError, match="t/r"):
        a[7, 0]
    with pytest.raises(IndexError):
        a[0, 3] = 1
    np.testing.assert_array_equal(np.asarray(a), expect[:6, :2])
    c6 = a.commit("shrunk")
    # older commits and tags keep their shape and values
    assert hd.load(f"t/r:{c10}", storage=any_root).shape == (10, 3)
    assert hd.load("t/r:ten", storage=any_root).shape == (10, 3)
    np.testing.assert_array_equal(np.asarray(hd.load(f"t/r:{c14}", storage=any_root)), expect)
    assert hd.load(f"t/r:{c6}", storage=any_root).shape == (6, 2)
    with pytest.raises(ReadOnlyError, match="t/r"):
        hd.load("t/r:ten", storage=any_root).resize((20, 3))
    # growing again never resurrects the values cut off: they read as the fill value
    a.resize((12, 4))
    grown = np.zeros((12, 4), "int64")
    grown[:6, :2] = expect[:6, :2]
    np.testing.assert_array_equal(np.asarray(a), grown)
    a.commit("regrown")
    np.testing.assert_array_equal(np.asarray(hd.load("t/r", storage=any_root)), grown)
    # chunks wholly outside the shrunk shape stopped counting (deleted in the shrink's commit)
    keys = a._repo.graph.chunk_map(c6)
    assert not [k for k in keys if k.startswith("c/") and int(k.split("/")[1]) * 4 >= 6]


def test_resize_bad_input_names_the_dataset(tmp_path):
    a = hd.array((4,), "t/bad", dtype="int64", chunks=(2,), storage=str(tmp_path))
    with pytest.raises(ValueError, match="t/bad.*1 non-negative"):
        a.resize((4, 4))
    with pytest.raises(ValueError, match="t/bad.*1 non-negative"):
        a.resize((-1,))
    with pytest.raises(ValueError, match="t/bad.*shape"):
        a.append(np.zeros((2, 2), "int64"))
    with pytest.raises(ValueError, match="t/bad.*whole array"):
        a[1:].append(np.zeros(2, "int64"))
    assert a.shape == (4,) and hd.load("t/bad", storage=str(tmp_path)).shape == (4,)


def test_other_handles_follow_the_shape(tmp_path):
    root = str(tmp_path)
    a = hd.array((0, 2), "t/f", dtype="int64", chunks=(3, 2), storage=root)
    b = hd.load("t/f", storage=root)
    assert a.append(rows(1, 5)) == (slice(0, 5), slice(0, 2))
    assert b.shape == (0, 2)  # a handle's shape is what it last saw ...
    np.testing.assert_array_equal(np.asarray(b), rows(1, 5))  # ... a read follows the branch
    b[4] = [7, 7]  # a write past a stale shape looks again
    assert np.asarray(a)[4].tolist() == [7, 7]


def test_a_handle_that_wrote_follows_an_append_made_since(any_root):
    """Found by the torture checker (a read missing a returned append): a handle whose last append sits
    in an older open node writes again after another handle committed and appended; the write lands at
    the new head, whose metadata is a version with the same number in another node. Its reads must show
    the other append's rows, on a local root and on S3 (each read path)."""
    a = hd.array((0, 2), "t/w", dtype="int64", chunks=(3, 2), storage=any_root)
    a.append(rows(1, 2))  # a's source: version 1 of the metadata in node N1
    c = hd.load("t/w", storage=any_root)  # a reader that never writes
    np.testing.assert_array_equal(np.asarray(c), rows(1, 2))
    b = hd.load("t/w", storage=any_root)
    b.commit("c")
    b.append(rows(2, 5))  # version 1 in node N2, on the new commit
    a[0] = [7, 7]  # lands at the head of N2
    expected = np.concatenate([[[7, 7]], rows(1, 2)[1:], rows(2, 5)])
    np.testing.assert_array_equal(np.asarray(a), expected)
    assert a.shape == (7, 2)
    np.testing.assert_array_equal(np.asarray(c), expected)


def test_append_edge_chunk_from_two_handles(tmp_path):
    """A write that covers all of an edge chunk's in-bounds part is a partial write: a second appender's
    rows in the same chunk survive it (the edge chunk is read-modified-written)."""
    root = str(tmp_path)
    a = hd.array((0, 2), "t/e", dtype="int64", chunks=(4, 2), storage=root)
    b = hd.load("t/e", storage=root)
    a.append(rows(1, 2))
    b.append(rows(2, 1))
    a[0:2] = rows(1, 2)  # a stale-shaped whole write of rows 0..1 (in-bounds part of chunk 0 for shape 2)
    check_appends(np.asarray(b), {1: [(0, 2)], 2: [(2, 3)]}, {1: 2, 2: 1})


# --- concurrent appenders -------------------------------------------------------------------------

def test_threads_append_concurrently(any_root):
    a = hd.array((0, 2), "t/th", dtype="int64", chunks=(4, 2), storage=any_root)
    per, k_of = 6, {o: 1 + o % 3 for o in range(8)}

    def appender(o):
        h = hd.load("t/th", storage=any_root)
        return o, [h.append(rows(o, k_of[o]))[0] for _ in range(per)]

    with ThreadPoolExecutor(8) as ex:
        done = dict(ex.map(appender, range(8)))
    regions = {o: [(s.start, s.stop) for s in rs] for o, rs in done.items()}
    final = hd.load("t/th", storage=any_root)
    assert final.shape == (per * sum(k_of.values()), 2)
    for o in regions:  # each appender appended the same rows several times: check one region at a time
        for a0, b0 in regions[o]:
            np.testing.assert_array_equal(np.asarray(final[a0:b0]), rows(o, k_of[o]))
    spans = sorted(r for rs in regions.values() for r in rs)
    assert all(b == c for (_, b), (c, _) in zip(spans, spans[1:])) and spans[-1][1] == final.shape[0]
    a.commit("appended")
    assert hd.load("t/th", storage=any_root).shape == final.shape


APPENDER = """
import json, sys, numpy as np, hubdask as hd
root, owner, k, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
a = hd.load("t/p", storage=root)
out = []
for _ in range(n):
    r = a.append(np.repeat((owner * 1000 + np.arange(k))[:, None], 2, axis=1).astype("int64"))[0]
    out.append([r.start, r.stop])
print(json.dumps(out))
"""

COMMITTER = """
import os, sys, time, hubdask as hd
root, stop, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
a = hd.load("t/p", storage=root)
n = 0
while not os.path.exists(stop):
    a.commit(f"racing commit {n}")
    n += 1
    time.sleep(pause)
print(n)
"""


def _spawn(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_processes_append_while_commits_race(any_root, tmp_path):
    """Three appender processes and a process committing the same branch in a loop: every commit claims
    a head and prunes older names while appenders resolve the head and reserve rows."""
    hd.array((0, 2), "t/p", dtype="int64", chunks=(4, 2), storage=any_root)
    stop = str(tmp_path / "stop")
    # locally the committer commits back to back; on moto (each commit some round trips, the machine
    # shared) a commit every 0.1 s still lands many commits inside appends
    remote = any_root.startswith("s3://")
    committer = _spawn(COMMITTER, any_root, stop, "0.1" if remote else "0")
    k_of, n = {1: 3, 2: 5, 3: 4}, 5 if remote else 8
    appenders = {o: _spawn(APPENDER, any_root, str(o), str(k), str(n)) for o, k in k_of.items()}
    regions = {}
    try:
        for o, p in appenders.items():
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
            regions[o] = [tuple(r) for r in json.loads(out)]
    finally:
        open(stop, "w").close()
        for p in appenders.values():
            if p.poll() is None:
                p.kill()
    out, err = committer.communicate(timeout=600)
    assert committer.returncode == 0, err
    assert int(out) > 0
    a = hd.load("t/p", storage=any_root)
    assert a.shape == (n * sum(k_of.values()), 2)
    values = np.asarray(a)
    spans = sorted((s, e, o) for o, rs in regions.items() for s, e in rs)
    assert spans[0][0] == 0 and spans[-1][1] == a.shape[0]
    for (_, e0, _), (s1, _, _) in zip(spans, spans[1:]):
        assert e0 == s1
    for s, e, o in spans:
        np.testing.assert_array_equal(values[s:e], rows(o, e - s))
    a.commit("final")
    np.testing.assert_array_equal(np.asarray(hd.load("t/p", storage=any_root)), values)


def _append_task(root: str, owner: int, k: int) -> tuple[int, int]:
    a = hd.load("t/c", storage=root)
    r = a.append(rows(owner, k))[0]
    return r.start, r.stop


def test_cluster_appenders(any_root, tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    monkeypatch.setenv("HUBDASK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HUBDASK_LOCKS", raising=False)
    hd.array((0, 2), "t/c", dtype="int64", chunks=(4, 2), storage=any_root)
    k_of = {o: 1 + o % 4 for o in range(16)}
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=2, dashboard_address=":0") as lc, \
            distributed.Client(lc) as client:
        futures = [client.submit(_append_task, any_root, o, k, pure=False) for o, k in k_of.items()]
        got = dict(zip(k_of, client.gather(futures)))
    a = hd.load("t/c", storage=any_root)
    assert a.shape == (sum(k_of.values()), 2)
    check_appends(np.asarray(a), {o: [r] for o, r in got.items()}, k_of)


def test_dataset_append_keeps_samples_together(any_root):
    ds = hd.dataset("t/ds", storage=any_root, images=dict(shape=(0, 2, 2), dtype="int64", chunks=(3, 2, 2)),
                    labels=dict(shape=(0,), dtype="int64", chunks=(5,)))

    def appender(o):
        h = hd.load("t/ds", storage=any_root)
        out = []
        for i in range(4):
            k = 1 + (o + i) % 3
            lab = o * 1000 + i * 10 + np.arange(k)
            out.append(h.append({"images": np.broadcast_to(lab[:, None, None], (k, 2, 2)), "labels": lab})[0])
        return out

    with ThreadPoolExecutor(4) as ex:
        regions = [r for rs in ex.map(appender, range(4)) for r in rs]
    ds = hd.load("t/ds", storage=any_root)
    images, labels = np.asarray(ds["images"]), np.asarray(ds["labels"])
    assert len(labels) == len(images) == sum(r.stop - r.start for r in regions)
    for r in regions:
        assert len(set(labels[r] // 10)) == 1  # one batch, from one appender's one call
    np.testing.assert_array_equal(images[:, 1, 1], labels)
    with pytest.raises(ValueError, match="t/ds.*every array"):
        ds.append({"labels": np.zeros(2)})


def test_store_grow_one_task_per_block(any_root):
    import dask.array as da

    a = hd.array((0, 3), "t/g", dtype="float64", chunks=(4, 3), storage=any_root)

    def block(i):
        hd.store(da.full((5, 3), float(i), chunks=(5, 3)), hd.load("t/g", storage=any_root),
                 region=(slice(5 * i, 5 * i + 5), slice(0, 3)), grow=True)

    with ThreadPoolExecutor(4) as ex:
        list(ex.map(block, range(6)))
    a = hd.load("t/g", storage=any_root)
    assert a.shape == (30, 3)
    np.testing.assert_array_equal(np.asarray(a)[:, 0], np.repeat(np.arange(6.0), 5))
    with pytest.raises(ValueError, match="t/g.*explicit stops"):
        hd.store(np.zeros((2, 3)), a, region=(slice(40, None),), grow=True)


# --- the worst instant: head resolution while a commit claims and prunes ----------------------------

@pytest.mark.parametrize("keep", [refs.KEEP, 1])
def test_head_resolves_mid_prune(tmp_path, monkeypatch, keep):
    """Hold a commit between its deletes of old head names and the put of its own name (the instant
    where a reader could find no name): the head still resolves, and an append then lands exactly once.
    With KEEP=1 (every name before the new one deleted) the listing at that instant holds no head name
    at all: the hazard is real, and the kept name (or, failing it, the claims) is what resolves it."""
    root_url = str(tmp_path / "root")
    a = hd.array((0, 2), "t/m", dtype="int64", chunks=(4, 2), storage=root_url)
    for i in range(3):
        a.append(rows(i, 2))
        a.commit(f"c{i}")
    monkeypatch.setattr(refs, "KEEP", keep)
    root = a._source.root
    deleted, release = threading.Event(), threading.Event()
    real_put, real_delete = root.put_async, root.delete_async
    prefix = refs.head_prefix("t/m", "main")

    async def put(key, data):
        if key.startswith(prefix) and key[len(prefix):].split(".")[0].isdigit():
            import asyncio

            await asyncio.to_thread(deleted.wait)
            await asyncio.to_thread(release.wait)
        return await real_put(key, data)

    async def delete(key):
        out = await real_delete(key)
        deleted.set()
        return out

    monkeypatch.setattr(root, "put_async", put)
    monkeypatch.setattr(root, "delete_async", delete)
    before = refs.read_head(root, "t/m", "main")
    b = hd.load("t/m", storage=root_url)
    committer = threading.Thread(target=lambda: b.commit("held mid-prune"))
    committer.start()
    assert deleted.wait(60)
    listed = refs._list(root, "t/m", "main").seqs
    during = refs.read_head(root, "t/m", "main")
    assert during is not None and during.seq >= before.seq
    if keep == 1:
        assert listed == []
        refs._SEEN.clear()  # a process that never saw the branch has only the listing: then the branch is
        assert refs.read_head(root, "t/m", "main") is None  # missing, what KEEP=2 prevents
        release.set()
        committer.join()
        return
    assert listed and during.seq == before.seq
    appended = {}
    appender = threading.Thread(target=lambda: appended.setdefault("r", hd.load("t/m", storage=root_url)
                                                                   .append(rows(9, 3))[0]))
    appender.start()
    release.set()
    committer.join()
    appender.join()
    monkeypatch.undo()
    final = np.asarray(hd.load("t/m", storage=root_url))
    r = appended["r"]
    assert final.shape == (9, 2) and (r.start, r.stop) == (6, 9)
    np.testing.assert_array_equal(final[6:9], rows(9, 3))


# --- merges of shapes ------------------------------------------------------------------------------

def test_merge_resized_branch_into_unresized(any_root):
    a = hd.array((6, 2), "t/mg", dtype="int64", chunks=(4, 2), storage=any_root)
    a[:] = np.arange(12).reshape(6, 2)
    a.commit("base")
    exp = a.branch("exp")
    exp.append(rows(5, 5))  # grows exp to 11 rows; its edge chunk 1 (rows 4..7) changes
    exp.commit("appended on exp")
    a[5] = [-1, -1]  # main changes an element of the same edge chunk, without resizing
    a.commit("edit on main")
    a.merge("exp")
    assert a.shape == (11, 2)
    expect = np.concatenate([np.arange(12).reshape(6, 2), rows(5, 5)])
    expect[5] = -1
    np.testing.assert_array_equal(np.asarray(hd.load("t/mg", storage=any_root)), expect)


def test_merge_both_appended_conflicts_unless_strategy(any_root):
    a = hd.array((0, 2), "t/mc", dtype="int64", chunks=(4, 2), storage=any_root)
    a.append(rows(1, 2))
    a.commit("base")
    exp = a.branch("exp")
    exp.append(rows(2, 3))
    exp.commit("exp appends")
    a.append(rows(3, 1))
    a.commit("main appends")
    with pytest.raises(ConflictError, match=r"t/mc.*ours \(3, 2\), theirs \(5, 2\)"):
        a.merge("exp")
    assert hd.load("t/mc", storage=any_root).shape == (3, 2)
    a.merge("exp", strategy="theirs")
    merged = hd.load("t/mc", storage=any_root)
    assert merged.shape == (5, 2)
    np.testing.assert_array_equal(np.asarray(merged), np.concatenate([rows(1, 2), rows(2, 3)]))


def test_merge_shrunk_branch_drops_chunks_outside(any_root):
    a = hd.array((12,), "t/ms", dtype="int64", chunks=(4,), storage=any_root)
    a[:] = np.arange(12)
    a.commit("base")
    exp = a.branch("exp")
    exp.resize((4,))
    exp.commit("shrunk")
    a.merge("exp")
    assert a.shape == (4,)
    a.resize((12,))
    np.testing.assert_array_equal(np.asarray(a), np.r_[np.arange(4), np.zeros(8, "int64")])


@pytest.mark.parametrize("shrinker", ["ours", "theirs"])
def test_merge_shrink_then_grow_never_resurrects(any_root, shrinker):
    """One side shrinks, the other writes into edge chunks the shrink never stored (so it reset nothing
    there), inside and beyond the shrunk shape: the merge keeps what is inside, and growing after it reads
    the fill value beyond, whichever side's chunk the merge kept."""
    a = hd.array((10, 4), "t/me", dtype="int64", chunks=(4, 2), storage=any_root)
    a[:4, :2] = 1  # only chunk (0, 0) is stored
    a.commit("base")
    exp = a.branch("exp")
    small, writer = (a, exp) if shrinker == "ours" else (exp, a)
    small.resize((6, 3))
    small.commit("shrunk")
    writer[7, 1] = 71  # chunk (1, 0): beyond the row edge
    writer[2, 3] = 23  # chunk (0, 1): beyond the column edge
    writer[5, 2] = 52  # chunk (1, 1): inside ...
    writer[5, 3] = 53  # ... and beyond the column edge in the same chunk
    writer.commit("written")
    a.merge("exp")
    want = np.zeros((10, 4), "int64")
    want[:4, :2] = 1
    want[5, 2] = 52
    np.testing.assert_array_equal(np.asarray(hd.load("t/me", storage=any_root)), want[:6, :3])
    a.resize((10, 4))
    np.testing.assert_array_equal(np.asarray(a), want)
    a.commit("regrown")
    np.testing.assert_array_equal(np.asarray(hd.load("t/me", storage=any_root)), want)


def test_sharded_resize_and_append(any_root):
    a = hd.array((0, 4), "t/sh", dtype="int64", chunks=(2, 4), shards=(4, 4), storage=any_root)
    for o in range(3):
        a.append(np.repeat((o * 1000 + np.arange(3))[:, None], 4, axis=1))
    assert a.shape == (9, 4)
    want = np.concatenate([np.repeat((o * 1000 + np.arange(3))[:, None], 4, axis=1) for o in range(3)])
    np.testing.assert_array_equal(np.asarray(a), want)
    a.resize((5, 4))
    a.resize((9, 4))
    want[5:] = 0
    np.testing.assert_array_equal(np.asarray(a), want)
    a.commit("sharded")
    np.testing.assert_array_equal(np.asarray(hd.load("t/sh", storage=any_root)), want)


def test_log_diff_cli_and_repr_show_shape_changes(tmp_path):
    root = str(tmp_path / "root")
    a = hd.array((4, 2), "t/l", dtype="int64", chunks=(2, 2), storage=root)
    first = a.commit("first")
    a.append(rows(1, 3))
    assert "resized; 4 × 2 at the last commit" in a._repr_html_()
    a.commit("appended")
    assert a.shape_changes(a.log()[0]) == {"": ((4, 2), (7, 2))}
    assert a.shape_changes(first) == {}
    meta = [c for c in a.diff(first) if c.key == "zarr.json"]
    assert meta and meta[0].shape == ((4, 2), (7, 2))
    env = {"HUBDASK_ROOT": root}
    from helpers import run_python

    out = run_python("from hubdask.cli import main; main(['log', 't/l'])", env)
    assert out.returncode == 0 and "appended  [3 changed]  (shape: 4 x 2 -> 7 x 2)" in out.stdout, out.stderr
    a.resize((2, 2))
    out = run_python("from hubdask.cli import main; main(['info', 't/l'])", env)
    assert "2 x 2 (resized: 7 x 2 at the last commit)" in out.stdout, out.stderr


@pytest.mark.parametrize("instant", ["before the reservation", "after the reservation"])
def test_commit_seals_the_node_around_a_reservation(tmp_path, monkeypatch, instant):
    """A commit of the branch exactly when an appender reserves: before its version lands (the commit
    misses it: the rows are reserved again on the next node) or after (the commit holds it: the rows
    stand). Either way no hole, no overlap, and the values land."""
    from hubdask import grow
    from hubdask.versioning import repository

    root = str(tmp_path / "root")
    a = hd.array((0, 2), "t/sr", dtype="int64", chunks=(4, 2), storage=root)
    a.append(rows(1, 3))
    a.commit("three rows")
    other = hd.load("t/sr", storage=root)
    fired = []

    def commit_once():
        if not fired:
            fired.append(other.commit(f"commit {instant}"))

    if instant == "before the reservation":
        real = grow.refs.mark_meta

        async def mark_meta(*args):
            await real(*args)
            await asyncio.to_thread(commit_once)  # a commit of another handle, from its own thread
        monkeypatch.setattr(grow.refs, "mark_meta", mark_meta)
    else:
        repo = repository(a._source.root, "t/sr")
        real_seal = repo.seal

        def seal(node):
            commit_once()
            return real_seal(node)
        monkeypatch.setattr(repo, "seal", seal)
    region = a.append(rows(2, 2))
    monkeypatch.undo()
    assert fired and region == (slice(3, 5), slice(0, 2))
    final = hd.load("t/sr", storage=root)
    assert final.shape == (5, 2)
    np.testing.assert_array_equal(np.asarray(final), np.concatenate([rows(1, 3), rows(2, 2)]))
    committed = hd.load(f"t/sr:{fired[0]}", storage=root).shape
    assert committed == ((3, 2) if instant == "before the reservation" else (5, 2))


def test_two_appenders_growing_to_the_same_shape_get_their_own_rows(s3_root, monkeypatch):
    """The worst instant for a reservation on S3: two appenders (no lock between them: the conditional
    write alone) read the same shape and create the same metadata version at once. The loser's create
    fails, and must not count as its own although the object's shape is the very one it wanted (a create
    whose answer was lost counts as ours when the object holds our bytes): each gets its own rows."""
    from hubdask import grow

    hd.array((0, 2), "t/same", dtype="int64", chunks=(4, 2), storage=s3_root)
    both = threading.Barrier(2)
    real = grow.put_version

    async def together(*args, **kwargs):
        if kwargs.get("based_on") == 0:
            await asyncio.to_thread(both.wait, 30)  # both read version 0 (0 rows) and now create version 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(grow, "put_version", together)
    handles = [hd.load("t/same", storage=s3_root) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        regions = list(pool.map(lambda i: handles[i].append(rows(10 * (i + 1), 3), lock=False), range(2)))
    assert sorted(r[0].start for r in regions) == [0, 3]
    got = np.asarray(hd.load("t/same", storage=s3_root))
    assert got.shape == (6, 2)
    for i, r in enumerate(regions):
        np.testing.assert_array_equal(got[r], rows(10 * (i + 1), 3))
