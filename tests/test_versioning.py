"""Version control: commits, time travel, read-only refs, branches, merge, copy-on-write, atomic refs, gc."""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import unquote

import numpy as np
import pytest
import zarr

import hubdask as hd
from hubdask.storage import open_root

from helpers import committed_object, internal, run_python, snapshot


def test_issue_example(root, layout):
    a = hd.array((30, 4), name="vc/arr", dtype="int32", **layout((10, 4)), storage=root)
    a[0] = 1
    c1 = a.commit("first")
    a[0] = 2
    tagged = a.tag("v1")  # pending writes are committed first, then tagged
    np.testing.assert_array_equal(hd.load(f"vc/arr:{c1}", storage=root)[0].read(), [1, 1, 1, 1])
    np.testing.assert_array_equal(hd.load("vc/arr:v1", storage=root)[0].read(), [2, 2, 2, 2])
    assert hd.load("vc/arr:v1", storage=root).commit_id == tagged
    with pytest.raises(hd.ReadOnlyError, match="vc/arr"):
        hd.load("vc/arr:v1", storage=root)[0] = 7
    with pytest.raises(PermissionError):
        hd.load(f"vc/arr:{c1}", storage=root)[0] = 7
    e = a.branch("exp")
    e[12] = 5
    e.commit("exp change")
    main = hd.load("vc/arr:main", storage=root)
    main.merge("exp")
    np.testing.assert_array_equal(hd.load("vc/arr", storage=root)[12].read(), [5, 5, 5, 5])
    assert [c.message for c in main.log()][1:] == ["commit before tag v1", "first", "created"]
    changes = hd.load("vc/arr", storage=root).diff("v1")
    assert [(c.key, c.region) for c in changes] == [("c/1/0", (slice(10, 20), slice(0, 4)))]
    np.testing.assert_array_equal(hd.load(f"vc/arr:{c1}", storage=root)[0].read(), [1, 1, 1, 1])  # forever


def test_first_branch_from_name_suffix(root):
    a = hd.array((4,), name="s/x:v0", dtype="uint8", storage=root)
    assert a.branch_name == "v0" and a.branches == ["v0"]
    a[1] = 3
    assert hd.load("s/x", storage=root)[1].read() == 3  # no REF means the dataset's first branch


def test_branch_readers_see_writes_commit_readers_do_not(root):
    a = hd.array((20,), name="r/a", dtype="int16", chunks=(5,), storage=root)
    reader = hd.load("r/a", storage=root)
    cid = a.commit("empty")
    fixed = hd.load(f"r/a:{cid}", storage=root)
    a[3] = 9
    assert reader[3].read() == 9  # a branch reader sees every returned write
    a.commit("nine")
    a[4] = 8  # after a commit, into the new open node
    assert reader[4].read() == 8 and reader[3].read() == 9
    assert fixed.read().sum() == 0


def test_copy_on_write_storage_growth(tmp_path):
    root = str(tmp_path / "r")
    a = hd.array((1000, 100), name="cow/a", dtype="float64", chunks=(100, 100), storage=root)
    a[:] = np.random.default_rng(0).random((1000, 100))
    a.commit("full")

    def size() -> int:  # after gc has reclaimed the branch's old working copies
        hd.gc("cow/a", storage=root, dry_run=False, grace=0)
        return sum(len(v) for v in snapshot(root).values())

    before = size()
    for i in range(5):
        a[i * 100, 0] = -1.0
        a.commit(f"one element {i}")
    grown = size() - before
    chunk_bytes = 100 * 100 * 8
    assert grown < 5 * chunk_bytes * 1.3  # about one chunk per commit, not a copy of the array


def test_commit_cost_does_not_grow_with_array_size(tmp_path):
    root = str(tmp_path / "r")
    a = hd.array((10**10, 16), name="huge/a", dtype="uint8", chunks=(1000, 16), storage=root)
    a[5 * 10**9] = 1
    cid = a.commit("one chunk of a 1e10-row array")
    rec = a._repo.graph.get(cid)
    assert list(rec.changes) == [f"c/{5 * 10**6}/0"]
    assert hd.load(f"huge/a:{cid}", storage=root)[5 * 10**9].read().tolist() == [1] * 16


def test_deep_history_resolves_in_memory(tmp_path):
    root = str(tmp_path / "r")
    a = hd.array((200, 10), name="deep/a", dtype="int32", chunks=(10, 10), storage=root)
    model = np.zeros((200, 10), "int32")
    for i in range(20):
        a[i * 10 : i * 10 + 3] = i + 1
        model[i * 10 : i * 10 + 3] = i + 1
        a.commit(f"c{i}")
    tip = hd.load("deep/a", storage=root).commit_id
    repo = a._repo
    chunk_map = repo.graph.chunk_map(tip)
    assert len(chunk_map) == 21  # 20 chunks + metadata, resolved once for the whole history
    v = hd.load(f"deep/a:{tip}", storage=root)
    fetched = []
    real_get = type(repo.root).get_async

    async def recording_get(self, key):
        fetched.append(key)
        return await real_get(self, key)

    type(repo.root).get_async = recording_get
    try:
        out = v.read()
        again = v[5:150].compute()
    finally:
        type(repo.root).get_async = real_get
    np.testing.assert_array_equal(out, model)
    np.testing.assert_array_equal(again, model[5:150])
    assert not [k for k in fetched if "/commits/" in k or "/refs/" in k]  # no walk over the history


def test_three_way_merge(root, layout):
    a = hd.array((6, 6), name="m/a", dtype="float32", **layout((3, 3)), storage=root)
    a[:] = 0
    a.commit("base")
    b = a.branch("feature")
    a[0, 0] = 1          # chunk (0,0) on main
    b[0, 1] = 2          # same chunk on feature: element-wise merge
    b[4, 4] = 3          # chunk (1,1) only on feature: taken as is
    a[2, 2] = 5
    b[2, 2] = 5          # same change on both: fine
    a.commit("main work")
    b.commit("feature work")
    mid = a.merge("feature")
    model = np.zeros((6, 6), "float32")
    model[0, 0], model[0, 1], model[4, 4], model[2, 2] = 1, 2, 3, 5
    np.testing.assert_array_equal(hd.load("m/a", storage=root).read(), model)
    assert hd.load(f"m/a:{mid}", storage=root).log()[0].parents[1] == b.commit_id


def test_merge_conflict_changes_nothing_then_strategies(root, layout):
    a = hd.array((4, 4), name="mc/a", dtype="int8", **layout((2, 2)), storage=root)
    a.commit("base")
    b = a.branch("other")
    a[0, 0], a[3, 3] = 1, 1
    b[0, 0], b[3, 3], b[1, 1] = 2, 2, 2
    a.commit("ours")
    b.commit("theirs")
    before = snapshot(root)
    with pytest.raises(hd.ConflictError, match=r"2 chunks, 2 elements") as info:
        a.merge("other")
    assert "mc/a" in str(info.value) and "c/0/0" in str(info.value)
    assert snapshot(root) == before
    a.merge("other", strategy="ours")
    out = hd.load("mc/a", storage=root).read()
    assert out[0, 0] == 1 and out[3, 3] == 1 and out[1, 1] == 2
    c = hd.load("mc/a:other", storage=root)
    c.merge("main", strategy="theirs")
    assert hd.load("mc/a:other", storage=root)[0, 0].read() == 1


def test_ref_errors_leave_storage_unchanged(root):
    a = hd.array((4,), name="re/a", dtype="uint8", storage=root)
    a.commit("one")
    a.tag("t1")
    a.branch("b1")
    hd.array((4,), name="re/other", dtype="uint8", storage=root).commit("x")
    before = snapshot(root)
    with pytest.raises(hd.NotFoundError, match="re/a"):
        hd.load("re/a:nothing", storage=root)
    with pytest.raises(hd.AlreadyExistsError, match="t1"):
        a.tag("t1")
    with pytest.raises(hd.AlreadyExistsError, match="b1"):
        a.tag("b1")
    with pytest.raises(hd.AlreadyExistsError, match="t1"):
        a.branch("t1")
    with pytest.raises(hd.InvalidNameError):
        a.branch("bad/name")
    other_commit = hd.load("re/other", storage=root).commit_id
    with pytest.raises(hd.NotFoundError):
        a.merge(other_commit)  # a commit of another dataset is unknown here
    with pytest.raises(hd.ReadOnlyError):
        hd.load("re/a:t1", storage=root).commit("no")
    assert snapshot(root) == before


def test_unrelated_histories_refuse_to_merge(tmp_path):
    root = str(tmp_path / "r")
    a = hd.array((4,), name="u/a", dtype="uint8", storage=root)
    a.commit("main history")
    repo = a._repo
    repo.create_branch("orphan", None)  # a branch with a history of its own
    zarr.create_array(repo.store(repo.resolve("orphan")), shape=(4,), dtype="uint8", chunks=(4,))
    repo.commit("orphan", "orphan root")
    before = snapshot(root)
    with pytest.raises(hd.ConflictError, match="unrelated"):
        a.merge("orphan")
    assert snapshot(root) == before


def test_delete_refs_and_gc(root, layout):
    a = hd.array((40,), name="g/a", dtype="int64", **layout((10,)), storage=root)
    a[:] = np.arange(40)
    keep = a.commit("keep")
    b = a.branch("tmp")
    b[0:20] = -1
    b.commit("to be dropped")
    a.tag("release")
    assert len(hd.gc("g/a", storage=root, grace=0)) == 0  # commits pin the versions they hold: no copies left
    np.testing.assert_array_equal(hd.load("g/a:tmp", storage=root)[:20].read(), [-1] * 20)
    a.delete_branch("tmp")
    report = hd.gc("g/a", storage=root, grace=0)
    assert len([k for k in report.unreachable if "/c/" in k]) == 2
    assert any(k.startswith("commits/") for k in report.unreachable)
    before = snapshot(root)
    assert snapshot(root) == before  # dry run deleted nothing
    done = hd.gc("g/a", storage=root, dry_run=False, grace=0)
    assert done.deleted and len(hd.gc("g/a", storage=root, grace=0)) == 0
    np.testing.assert_array_equal(hd.load(f"g/a:{keep}", storage=root).read(), np.arange(40))
    np.testing.assert_array_equal(hd.load("g/a:release", storage=root).read(), np.arange(40))
    a.delete_tag("release")
    with pytest.raises(hd.NotFoundError):
        hd.load("g/a:release", storage=root)
    young = hd.gc("g/a", storage=root)  # default grace spares recent nodes
    assert len(young) == 0


def test_writes_racing_commits_are_never_lost(tmp_path, layout):
    """Writers keep writing while another thread commits: every write lands in some commit."""
    root = str(tmp_path / "r")
    a = hd.array((120, 2), name="race/a", dtype="int32", **layout((4, 2)), storage=root)
    stop = threading.Event()
    commits = []

    def committer():
        c = hd.load("race/a", storage=root)
        while not stop.is_set():
            commits.append(c.commit("tick"))
            time.sleep(0.005)

    t = threading.Thread(target=committer)
    t.start()
    w = hd.load("race/a", storage=root)
    for i in range(120):
        w[i] = i + 1
    stop.set()
    t.join()
    final = hd.load("race/a", storage=root)
    final.commit("last")
    assert len(commits) > 3
    np.testing.assert_array_equal(hd.load("race/a", storage=root)[:, 0].read(), np.arange(1, 121))


def test_two_processes_commit_one_branch(tmp_path):
    root = str(tmp_path / "r")
    hd.array((100,), name="cc/a", dtype="int32", chunks=(1,), storage=root)
    code = """
        import sys, hubdask as hd
        k = int(sys.argv[1]) if len(sys.argv) > 1 else 0
        a = hd.load("cc/a", storage={root!r})
        for i in range({start}, 100, 2):
            a[i] = i + 1
            if i % 10 < 2:
                a.commit(f"p{start} {{i}}")
        a.commit("done {start}")
    """
    import subprocess, sys, textwrap, os
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code.format(root=root, start=s))],
                              env={**os.environ, "PYTHONPATH": os.getcwd()}, stderr=subprocess.PIPE, text=True)
             for s in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    out = hd.load("cc/a", storage=root)
    np.testing.assert_array_equal(out.read(), np.arange(1, 101))
    committed = hd.load(f"cc/a:{out.commit_id}", storage=root).read()
    np.testing.assert_array_equal(committed, np.arange(1, 101))
    msgs = [c.message for c in out.log()]
    assert len(msgs) == len(set(c.id for c in out.log()))


@pytest.mark.parametrize("crash_after", [1, 2, 3, 4])
def test_crash_mid_commit_leaves_old_or_new_commit(tmp_path, crash_after):
    """Kill a process at the N-th storage write of a commit: the branch is at the old or the new commit."""
    root = str(tmp_path / "r")
    a = hd.array((20,), name="crash/a", dtype="int32", chunks=(5,), storage=root)
    a[:] = 1
    old = a.commit("old")
    a[0:7] = 2  # uncommitted
    proc = run_python(f"""
        import os, hubdask as hd
        from hubdask.storage.root import Root
        a = hd.load("crash/a", storage={root!r})
        n = [0]
        for name in ("create_async", "put_async"):
            real = getattr(Root, name)
            def wrapped(self, *args, _real=real, **kw):
                n[0] += 1
                if n[0] > {crash_after}:
                    os._exit(9)
                return _real(self, *args, **kw)
            setattr(Root, name, wrapped)
        a.commit("new")
        os._exit(0)
    """)
    assert proc.returncode in (0, 9), proc.stderr
    b = hd.load("crash/a", storage=root)
    base = b.commit_id
    expected_new = np.array([2] * 7 + [1] * 13)
    if base == old:
        np.testing.assert_array_equal(hd.load(f"crash/a:{old}", storage=root).read(), [1] * 20)
        b.commit("retry")  # the interrupted commit can be completed
    np.testing.assert_array_equal(hd.load(f"crash/a:{hd.load('crash/a', storage=root).commit_id}", storage=root).read(),
                                  expected_new)
    np.testing.assert_array_equal(hd.load(f"crash/a:{old}", storage=root).read(), [1] * 20)


def test_long_history_reads_few_records(tmp_path, monkeypatch):
    """Checkpoints bound the records read to build a chunk map, however long the history."""
    from hubdask.versioning.commits import CommitGraph

    monkeypatch.setattr(CommitGraph, "CHECKPOINT", 4)
    root = str(tmp_path / "r")
    a = hd.array((40,), name="long/a", dtype="int32", chunks=(2,), storage=root)
    model = np.zeros(40, "int32")
    for i in range(19):
        a[2 * i] = i + 1
        model[2 * i] = i + 1
        a.commit(f"c{i}")
    tip = a.commit_id
    fresh = CommitGraph(a._repo.root, a._repo.ds)
    fresh.chunk_map(tip)
    assert len(fresh._records) <= 4
    np.testing.assert_array_equal(hd.load(f"long/a:{tip}", storage=root).read(), model)
    unreachable = hd.gc("long/a", storage=root, grace=0).unreachable
    assert unreachable == []  # commits pin versions of their nodes: nothing was copied, nothing is left over
    hd.gc("long/a", storage=root, grace=0, dry_run=False)
    np.testing.assert_array_equal(hd.load(f"long/a:{tip}", storage=root).read(), model)


def test_late_write_into_a_sealed_node_cannot_change_the_commit(tmp_path):
    """A writer holding a handle from before a commit writes after it: the commit stays as it was."""
    root = str(tmp_path / "r")
    a = hd.array((10,), name="late/a", dtype="int32", chunks=(5,), storage=root)
    a[:] = 1
    stale = hd.load("late/a", storage=root)  # holds the working node that the commit will seal
    cid = a.commit("ones")
    stale[0:5] = 7  # lands in the sealed node first, then is repeated in the new open node
    np.testing.assert_array_equal(hd.load(f"late/a:{cid}", storage=root).read(), [1] * 10)
    np.testing.assert_array_equal(hd.load("late/a", storage=root).read(), [7] * 5 + [1] * 5)


def test_a_branch_read_lists_its_refs_once_and_skips_an_unwritten_node(s3_root, moto_server):
    """Reading a branch costs one LIST of its refs; with no written mark for the open node, no request
    touches the node. A write from another process marks the node first, so the next read sees it."""
    a = hd.array((8, 8), name="vc/one", dtype="int32", chunks=(4, 8), storage=s3_root)
    a[...] = 1
    a.commit("ones")
    x = hd.load("vc/one", storage=s3_root)
    node = x._source.node
    before = len(moto_server.requests())
    np.testing.assert_array_equal(x.read(), np.ones((8, 8)))
    reads = [unquote(r.path) for r in moto_server.requests()[before:]]
    assert not [p for p in reads if f"/nodes/{node}/" in p]
    lists = [p for p in reads if "list-type" in p]
    assert len(lists) == 1 and lists[0].endswith("prefix=root/vc/one/@hub/refs/heads/main/"), lists
    assert not [p for p in reads if "/refs/" in p and "list-type" not in p], "the head needs no GET"
    done = run_python(f"""
        import hubdask as hd
        hd.load("vc/one", storage={s3_root!r})[0, :] = 5
    """)
    assert done.returncode == 0, done.stderr
    expected = np.ones((8, 8))
    expected[0] = 5
    np.testing.assert_array_equal(x.read(), expected)
    np.testing.assert_array_equal(np.asarray(x.to_dask()), expected)
    done = run_python(f"""
        import hubdask as hd
        y = hd.load("vc/one", storage={s3_root!r})
        y[7, :] = 3
        y.commit("row 7")
        y.commit("empty")
    """)  # the head moves twice: a read that started from the state seen before must be repeated
    assert done.returncode == 0, done.stderr
    expected[7] = 3
    np.testing.assert_array_equal(x.read(), expected)
    np.testing.assert_array_equal(x[6:].read(), expected[6:])


def test_a_head_claimed_but_never_named_is_named_by_the_next_writer(tmp_path):
    """A committer that dies between claiming head SEQ and naming it leaves the branch at SEQ-1, whose
    node is sealed: readers see the commit's content there, and the next writer, after waiting for the
    dead commit, names head SEQ itself and repeats its write in SEQ's node: nothing is lost or hidden."""
    root = str(tmp_path / "root")
    a = hd.array((8,), name="vc/h", dtype="int32", chunks=(4,), storage=root)
    a[:] = 1
    cid = a.commit("ones")
    r = open_root(root)
    heads = internal("vc/h", "refs/heads/main/")
    newest = max(k for k in r.list_prefix(heads) if k.rsplit("/", 1)[1][0].isdigit())
    assert newest.rsplit("/", 1)[1].startswith("000000000001.")
    r.delete(newest)  # as if the committer had died right after its claim
    read = f"import hubdask as hd; print(hd.load('vc/h', storage={root!r}).read().tolist())"
    out = run_python(read)
    assert out.returncode == 0 and out.stdout.strip() == "[1, 1, 1, 1, 1, 1, 1, 1]", out.stderr
    write = f"""
        import hubdask as hd
        from hubdask.versioning.repository import Repository
        Repository.SEAL_WAIT = 0.2
        b = hd.load('vc/h', storage={root!r})
        b[0:2] = 2
        print(b.log()[0].id)
    """
    out = run_python(write)
    assert out.returncode == 0 and out.stdout.strip() == cid, out.stderr  # no extra commit was made
    assert any(k.rsplit("/", 1)[1].startswith("000000000001.") for k in r.list_prefix(heads))
    out = run_python(read)
    assert out.returncode == 0 and out.stdout.strip() == "[2, 2, 1, 1, 1, 1, 1, 1]", out.stderr
    np.testing.assert_array_equal(hd.load(f"vc/h:{cid}", storage=root).read(), [1] * 8)


@pytest.mark.parametrize("commits", [3, 40])
def test_the_branch_listing_stays_short_however_long_the_history(tmp_path, commits):
    """Each commit prunes the heads' names before the last two (with their written marks), so resolving
    a branch lists the same handful of objects at 40 commits as at 3."""
    root = str(tmp_path / "root")
    a = hd.array((8,), name="vc/p", dtype="int32", chunks=(4,), storage=root)
    for i in range(commits):
        a[0] = i
        a.commit(f"c{i}")
    a[5] = 9  # uncommitted: the current node's mark must survive
    r = open_root(root)
    names = sorted(k.rsplit("/", 1)[1] for k in r.list_prefix(internal("vc/p", "refs/heads/main/")))
    named = [n for n in names if n[0].isdigit()]  # the heads' names (head 0's record is long pruned)
    assert [int(n.split(".")[0]) for n in named] == [commits - 1, commits]
    assert len([n for n in names if n.startswith("written-")]) == 2 and len(names) == 4
    out = run_python(f"import hubdask as hd; print(hd.load('vc/p', storage={root!r}).read().tolist())")
    assert out.returncode == 0 and out.stdout.strip() == f"[{commits - 1}, 0, 0, 0, 0, 9, 0, 0]", out.stderr
    assert len(hd.load("vc/p", storage=root).log()) == commits + 1  # history itself is intact


@pytest.mark.parametrize("codecs", ["zstd", "two compressors"])
def test_a_stale_view_patching_a_chunk_keeps_another_process_s_write(tmp_path, codecs):
    """A view loaded before another process's first write into the open node (so its head showed no
    written mark) still reads that node for a partial-chunk read-modify-write: the chunk engine and
    zarr's own path (a codec chain the engine does not run) alike."""
    from zarr.codecs import GzipCodec, ZstdCodec

    root = str(tmp_path / "root")
    chain = "zstd" if codecs == "zstd" else [GzipCodec(), ZstdCodec()]
    hd.array((4, 8), name="vc/rmw", dtype="int32", chunks=(4, 8), codecs=chain, storage=root)
    stale = hd.load("vc/rmw", storage=root)
    assert not stale._source.node_written
    done = run_python(f"import hubdask as hd; hd.load('vc/rmw', storage={root!r})[0] = 1")
    assert done.returncode == 0, done.stderr
    stale[1] = 2
    expected = np.zeros((4, 8), np.int32)
    expected[0], expected[1] = 1, 2
    np.testing.assert_array_equal(hd.load("vc/rmw", storage=root).read(), expected)
