"""The write/commit protocol against a second actor doing the worst thing at the worst instant.

One deterministic regression test per defect of issue 12: each pauses the first actor exactly where the
old protocol broke (after a read-modify-write read its chunk, after a commit sealed or listed its node,
between a record's link and unlink, ...) and lets the second actor act there. ``fence_off`` switches the
mechanism that makes a test pass off, to show that the test can fail.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

import hubdask as hd
from hubdask import chunkio
from hubdask.storage import open_root
from hubdask.versioning import layout as physical, repository
from hubdask.versioning import store as store_module
from hubdask.versioning.commits import CommitGraph
from hubdask.versioning.repository import Repository
from helpers import committed_object, run_python

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="")


@pytest.fixture(params=["local", "s3"])
def any_root(request, tmp_path) -> str:
    return str(tmp_path / "root") if request.param == "local" else request.getfixturevalue("s3_root")


class Pause:
    """Hold the first ``put_version`` made by actor ``who`` (its read is done, its write not yet) until
    ``release()``; ``reached`` is set when it is held. Waits without blocking zarr's event loop."""

    def __init__(self, monkeypatch, who: str, fence: bool = True) -> None:
        self.reached, self.go, self.who = threading.Event(), threading.Event(), who
        real = store_module.put_version

        async def paused(root, ds, node, key, data, based_on=None, what=""):
            if WHO.get() == self.who and not self.reached.is_set():
                self.reached.set()
                while not self.go.is_set():
                    await asyncio.sleep(0.005)
            return await real(root, ds, node, key, data, based_on if fence else None, what)

        monkeypatch.setattr(store_module, "put_version", paused)

    def release(self) -> None:
        self.go.set()


def as_actor(who: str, fn, *args) -> threading.Thread:
    def run() -> None:
        WHO.set(who)
        fn(*args)

    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.mark.parametrize("fence", [True, pytest.param(False, marks=pytest.mark.xfail(strict=True, reason="fence off: the lost update the fence prevents"))])
def test_whole_chunk_write_is_not_undone_by_a_racing_partial_write(any_root, monkeypatch, fence, layout):
    """Defect 1: A patches a[0] and has read the chunk; B's whole-chunk a[:] = 7 returns; A's write lands
    after it. B's returned write must survive (A reads again and patches B's chunk)."""
    a = hd.array((64,), name="p/whole", dtype="int64", **layout((64,)), storage=any_root)
    pause = Pause(monkeypatch, "A", fence)
    t = as_actor("A", a.__setitem__, 0, 1)
    assert pause.reached.wait(30)
    hd.load("p/whole", storage=any_root)[:] = 7  # B, returned
    pause.release()
    t.join(30)
    expected = np.full(64, 7)
    expected[0] = 1
    np.testing.assert_array_equal(hd.load("p/whole", storage=any_root).read(), expected)


@pytest.mark.parametrize("fence", [True, pytest.param(False, marks=pytest.mark.xfail(strict=True, reason="fence off"))])
def test_a_writer_whose_lock_lease_expired_cannot_overwrite(any_root, monkeypatch, fence, layout):
    """Defect 2: two holders of one chunk's lock at once (a lease that expired under a stalled holder,
    modelled by both writing without locks): the late holder's write is fenced and repeated."""
    monkeypatch.setenv("HUBDASK_LOCKS", "off")
    a = hd.array((16,), name="p/lease", dtype="int64", **layout((16,)), storage=any_root)
    pause = Pause(monkeypatch, "A", fence)
    t = as_actor("A", a.__setitem__, 0, 1)  # the stalled holder: read, then frozen past its lease
    assert pause.reached.wait(30)
    hd.load("p/lease", storage=any_root)[5] = 5  # the next holder's read-modify-write returns
    pause.release()
    t.join(30)
    got = hd.load("p/lease", storage=any_root).read()
    assert got[0] == 1 and got[5] == 5, got


@pytest.mark.parametrize("fence", [True, pytest.param(False, marks=pytest.mark.xfail(strict=True, reason="fence off"))])
def test_a_stale_splice_of_a_shard_cannot_drop_another_inner_chunk(any_root, monkeypatch, fence):
    """A patches inner chunk 0 of a shard and has read the shard (its other inner chunks' bytes to
    splice); B's write of inner chunk 2 of the same shard returns; A's write lands after it. A must
    re-read the shard and splice B's new inner chunk, not the bytes it read before."""
    monkeypatch.setenv("HUBDASK_LOCKS", "off")  # two holders of the shard's lock: a lease expired under A
    a = hd.array((16,), name="p/splice", dtype="int64", chunks=(4,), shards=(16,), storage=any_root)
    a[:] = 3
    pause = Pause(monkeypatch, "A", fence)
    t = as_actor("A", a.__setitem__, 0, 1)
    assert pause.reached.wait(30)
    hd.load("p/splice", storage=any_root)[9] = 5  # B, returned
    pause.release()
    t.join(30)
    expected = np.full(16, 3)
    expected[0], expected[9] = 1, 5
    np.testing.assert_array_equal(hd.load("p/splice", storage=any_root).read(), expected)


def test_writers_sharing_no_scheduler_lose_nothing_on_s3(s3_root, tmp_path):
    """Defect 3: two processes on one S3 root with their own HUBDASK_CACHE (two machines without a dask
    scheduler) patch different elements of one chunk 60 times each: all 120 updates are there."""
    hd.array((120,), name="p/noshare", dtype="int64", chunks=(120,), storage=s3_root)
    code = """
        import sys, hubdask as hd
        a = hd.load("p/noshare", storage={root!r})
        for i in range({lo}, {hi}):
            a[i] = i + 1
    """
    procs = []
    import subprocess, sys, textwrap
    for k, (lo, hi) in enumerate([(0, 60), (60, 120)]):
        env = {**os.environ, "HUBDASK_CACHE": str(tmp_path / f"cache{k}"),
               "PYTHONPATH": os.path.dirname(os.path.abspath(__file__)) + "/.."}
        procs.append(subprocess.Popen([sys.executable, "-c", textwrap.dedent(code.format(root=s3_root, lo=lo, hi=hi))],
                                      env=env, stderr=subprocess.PIPE, text=True))
    for p in procs:
        assert p.wait(240) == 0, p.stderr.read()
    np.testing.assert_array_equal(hd.load("p/noshare", storage=s3_root).read(), np.arange(1, 121))


@pytest.mark.parametrize("instant", ["before the seal", "after the listing"])
def test_a_merge_racing_a_writer_keeps_both(tmp_path, monkeypatch, instant):
    """Defect 4: exp changed chunk 0 (rows 0-1) and chunk 1 (row 4), main did not; a write main[3, 7] = 5
    (chunk 0) races the merge. Afterwards main holds exp's changes and the write, whichever side of the
    merge's seal the write fell on (chunk 1 taken by reference, chunk 0 merged element by element)."""
    root = str(tmp_path / "root")
    a = hd.array((8, 8), name="p/merge", dtype="int32", chunks=(4, 8), storage=root)
    a[:] = 1
    a.commit("ones")
    exp = a.branch("exp")
    exp[0:2] = 2
    exp[4] = 3
    exp.commit("exp changed chunks 0 and 1")
    main = hd.load("p/merge:main", storage=root)
    reached, go = threading.Event(), threading.Event()
    hook = "_seal" if instant == "before the seal" else "_sealed_changes"
    real = getattr(Repository, hook)

    def held(self, *args, **kw):
        out = real(self, *args, **kw)
        if threading.current_thread().name == "merger" and not reached.is_set():
            reached.set()
            go.wait(30)
        return out

    monkeypatch.setattr(Repository, hook, held)
    t = threading.Thread(target=lambda: main.merge("exp"), name="merger")
    t.start()
    assert reached.wait(30)
    writer = hd.load("p/merge:main", storage=root)
    w = threading.Thread(target=writer.__setitem__, args=((3, 7), 5))
    w.start()
    time.sleep(0.3)
    go.set()
    t.join(60)
    w.join(60)
    expected = np.ones((8, 8), np.int32)
    expected[0:2] = 2
    expected[4] = 3
    expected[3, 7] = 5
    np.testing.assert_array_equal(hd.load("p/merge", storage=root).read(), expected)
    assert main.merge("exp") == hd.load("p/merge", storage=root).commit_id  # nothing left to merge


def test_a_stale_handle_cannot_write_into_a_deleted_dataset(any_root):
    """Defect 5: a handle loaded before hd.delete writes afterwards: NotFoundError naming the dataset,
    and nothing is left in storage but the seals that told the writer and the ref records that refuse
    late claims (refs.lasting: the claim log, the head names ending in a tombstone)."""
    a = hd.array((8,), name="p/gone", dtype="int32", chunks=(4,), storage=any_root)
    a[:] = 1
    stale = hd.load("p/gone", storage=any_root)
    hd.delete("p/gone", storage=any_root)
    with pytest.raises(hd.NotFoundError, match="p/gone"):
        stale[0:4] = 7
    from hubdask.versioning import refs

    left = open_root(any_root).list_prefix("p/gone/")
    assert left and all("/@hub/seals/" in k or refs.lasting("p/gone", k) for k in left), left
    assert any(k.endswith(".deleted.-") for k in left) and not any("/nodes/" in k or "/commits/" in k for k in left)
    with pytest.raises(hd.NotFoundError, match="p/gone"):
        hd.load("p/gone", storage=any_root)


@pytest.mark.parametrize("what", ["commit", "merge"])
def test_gc_during_a_slow_commit_keeps_it(tmp_path, monkeypatch, what):
    """Defect 6: a commit (or a merge, which writes merged chunks into its own node) stalls after
    listing its node for longer than gc's grace; gc runs and deletes; the commit finishes readable."""
    root = str(tmp_path / "root")
    a = hd.array((8, 8), name="p/gc", dtype="int32", chunks=(4, 8), storage=root)
    a[:] = 1
    a.commit("ones")
    exp = a.branch("exp")
    exp[0, 0] = 9
    exp.commit("exp")
    a[0, 1] = 8  # both sides changed chunk 0: the merge writes a merged chunk into its own node
    reached, go = threading.Event(), threading.Event()
    real = CommitGraph.write

    def held(self, commit):
        if threading.current_thread().name == "slow" and not reached.is_set():
            reached.set()
            go.wait(60)
        return real(self, commit)

    monkeypatch.setattr(CommitGraph, "write", held)
    out = []
    target = (lambda: out.append(a.commit("slow"))) if what == "commit" else (lambda: out.append(a.merge("exp")))
    t = threading.Thread(target=target, name="slow")
    t.start()
    assert reached.wait(30)
    time.sleep(0.05)
    hd.gc("p/gc", storage=root, grace=0, dry_run=False)
    go.set()
    t.join(60)
    expected = np.ones((8, 8), np.int32)
    expected[0, 1] = 8
    if what == "merge":
        expected[0, 0] = 9
    np.testing.assert_array_equal(hd.load(f"p/gc:{out[0]}", storage=root).read(), expected)
    np.testing.assert_array_equal(hd.load("p/gc", storage=root).read(), expected)
    hd.gc("p/gc", storage=root, grace=0, dry_run=False)
    np.testing.assert_array_equal(hd.load(f"p/gc:{out[0]}", storage=root).read(), expected)


def test_datasets_never_overlap(any_root):
    """Defect 7: 'p' and 'p/x' are both datasets; 'q', 'q/commits' and 'q/nodes' too. Deleting or
    collecting one never touches another, and ls shows all of them."""
    for name in ("p", "p/x", "q", "q/commits", "q/nodes"):
        arr = hd.array((4,), name=name, dtype="int32", storage=any_root)
        arr[:] = len(name)
        arr.commit(name)
    assert {"p", "p/x", "q", "q/commits", "q/nodes"} <= set(hd.ls(storage=any_root))
    assert hd.ls("p", storage=any_root) == ["p", "p/x"]
    hd.gc("q", storage=any_root, grace=0, dry_run=False)
    hd.delete("p", storage=any_root)
    for name in ("p/x", "q", "q/commits", "q/nodes"):
        np.testing.assert_array_equal(hd.load(name, storage=any_root).read(), [len(name)] * 4)
    assert "p" not in hd.ls(storage=any_root) and "p/x" in hd.ls(storage=any_root)


def test_a_crash_between_link_and_unlink_leaves_no_false_record(tmp_path):
    """Defect 8: a process killed between the link of a complete temp file and its unlink, while
    creating a head record and while creating a tag, leaves ``*.partial`` files: they are never read
    as records, everything still loads and commits, and gc removes them."""
    root = str(tmp_path / "root")
    a = hd.array((4,), name="p/crash", dtype="int32", storage=root)
    a[:] = 1
    a.commit("one")
    for action in ("a[0] = 2; a.commit('two')", "a.tag('v1')"):
        proc = run_python(f"""
            import os, hubdask as hd
            from hubdask.storage import files
            real = os.link
            def link_then_die(src, dst, *args, **kw):
                real(src, dst, *args, **kw)
                if "/refs/" in str(dst) and "written-" not in str(dst):  # a head's claim, a tag
                    os._exit(9)
            files.os.link = link_then_die
            a = hd.load("p/crash", storage={root!r})
            {action}
        """)
        assert proc.returncode == 9, proc.stderr
    r = open_root(root)
    from pathlib import Path
    from hubdask.storage import files

    def temps_left() -> list[str]:
        return [k for k in files.list_sizes(Path(root), "p/crash/@hub/", temps=True) if k.endswith(".partial")]

    temps = temps_left()
    assert len(temps) == 2, temps
    b = hd.load("p/crash", storage=root)
    assert b.read()[0] == 2 and "v1" in b.tags
    b[1] = 3
    cid = b.commit("after the crashes")
    np.testing.assert_array_equal(hd.load(f"p/crash:{cid}", storage=root).read(), [2, 3, 1, 1])
    os.utime(os.path.join(root, temps[0]), (0, 0))
    os.utime(os.path.join(root, temps[1]), (0, 0))
    hd.gc("p/crash", storage=root, grace=60, dry_run=False)
    assert not temps_left()


def test_an_emptied_committed_chunk_is_corruption_not_fill(any_root, layout):
    """Defect 9: a committed chunk truncated to 0 bytes raises CorruptChunkError; a chunk deleted by
    writing the fill value (a tombstone) reads as the fill value."""
    a = hd.array((8,), name="p/empty", dtype="int32", **layout((4,)), storage=any_root)
    a[:] = 5
    a[4:] = 0  # back to fill: a tombstone
    cid = a.commit("c")
    r = open_root(any_root)
    r.put(committed_object(a, cid, "c/0"), b"")
    b = hd.load(f"p/empty:{cid}", storage=any_root, cache=False)
    np.testing.assert_array_equal(b[4:].read(), [0] * 4)
    with pytest.raises(hd.CorruptChunkError, match="p/empty"):
        b.read()
    with pytest.raises(hd.CorruptChunkError, match="p/empty"):
        b.compute()


def test_fork_while_another_thread_holds_a_chunk_lock(tmp_path):
    """Defect 10: a thread holds a chunk lock while the process forks: the child can take that lock
    once the parent's thread let go of the file lock, instead of hanging forever."""
    from hubdask.locks import chunk_locks

    root = open_root(str(tmp_path / "root"))
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with chunk_locks(["hubdask:x/chunk"], "local", root=root):
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    pid = os.fork()
    if pid == 0:
        try:
            with chunk_locks(["hubdask:x/chunk"], "local", root=root):
                pass
            os._exit(0)
        except BaseException:
            os._exit(1)
    release.set()
    t.join(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung on a lock held by a thread of its parent")


def test_resolving_a_branch_costs_one_short_listing_at_any_depth(s3_root, moto_server):
    """Defect 12: after 60 commits, hd.load lists a handful of head objects, as after 1."""
    a = hd.array((4,), name="p/deep", dtype="int32", storage=s3_root)
    counts = []
    for i in range(61):
        a[0] = i
        a.commit(f"c{i}")
        if i in (0, 60):
            r = open_root(s3_root)
            counts.append(len(r.list_prefix("root/p/deep/@hub/refs/heads/main/".removeprefix("root/"))))
    assert counts[1] <= counts[0] <= 6, counts  # head 0 is a record beside its name until pruned
    assert hd.load("p/deep", storage=s3_root).read()[0] == 60
    assert len(hd.load("p/deep", storage=s3_root).log()) == 62


def test_concurrent_committers_coalesce_and_lose_no_write(any_root, layout):
    """Two threads commit one branch while a third writes: every returned write is in the final state,
    every returned commit id reads back, and concurrent commits of one node give one commit."""
    a = hd.array((40,), name="p/coalesce", dtype="int64", **layout((4,)), storage=any_root)
    ids, errors = [], []

    def committer() -> None:
        for _ in range(4):
            try:
                ids.append(hd.load("p/coalesce", storage=any_root).commit("c"))
            except hd.ConflictError as exc:
                errors.append(exc)

    ts = [threading.Thread(target=committer) for _ in range(2)]
    for t in ts:
        t.start()
    w = hd.load("p/coalesce", storage=any_root)
    for i in range(40):
        w[i] = i + 1
    for t in ts:
        t.join(60)
    final = hd.load("p/coalesce", storage=any_root)
    final.commit("last")
    np.testing.assert_array_equal(hd.load("p/coalesce", storage=any_root).read(), np.arange(1, 41))
    for cid in ids:
        hd.load(f"p/coalesce:{cid}", storage=any_root).read()
    assert not errors, errors


def test_a_format_2_dataset_is_refused_with_advice_then_upgraded(tmp_path):
    """A dataset written by hubdask/2 (tests/data/format2, made by the previous release): loading it says
    to run `hubdask upgrade`; after the upgrade every ref reads what it held, and it takes new writes."""
    import shutil

    root = str(tmp_path / "root")
    shutil.copytree(os.path.join(os.path.dirname(__file__), "data", "format2"), root)
    with pytest.raises(hd.NotFoundError, match="old/ds.*hubdask/2.*hubdask upgrade old/ds"):
        hd.load("old/ds", storage=root)
    assert hd.upgrade("old/ds", storage=root) > 0
    first = np.arange(24, dtype="int16").reshape(6, 4)
    second = first.copy()
    second[2:4] = 0
    second[0, 0] = 99
    main = hd.load("old/ds", storage=root)
    uncommitted = second.copy()
    uncommitted[1, 1] = -1
    np.testing.assert_array_equal(main.read(), uncommitted)
    np.testing.assert_array_equal(hd.load("old/ds:v1", storage=root).read(), first)
    exp = second.copy()
    exp[5] = 7
    np.testing.assert_array_equal(hd.load("old/ds:exp", storage=root).read(), exp)
    assert [c.message for c in main.log()][:2] == ["second", "first"]
    main[5, 3] = 1
    cid = main.commit("after the upgrade")
    uncommitted[5, 3] = 1
    np.testing.assert_array_equal(hd.load(f"old/ds:{cid}", storage=root).read(), uncommitted)
    assert hd.upgrade("old/ds", storage=root) == 0  # already current
    assert not [k for k in open_root(root).list_prefix("old/ds/") if "/@hub/" not in k]


def test_the_cli_upgrades_a_format_2_dataset(tmp_path):
    import shutil
    import subprocess
    import sys

    root = str(tmp_path / "root")
    shutil.copytree(os.path.join(os.path.dirname(__file__), "data", "format2"), root)
    cli = [sys.executable, "-m", "hubdask.cli", "--storage", root]
    before = subprocess.run(cli + ["info", "old/ds"], capture_output=True, text=True)
    assert before.returncode == 1 and "hubdask upgrade old/ds" in before.stderr, before.stderr
    done = subprocess.run(cli + ["upgrade", "old/ds"], capture_output=True, text=True)
    assert done.returncode == 0 and "objects converted" in done.stdout, done.stderr
    assert hd.load("old/ds:v1", storage=root).read()[0, 0] == 0


def test_commit_id_prefixes_resolve_and_ambiguity_lists_candidates(tmp_path):
    """Any unique prefix of at least 7 characters of a commit id is a ref; an ambiguous one names the
    candidates; shorter ones are not taken as prefixes."""
    root = str(tmp_path / "root")
    a = hd.array((4,), name="p/ids", dtype="int32", storage=root)
    ids = []
    for i in range(3):
        a[0] = i + 1
        ids.append(a.commit(f"c{i}"))
    every = [c.id for c in hd.load("p/ids", storage=root).log()]  # the creation's commit too
    for i, cid in enumerate(ids):
        j = next(n for n in range(7, len(cid) + 1) if sum(c.startswith(cid[:n]) for c in every) == 1)
        assert hd.load(f"p/ids:{cid[:j]}", storage=root).read()[0] == i + 1
    common = os.path.commonprefix(every)
    if len(common) >= 7:
        with pytest.raises(hd.NotFoundError, match="ambiguous") as err:
            hd.load(f"p/ids:{common}", storage=root)
        assert all(c in str(err.value) for c in every)
    with pytest.raises(hd.NotFoundError, match="p/ids"):
        hd.load(f"p/ids:{ids[0][:6]}", storage=root)


def test_the_default_branch_cannot_be_deleted(tmp_path):
    root = str(tmp_path / "root")
    a = hd.array((4,), name="p/default", dtype="int32", storage=root)
    a.branch("other")
    with pytest.raises(hd.ConflictError, match="p/default.*default branch"):
        a.delete_branch("main")
    assert hd.load("p/default", storage=root).branch_name == "main"
    hd.load("p/default:other", storage=root).delete_branch("other")


@pytest.mark.parametrize("damaged", ["marker", "commit", "tag", "head"])
def test_damaged_records_raise_a_corruption_error_naming_the_dataset(tmp_path, damaged):
    root = str(tmp_path / "root")
    a = hd.array((4,), name="p/rec", dtype="int32", storage=root)
    a[0] = 1
    cid = a.commit("one")
    a.tag("v1")
    r = open_root(root)
    base = physical.base("p/rec")
    key = {"marker": physical.marker_key("p/rec"), "commit": physical.commit_key("p/rec", cid),
           "tag": physical.tag_key("p/rec", "v1"),
           "head": sorted(k for k in r.list_prefix(base + "refs/heads/main/") if k.rsplit("/", 1)[1].isdigit())[-1]}[damaged]
    r.put(key, b"\xff{not json")
    for k in r.list_prefix(base + "refs/heads/main/"):
        if damaged == "head" and "." in k.rsplit("/", 1)[1] and k.rsplit("/", 1)[1][0].isdigit():
            r.delete(k)  # no name copy: the head must be read from its damaged record
    from hubdask.versioning.repository import forget
    forget(r, "p/rec")
    ref = {"marker": "main", "commit": cid, "tag": "v1", "head": "main"}[damaged]
    with pytest.raises(hd.CorruptionError, match="p/rec") as err:
        hd.load(f"p/rec:{ref}", storage=root).read()
    assert "damaged" in str(err.value) and key.rsplit("/", 1)[1] in str(err.value)


def test_merge_base_is_a_best_common_ancestor_after_criss_cross_merges(tmp_path):
    """main merges an old branch (whose history is older than another branch's fork point): merging the
    newer branch must use its fork point as base, so that what it only inherited from main is not taken
    as its change (found by the torture test with strategy='theirs')."""
    root = str(tmp_path / "root")
    a = hd.array((4,), name="p/base", dtype="int32", chunks=(4,), storage=root)
    a[0] = 1
    a.commit("one")
    old = a.branch("old")  # forks at "one"
    old[3] = 9
    old.commit("old branch")
    a[1] = 2
    a.commit("two")
    new = a.branch("new")  # forks at "two"
    new[2] = 3
    new.commit("new branch")
    a[1] = 5  # main changes element 1 after the fork of "new"...
    for i in range(4):
        a._repo.commit("main", f"more {i}")  # commits of main between the fork and the merge
    a = hd.load("p/base", storage=root)
    a.merge("old")  # ...and then reaches "one" through a short path (merge -> old -> one)
    a.merge("new", strategy="theirs")
    np.testing.assert_array_equal(hd.load("p/base", storage=root).read(), [1, 5, 3, 9])


def test_a_commit_that_seals_its_own_last_head_never_skips_another_process_s_move(any_root):
    """A committer starts by sealing the open node of the head it last made, without reading the branch.
    Another process committing in between (it sealed that node) or deleting the branch and making it
    again (the deleted branch's node is sealed as deleted) must send it back to reading the branch: its
    commit lands on top of the other's, never beside it, and the new branch never gets the old history."""
    a = hd.array((4,), name="p/own", dtype="int32", storage=any_root)
    a[0] = 1
    first = a.commit("mine")  # this process now knows the head it made
    other = run_python(f"""
        import hubdask as hd
        b = hd.load("p/own", storage={any_root!r})
        b[1] = 2
        print(b.commit("theirs"))
    """)
    assert other.returncode == 0, other.stderr
    theirs = other.stdout.strip()
    a[2] = 3  # through the stale view: the write lands in the current node (a's node is sealed)
    mine = a.commit("mine again")
    log = [c.id for c in hd.load("p/own", storage=any_root).log()]
    assert log[:3] == [mine, theirs, first], log
    np.testing.assert_array_equal(hd.load("p/own", storage=any_root).read(), [1, 2, 3, 0])

    x = a.branch("x")
    x[0] = 5
    on_x = x.commit("on x")
    again = run_python(f"""
        import hubdask as hd
        from hubdask.versioning.repository import repository
        from hubdask.storage import open_root
        repo = repository(open_root({any_root!r}), "p/own")
        repo.delete_branch("x")
        repo.create_branch("x", {first!r})
    """)
    assert again.returncode == 0, again.stderr
    with pytest.raises(hd.NotFoundError, match="branch 'x' of dataset 'p/own' was deleted"):
        x[1] = 6  # the write into the deleted branch's node is refused
    stale = x.commit("through the stale view")  # commits the new branch's node, on the new branch's history
    x2 = hd.load("p/own:x", storage=any_root)
    assert [c.id for c in x2.log()][:2] == [stale, first]
    x2[3] = 7
    np.testing.assert_array_equal(x2.read(), [1, 0, 0, 7])


def test_a_commit_by_the_only_writer_lists_nothing(any_root, monkeypatch):
    """The commit cost: a process committing the head it made last, after writes of its own only, sends
    no LIST (its seal proves the head current, two GETs prove it the only writer), so the commit's cost
    does not grow with the chunks written nor, on servers that scan for a LIST, with the bucket."""
    from hubdask.storage.root import Root

    a = hd.array((64, 4), name="p/cost", dtype="int32", chunks=(1, 4), storage=any_root)
    a[:] = 1
    a.commit("first")  # from here on this process knows the head it made
    calls: list[str] = []
    for name in ("list_prefix_async", "list_sizes_async", "list_dir_async"):
        real = getattr(Root, name)

        async def counted(self, prefix, _real=real, _name=name):
            calls.append(f"{_name} {prefix}")
            return await _real(self, prefix)

        monkeypatch.setattr(Root, name, counted)
    a[:] = 2
    calls.clear()
    cid = a.commit("second")
    assert calls == [], calls
    monkeypatch.undo()
    np.testing.assert_array_equal(hd.load(f"p/cost:{cid}", storage=any_root).read(), np.full((64, 4), 2))
    assert [c.message for c in hd.load("p/cost", storage=any_root).log()][:2] == ["second", "first"]


@pytest.mark.parametrize("action", ["tag", "commit"])
def test_gc_collecting_a_late_writers_temp_file_neither_breaks_nor_tears_the_write(tmp_path, monkeypatch, action):
    """A writer stalled between writing a ref's temp file and moving it into place (past gc's grace)
    has the temp file collected by gc at that instant: the write still lands whole (a fresh temp file),
    with no raw FileNotFoundError, and no temp file is left."""
    from pathlib import Path

    from hubdask.storage import files

    root = str(tmp_path / "root")
    a = hd.array((4,), name="p/late", dtype="int32", storage=root)
    a[:] = 1
    first = a.commit("one")
    real, collected = files._temp_beside, []

    def temp_then_gc(path, parts):
        tmp = real(path, parts)
        if "/refs/" in str(path) and not collected:
            os.utime(tmp, (0, 0))  # older than the grace: the writer stalled here
            gc = threading.Thread(target=hd.gc, args=("p/late",), kwargs=dict(storage=root, grace=60, dry_run=False))
            gc.start()
            gc.join()
            collected.append(not tmp.exists())
        return tmp

    monkeypatch.setattr(files, "_temp_beside", temp_then_gc)
    if action == "tag":
        assert a.tag("v1") == first
        assert hd.load("p/late:v1", storage=root).commit_id == first
    else:
        a[0] = 2
        cid = a.commit("two")
        np.testing.assert_array_equal(hd.load(f"p/late:{cid}", storage=root).read(), [2, 1, 1, 1])
        assert hd.load("p/late", storage=root).commit_id == cid
    assert collected == [True]
    assert not [k for k in files.list_sizes(Path(root), "p/late/", temps=True) if k.endswith(".partial")]


def test_a_temp_file_collected_every_time_fails_with_hubdasks_error(tmp_path, monkeypatch):
    """A temp file that vanishes before every attempt: a StorageError naming the object, nothing written."""
    from hubdask.storage import files

    target = tmp_path / "x" / "obj"
    real = files._temp_beside

    def vanishing(path, parts):
        tmp = real(path, parts)
        tmp.unlink()
        return tmp

    monkeypatch.setattr(files, "_temp_beside", vanishing)
    for write in (files.write_atomic, files.create_exclusive):
        with pytest.raises(hd.StorageError, match="obj.*temp file was removed"):
            write(target, b"data")
        assert not target.exists() and not list(target.parent.iterdir())


@pytest.mark.parametrize("fence", [True, pytest.param(False, marks=pytest.mark.xfail(strict=True, reason="no floor: the stale claim is accepted"))])
def test_a_stale_claimer_cannot_win_a_trimmed_head(any_root, monkeypatch, fence):
    """The claim log is trimmed: committer A seals the open node and stalls just before claiming the
    next head; B finishes A's commit and commits on until that claim and many after it are trimmed; A
    resumes and re-creates the trimmed claim. It must lose (the floor), return its commit as the one the
    branch holds, and its next write must land where readers of the branch see it."""
    from hubdask.versioning import refs

    monkeypatch.setattr(refs, "TRIM_EVERY", 4)
    monkeypatch.setattr(refs, "CLAIMS_KEPT", 2)
    if not fence:
        monkeypatch.setattr(refs, "_floor_of", lambda ds, branch, seq: f"{ds}/@hub/no-floor")
    a = hd.array((4,), name="p/stale", dtype="int32", chunks=(4,), storage=any_root)
    a[:] = 1
    a.commit("one")
    reached, go, real = threading.Event(), threading.Event(), refs.write_head

    def paused(*args, **kwargs):
        if WHO.get() == "A" and not reached.is_set():
            reached.set()
            assert go.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(refs, "write_head", paused)
    sa = hd.load("p/stale", storage=any_root)
    sa[0] = 2
    out: list = []
    t = as_actor("A", lambda: out.append(sa.commit("A's")))
    assert reached.wait(30)
    b = hd.load("p/stale", storage=any_root)
    finished = b.commit("finishes A's")  # the same commit: B moved the branch onto it
    for i in range(12):  # past three trims: A's claim is long gone
        b[1] = 10 + i
        b.commit(f"b{i}")
    assert open_root(any_root).get(refs.claim_key("p/stale", "main", 2)) is None  # A's claim was trimmed
    go.set()
    t.join(60)
    assert out == [finished]
    sa[2] = 7  # through A's handle, after its commit returned
    np.testing.assert_array_equal(hd.load("p/stale", storage=any_root).read(), [2, 21, 7, 1])


def test_the_claim_log_stays_short_however_long_the_history(tmp_path, monkeypatch):
    """Trimming keeps the claims of refs/log/BRANCH/ bounded (at most TRIM_EVERY + CLAIMS_KEPT), with one
    empty floor record per trimmed window, after many commits; every commit of the history still reads."""
    from hubdask.versioning import refs

    monkeypatch.setattr(refs, "TRIM_EVERY", 8)
    monkeypatch.setattr(refs, "CLAIMS_KEPT", 3)
    root = str(tmp_path / "root")
    a = hd.array((2,), name="p/short", dtype="int32", storage=root)
    commits = []
    for i in range(50):
        a[0] = i
        commits.append(a.commit(f"c{i}"))
    log = open_root(root).list_prefix(physical.head_log_prefix("p/short", "main"))
    floors = [k for k in log if "floor-" in k]
    assert len(floors) == (50 - 3) // 8 and len(log) - len(floors) <= 8 + 3, log  # heads 1..50 claimed
    for i, cid in enumerate(commits):
        assert hd.load(f"p/short:{cid}", storage=root).read()[0] == i


def test_a_head_missed_by_every_listing_resolves_from_the_claims_after_trimming(tmp_path, monkeypatch):
    """The worst instant for the claims fallback: every LIST of the branch's folder misses its names (a
    listing is no snapshot) and the newest head this process saw lies in a window the claim log has
    trimmed since. The head still resolves, to the branch's newest, not to None or a trimmed claim."""
    from hubdask.versioning import refs

    monkeypatch.setattr(refs, "TRIM_EVERY", 8)
    monkeypatch.setattr(refs, "CLAIMS_KEPT", 3)
    root_url = str(tmp_path / "root")
    a = hd.array((2,), name="p/fall", dtype="int32", storage=root_url)
    a[0] = 1
    a.commit("early")
    root = a._source.root
    early = refs.read_head(root, "p/fall", "main").seq
    for i in range(40):
        a[0] = i
        a.commit(f"c{i}")
    newest = refs.read_head(root, "p/fall", "main")
    assert root.get(refs.claim_key("p/fall", "main", early)) is None  # trimmed
    monkeypatch.setitem(refs._SEEN, (root.token, "p/fall", "main"), early)
    monkeypatch.setattr(refs, "_list", lambda root, ds, branch: refs._parse_listing(ds, branch, []))
    got = refs.read_head(root, "p/fall", "main")
    assert got is not None and (got.seq, got.node, got.base) == (newest.seq, newest.node, newest.base)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_read_that_stalled_past_gc_reads_again_at_the_moved_head(tmp_path, monkeypatch, kind, request):
    """Found by the torture run (a reader SIGSTOPped 16 s mid-read): after a read listed the open node's
    newest version of a chunk, another process wrote the chunk again, committed, and ``hd.gc`` collected
    the version the read was about to GET (superseded in a committed node). The read must not fail
    ("missing from storage"): the branch moved, so it reads again at its head, as a read that started
    then would."""
    root = str(tmp_path / "root") if kind == "local" else request.getfixturevalue("s3_root")
    a = hd.array((8,), "t/stall", dtype="int64", chunks=(4,), storage=root)
    a[0:4] = 1
    a[0:4] = 2
    reader = hd.load("t/stall", storage=root)
    original, raced = chunkio.Resolver.__init__, []

    def stalled(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if not raced and self.versions:  # the versions to read are known: the worst instant
            raced.append(True)
            w = hd.load("t/stall", storage=root)
            w[0:4] = 3
            w.commit("while the reader stalls")
            assert hd.gc("t/stall", dry_run=False, grace=0, storage=root)

    monkeypatch.setattr(chunkio.Resolver, "__init__", stalled)
    np.testing.assert_array_equal(np.asarray(reader), [3] * 4 + [0] * 4)
    assert raced
