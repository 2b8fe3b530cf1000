"""The ref records across a branch's (or a dataset's) deletion and re-creation, and the claim log's
debris, against a second actor at the worst instant.

A branch name keeps one sequence of heads for ever: deleting the branch moves it to a tombstone head
(claimed like any head, so it is ordered with every committer), and re-creating it claims the next
number. A stalled committer, a late claim or a late head-0 record of a deleted incarnation therefore
meets a number that is taken, a floor, or a tombstone above it, and never moves the new incarnation.
"""

from __future__ import annotations

import textwrap
import threading

import numpy as np
import pytest

import hubdask as hd
from hubdask.storage import open_root
from hubdask.storage.root import Root
from hubdask.versioning import layout, refs
from hubdask.versioning.gc import gc
from hubdask.versioning.repository import repository
from helpers import run_python


@pytest.fixture(params=["local", "s3"])
def any_root(request, tmp_path) -> str:
    return str(tmp_path / "root") if request.param == "local" else request.getfixturevalue("s3_root")


def other_process(root: str, code: str) -> None:
    """Run ``code`` (with ``repo``, the Repository of p/inc, and ``hd`` in scope) in a fresh process."""
    done = run_python("\n".join([
        "import hubdask as hd",
        "from hubdask.storage import open_root",
        "from hubdask.versioning.repository import repository",
        f"repo = repository(open_root({root!r}), 'p/inc')",
        textwrap.dedent(code).strip()]))
    assert done.returncode == 0, done.stderr


def recreate_exp_and_write(root: str, first: str, commit: bool = False) -> None:
    """In another process: delete exp, create it again at ``first`` and write 9 at [2] there (and commit)."""
    other_process(root, f"""
repo.delete_branch("exp")
repo.create_branch("exp", {first!r})
x = hd.load("p/inc:exp", storage={root!r})
x[2] = 9
{'x.commit("the second life")' if commit else ''}
""")


def paused_at(monkeypatch, fn_name: str, module=refs):
    """Hold the first call of ``module.fn_name`` made from the thread started by ``start`` until
    ``go`` is set; ``reached`` is set when it is held."""
    reached, go, real = threading.Event(), threading.Event(), getattr(module, fn_name)
    actor: list[int] = []

    def paused(*args, **kwargs):
        if actor and threading.get_ident() == actor[0] and not reached.is_set():
            reached.set()
            assert go.wait(120)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, fn_name, paused)

    def start(fn) -> tuple[threading.Thread, list]:
        out: list = []

        def run() -> None:
            actor.append(threading.get_ident())
            try:
                out.append(fn())
            except Exception as exc:  # noqa: BLE001 - handed to the test
                out.append(exc)

        t = threading.Thread(target=run)
        t.start()
        return t, out

    return reached, go, start


@pytest.mark.parametrize("depth", [0, 3])
def test_a_stalled_committer_cannot_claim_into_a_recreated_branch(any_root, monkeypatch, depth):
    """Committer A seals exp's open node, records its commit and stalls just before claiming the next
    head; another process deletes exp and creates exp again from main, and writes there. A resumes: its
    claim's number is free in a claim log that starts again, so (before the fix) it won and the new exp
    jumped to A's commit of the deleted branch, hiding the new branch's write. A must get NotFoundError
    naming the deleted branch, and the new exp must be exactly what its creator made."""
    a = hd.array((4,), name="p/inc", dtype="int32", chunks=(4,), storage=any_root)
    a[:] = 1
    first = a.commit("one")
    exp = a.branch("exp")
    for i in range(depth):
        exp[0] = 10 + i
        exp.commit(f"exp {i}")
    exp[1] = 5
    reached, go, start = paused_at(monkeypatch, "write_head")
    t, out = start(lambda: exp.commit("A's, stalled"))
    assert reached.wait(60)
    recreate_exp_and_write(any_root, first)
    go.set()
    t.join(120)
    assert len(out) == 1 and isinstance(out[0], hd.NotFoundError), out
    assert "branch 'exp' of dataset 'p/inc' was deleted" in str(out[0])
    new = hd.load("p/inc:exp", storage=any_root)
    assert new.commit_id == first
    np.testing.assert_array_equal(new.read(), [1, 1, 9, 1])
    new[3] = 4
    cid = new.commit("on the new exp")
    assert [c.id for c in hd.load("p/inc:exp", storage=any_root).log()][:2] == [cid, first]
    np.testing.assert_array_equal(hd.load("p/inc:exp", storage=any_root).read(), [1, 1, 9, 4])


@pytest.mark.parametrize("depth", [0, 3])
def test_a_late_head0_record_of_a_deleted_branch_does_not_resurrect_it(any_root, depth):
    """The creation of exp's first head record is a request that lands late (a retried PUT, a process
    that stalled before its link) after exp was deleted: exp must stay deleted, and a branch created
    under the name afterwards must be the new one."""
    a = hd.array((4,), name="p/inc", dtype="int32", chunks=(4,), storage=any_root)
    a[:] = 1
    first = a.commit("one")
    exp = a.branch("exp")
    root = open_root(any_root)
    key = refs.record_key("p/inc", "exp", 0)
    record = root.get(key)
    assert record is not None
    for i in range(depth):
        exp[0] = 10 + i
        exp.commit(f"exp {i}")
    other_process(any_root, 'repo.delete_branch("exp")')
    root.create(key, record)  # the late request
    with pytest.raises(hd.NotFoundError, match="p/inc"):
        hd.load("p/inc:exp", storage=any_root)
    assert hd.load("p/inc", storage=any_root).branches == ["main"]
    repo = repository(root, "p/inc")
    repo.create_branch("exp", first)
    new = hd.load("p/inc:exp", storage=any_root)
    assert new.commit_id == first
    new[0] = 3
    assert new.commit("new exp") in [c.id for c in hd.load("p/inc:exp", storage=any_root).log()]


def test_a_claim_landing_after_the_branch_was_deleted_does_not_resurrect_it(any_root, monkeypatch):
    """A committer's claim of the next head is in flight (sent, not landed) when another process deletes
    the branch: the claim lands afterwards. The branch must stay deleted and the committer must get
    NotFoundError naming it."""
    a = hd.array((4,), name="p/inc", dtype="int32", chunks=(4,), storage=any_root)
    a[:] = 1
    a.commit("one")
    exp = a.branch("exp")
    exp[1] = 5
    claim = refs.claim_key("p/inc", "exp", 1)
    real, hit = Root.create, []

    def late(self, key, data):
        if key == claim and not hit:
            hit.append(key)
            other_process(any_root, 'repo.delete_branch("exp")')
        return real(self, key, data)

    monkeypatch.setattr(Root, "create", late)
    with pytest.raises(hd.NotFoundError, match="branch 'exp' of dataset 'p/inc' was deleted"):
        exp.commit("in flight")
    assert hit
    monkeypatch.undo()
    assert hd.load("p/inc", storage=any_root).branches == ["main"]
    with pytest.raises(hd.NotFoundError, match="p/inc"):
        hd.load("p/inc:exp", storage=any_root)


def test_a_recreated_dataset_is_not_moved_by_a_committer_of_the_deleted_one(any_root, monkeypatch):
    """The same instant one level up: A stalls before claiming the next head of main; another process
    deletes the dataset and creates it again under the same name, and writes. A must get NotFoundError
    naming the dataset, and the new dataset must hold only its own history."""
    a = hd.array((4,), name="p/inc", dtype="int32", chunks=(4,), storage=any_root)
    a[:] = 1
    a.commit("old")
    a[1] = 5
    reached, go, start = paused_at(monkeypatch, "write_head")
    t, out = start(lambda: a.commit("A's, stalled"))
    assert reached.wait(60)
    other_process(any_root, f"""
hd.delete("p/inc", storage={any_root!r})
b = hd.array((4,), name="p/inc", dtype="int32", chunks=(4,), storage={any_root!r})
b[:] = 2
""")
    go.set()
    t.join(120)
    assert len(out) == 1 and isinstance(out[0], hd.NotFoundError), out
    assert "p/inc" in str(out[0])
    new = hd.load("p/inc", storage=any_root)
    np.testing.assert_array_equal(new.read(), [2, 2, 2, 2])
    assert [c.message for c in new.log()] == ["created"]
    new[0] = 3
    new.commit("new")
    assert [c.message for c in hd.load("p/inc", storage=any_root).log()] == ["new", "created"]


@pytest.mark.parametrize("op", ["tag", "commit"])
def test_a_ref_landing_after_the_dataset_was_deleted_is_refused(any_root, monkeypatch, op):
    """A tag or a commit whose record creation is in flight when another process deletes the dataset:
    NotFoundError naming the dataset (not a normal return, not a missing commit), and a dataset created
    under the name afterwards has no such tag or branch."""
    a = hd.array((4,), name="p/inc", dtype="int32", chunks=(4,), storage=any_root)
    a[:] = 1
    a.commit("one")
    exp = a.branch("exp")
    exp[1] = 5
    real, hit = Root.create, []
    target = layout.tag_key("p/inc", "v1") if op == "tag" else refs.claim_key("p/inc", "exp", 1)

    def late(self, key, data):
        if key == target and not hit:
            hit.append(key)
            other_process(any_root, f'hd.delete("p/inc", storage={any_root!r})')
        return real(self, key, data)

    monkeypatch.setattr(Root, "create", late)
    with pytest.raises(hd.NotFoundError, match="dataset 'p/inc' was deleted"):
        exp.tag("v1") if op == "tag" else exp.commit("in flight")
    assert hit
    monkeypatch.undo()
    hd.array((4,), name="p/inc", dtype="int32", chunks=(4,), storage=any_root)
    new = hd.load("p/inc", storage=any_root)
    assert new.branches == ["main"] and new.tags == {}


def _crash_the_trim(monkeypatch) -> None:
    """The trimmer dies right after creating its floor record: the window's claims are never deleted."""
    real = refs._trim

    def crashed(root, ds, branch, window):
        root.create(refs.floor_key(ds, branch, window), b"")

    monkeypatch.setattr(refs, "_trim", crashed)
    return real


def test_gc_sweeps_the_claims_a_crashed_trimmer_left_below_its_floor(any_root, monkeypatch):
    """The winner of the trimming head creates floor-0 and dies before deleting window 0's claims: gc
    removes exactly those (below a floor), keeps every claim of windows without a floor, and the branch
    and every commit still resolve."""
    monkeypatch.setattr(refs, "TRIM_EVERY", 4)
    monkeypatch.setattr(refs, "CLAIMS_KEPT", 2)
    _crash_the_trim(monkeypatch)
    a = hd.array((2,), name="p/inc", dtype="int32", storage=any_root)
    commits = []
    for i in range(7):  # heads 1..7; head 6 (= 4 + 2) trims window 0 (claims 1..3) and crashes
        a[0] = i
        commits.append(a.commit(f"c{i}"))
    root = open_root(any_root)
    log = layout.head_log_prefix("p/inc", "main")
    claims = lambda: sorted(int(k[len(log):]) for k in root.list_prefix(log) if k[len(log):].isdigit())  # noqa: E731
    assert claims() == [1, 2, 3, 4, 5, 6, 7]
    assert root.get(refs.floor_key("p/inc", "main", 0)) is not None
    report = gc(repository(root, "p/inc"), dry_run=False, grace=0)
    assert claims() == [4, 5, 6, 7], report.unreachable
    assert root.get(refs.floor_key("p/inc", "main", 0)) is not None  # the floor stays: it refuses stale claims
    for i, cid in enumerate(commits):
        assert hd.load(f"p/inc:{cid}", storage=any_root).read()[0] == i
    a[1] = 9
    last = a.commit("after gc")
    assert hd.load("p/inc", storage=any_root).commit_id == last


def test_gc_racing_a_live_committer_sweeps_only_below_the_floor(any_root, monkeypatch):
    """gc runs at the worst instant for a live committer: its claim of the next head has landed and is
    not named yet (it is the only record of the branch's newest head), right after a trimmer crashed
    between its floor and its deletes. gc must sweep window 0 only; the committer wins and its head
    resolves, from the listing and from the claims alone."""
    monkeypatch.setattr(refs, "TRIM_EVERY", 4)
    monkeypatch.setattr(refs, "CLAIMS_KEPT", 2)
    _crash_the_trim(monkeypatch)
    a = hd.array((2,), name="p/inc", dtype="int32", storage=any_root)
    for i in range(6):  # heads 1..6: head 6 trimmed (crashed)
        a[0] = i
        a.commit(f"c{i}")
    root = open_root(any_root)
    reached, go, start = paused_at(monkeypatch, "_prune")  # claim 7 created, its name not yet
    a[1] = 8
    t, out = start(lambda: a.commit("live"))
    assert reached.wait(60)
    assert root.get(refs.claim_key("p/inc", "main", 7)) is not None
    gc(repository(root, "p/inc"), dry_run=False, grace=0)
    log = layout.head_log_prefix("p/inc", "main")
    assert sorted(int(k[len(log):]) for k in root.list_prefix(log) if k[len(log):].isdigit()) == [4, 5, 6, 7]
    go.set()
    t.join(120)
    assert len(out) == 1 and isinstance(out[0], str), out
    assert hd.load("p/inc", storage=any_root).commit_id == out[0]
    monkeypatch.setitem(refs._SEEN, (root.token, "p/inc", "main"), 5)
    monkeypatch.setattr(refs, "_list", lambda root, ds, branch: refs._parse_listing(ds, branch, []))
    head = refs.read_head(root, "p/inc", "main")
    assert head is not None and head.base == out[0]


@pytest.mark.parametrize("deleted, where, op", [
    ("dataset", "/refs/log/", "commit"), ("branch", "/refs/log/", "commit"), ("dataset", "/refs/tags/", "tag"),
    ("dataset", "/nodes/", "write"), ("branch", "/nodes/", "write"), ("dataset", "/refs/heads/", "write")])
def test_a_late_writer_whose_temp_file_the_deletion_removed_gets_not_found(tmp_path, monkeypatch, deleted, where, op):
    """A local writer has written the temp file of its object (a claim, a tag, a chunk version, a
    written mark) and not yet moved it into place when another process deletes the dataset or the
    branch, removing the temp file with everything else: the writer must get NotFoundError saying what
    was deleted (not StorageError, a normal return, or a missing commit), and nothing it wrote brings
    the branch or the tag back."""
    from hubdask.storage import files

    root = str(tmp_path / "root")
    a = hd.array((8,), name="p/inc", dtype="int32", chunks=(4,), storage=root)
    a[:] = 1
    a.commit("one")
    exp = a.branch("exp")
    if op != "write":
        exp[0:2] = 5
    real, hit = files._temp_beside, []

    def temp_then_delete(path, parts):
        tmp = real(path, parts)
        if where in str(path) and not hit:
            hit.append(str(path))
            other_process(root, f'hd.delete("p/inc", storage={root!r})' if deleted == "dataset"
                          else 'repo.delete_branch("exp")')
        return tmp

    monkeypatch.setattr(files, "_temp_beside", temp_then_delete)
    said = "dataset 'p/inc' was deleted" if deleted == "dataset" else "branch 'exp' of dataset 'p/inc' was deleted"
    with pytest.raises(hd.NotFoundError, match=said):
        if op == "commit":
            exp.commit("late")
        elif op == "tag":
            exp.tag("v1")
        else:
            exp[0:2] = 7
    assert hit
    monkeypatch.undo()
    if deleted == "dataset":
        hd.array((8,), name="p/inc", dtype="int32", chunks=(4,), storage=root)
    now = hd.load("p/inc", storage=root)
    assert now.branches == ["main"] and now.tags == {}


@pytest.mark.parametrize("recreate", [False, True])
def test_a_stalled_deleter_acts_on_the_life_it_meets_never_on_records_of_one_between(any_root, monkeypatch, recreate):
    """Deleter A seals exp's open node and stalls before the branch is gone. Another process deletes exp,
    creates it again from main and commits a write there; handle B opens the new exp. A resumes and
    returns: it deleted exp at that later instant (and, ``recreate``, made a third life from main). B's
    next write must fail with NotFoundError, a commit of B's must not bring the second life back, and the
    second life's commit stays readable by id. (Before the fix, on S3, A's tombstone claim met the other
    deleter's, byte for byte the same, and took it for its own landing: A returned with the second life
    alive.)"""
    a = hd.array((4,), name="p/inc", dtype="int32", chunks=(4,), storage=any_root)
    a[:] = 1
    first = a.commit("one")
    exp = a.branch("exp")
    exp[0] = 5
    exp.commit("the first life")
    repo = repository(open_root(any_root), "p/inc")

    def delete() -> None:
        repo.delete_branch("exp")
        if recreate:
            repo.create_branch("exp", first)

    reached, go, start = paused_at(monkeypatch, "write_head")
    t, out = start(delete)
    assert reached.wait(60)
    recreate_exp_and_write(any_root, first, commit=True)
    b = hd.load("p/inc:exp", storage=any_root)
    np.testing.assert_array_equal(b.read(), [1, 1, 9, 1])
    second = b.commit_id
    go.set()
    t.join(120)
    assert out == [None], out
    assert hd.load("p/inc", storage=any_root).branches == (["exp", "main"] if recreate else ["main"])
    with pytest.raises(hd.NotFoundError, match="branch 'exp' of dataset 'p/inc' was deleted"):
        b[3] = 4
    if recreate:  # B commits the branch named exp now: the third life, as A made it
        b.commit("B's, on the third life")
        np.testing.assert_array_equal(hd.load("p/inc:exp", storage=any_root).read(), [1, 1, 1, 1])
    else:
        with pytest.raises(hd.NotFoundError, match="p/inc"):
            b.commit("B's, after the deletion")
        repo.create_branch("exp", first)
        np.testing.assert_array_equal(hd.load("p/inc:exp", storage=any_root).read(), [1, 1, 1, 1])
    np.testing.assert_array_equal(hd.load(f"p/inc:{second}", storage=any_root).read(), [1, 1, 9, 1])
