"""The randomized concurrent-history checker (tests/torture.py): proof that it fails on bad histories,
then bounded torture runs on a local root and on moto S3 (through the fault proxy).

CI runs the local torture for 20 s, the S3 one for 25 s and the one with a dask scheduler for 12 s;
a long run of all three on demand:
``HUBDASK_TORTURE_MINUTES=10 python -m pytest -s tests/test_torture.py`` (``-s`` prints the figures).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import torture
from hubdask.versioning import refs
from torture import Config, DatasetSpec, History, Op

MINUTES = float(os.environ.get("HUBDASK_TORTURE_MINUTES", "0") or 0)
TORTURE_SECONDS = MINUTES * 60 if MINUTES else 20.0
S3_SECONDS = MINUTES * 60 if MINUTES else 25.0  # S3 operations are slower: more time for as many
DASK_SECONDS = MINUTES * 60 if MINUTES else 12.0
RUN_TIMEOUT = int(S3_SECONDS * 2 + 240)  # start, drain, check
LINE = DatasetSpec("t/line", (8,), (4,))


# --- the checker on hand-made histories ----------------------------------------------------------

class FakeStorage:
    """What storage holds at the end: arrays per (dataset, ref), branch and tag lists."""

    def __init__(self, arrays: dict[tuple[str, str], list[int]], tags: dict[str, str] | None = None,
                 branches: tuple[str, ...] = ("main",)) -> None:
        self.arrays = {k: np.array(v, dtype=np.int64) for k, v in arrays.items()}
        self._tags, self._branches = tags or {}, list(branches)

    def branches(self, ds: str) -> list[str]:
        return list(self._branches)

    def tags(self, ds: str) -> dict[str, str]:
        return dict(self._tags)

    def read(self, ds: str, ref: str) -> np.ndarray:
        ref = self._tags.get(ref, ref)
        if (ds, ref) not in self.arrays:
            raise LookupError(f"no ref {ref!r}")
        return self.arrays[(ds, ref)]


def write(uid: int, seq: int, lo: int, hi: int, t0: float, t1: float | None, status: str = "ok",
          killed_at: float | None = None, ref: str = "main") -> Op:
    value = uid * torture.VALUE_BASE + seq
    return Op(uid, seq, "partial", LINE.name, ref, dict(sel=[[lo, hi]], value=value, whole=False), t0, t1,
              status if t1 is not None else "unknown", killed_at=killed_at)


def v(uid: int, seq: int) -> int:
    return uid * torture.VALUE_BASE + seq


def judge(ops: list[Op], final: list[int], **extra: list[int]) -> torture.Report:
    arrays = {(LINE.name, "main"): final, **{(LINE.name, k): a for k, a in extra.items()}}
    branches = ("main", "b") if "b" in extra else ("main",)
    return torture.check(History(ops, t_end=100.0), FakeStorage(arrays, branches=branches), [LINE], late_landing=1.0)


def test_overlapping_writes_may_end_either_way_and_untouched_elements_keep_the_fill() -> None:
    ops = [write(1, 1, 0, 6, 0.0, 2.0), write(2, 1, 2, 8, 1.0, 3.0)]  # concurrent: neither dominates
    for middle in (v(1, 1), v(2, 1)):
        report = judge(ops, [v(1, 1)] * 2 + [middle] * 4 + [v(2, 1)] * 2)
        assert report.ok, report.summary()
    assert judge([write(1, 1, 0, 4, 0.0, 1.0)], [v(1, 1)] * 4 + [0] * 4).ok


def test_a_returned_write_that_is_missing_is_reported_with_the_element_and_candidates() -> None:
    ops = [write(1, 1, 0, 4, 0.0, 1.0), write(2, 1, 2, 6, 2.0, 3.0)]  # 2 returned after 1: it dominates
    report = judge(ops, [v(1, 1)] * 4 + [v(2, 1)] * 2 + [0] * 2)  # elements 2 and 3 lost write 2

    assert not report.ok
    assert report.counts == {"branch-final": 2}
    first = report.anomalies[0]
    assert first.invariant == "branch-final" and first.ref == "main"
    assert "lost write: an overwritten (dominated) value is back" in first.message
    assert first.detail["element"] == (2,)
    assert first.detail["found"] == "u1/s1"
    assert [a["value"] for a in first.detail["allowed"]] == ["u2/s1"]
    assert first.detail["dominated_by"]["op"] == "u2/s1 partial"
    assert "[branch-final] t/line:main" in report.summary() and "element" in report.summary()


def test_the_fill_value_after_a_returned_write_is_a_lost_write() -> None:
    report = judge([write(1, 1, 0, 8, 0.0, 1.0)], [v(1, 1)] * 7 + [0])
    assert report.counts == {"branch-final": 1}
    assert "the initial value is back" in report.anomalies[0].message
    assert report.anomalies[0].detail["element"] == (7,)


def test_a_value_no_write_produced_is_reported() -> None:
    report = judge([write(1, 1, 0, 8, 0.0, 1.0)], [v(1, 1)] * 7 + [v(9, 9)])
    assert report.counts == {"branch-final": 1}
    assert "a value that no write produced" in report.anomalies[0].message


def test_a_value_written_elsewhere_is_reported() -> None:
    ops = [write(1, 1, 0, 4, 0.0, 1.0), write(1, 2, 4, 8, 1.0, 2.0)]
    report = judge(ops, [v(1, 1)] * 5 + [v(1, 2)] * 3)  # element 4 got write 1's value
    assert report.counts == {"branch-final": 1}
    assert "no write of this branch put at this element" in report.anomalies[0].message


def test_a_write_whose_process_died_may_land_but_never_after_it_was_overwritten() -> None:
    died = write(2, 1, 0, 8, 1.0, None, killed_at=2.0)
    assert judge([write(1, 1, 0, 8, 0.0, 0.5), died], [v(1, 1)] * 8).ok  # it did not land
    assert judge([write(1, 1, 0, 8, 0.0, 0.5), died], [v(2, 1)] * 8).ok  # it landed
    later = write(1, 2, 0, 8, 5.0, 6.0)  # invoked after the kill (+1 s of late landing) and returned
    report = judge([write(1, 1, 0, 8, 0.0, 0.5), died, later], [v(2, 1)] * 8)
    assert report.counts == {"branch-final": 8}
    failed = write(2, 1, 0, 8, 1.0, 1.5, status="error")  # raised: may have landed, dominates nothing
    assert judge([write(1, 1, 0, 8, 0.0, 0.5), failed], [v(1, 1)] * 8).ok
    assert judge([write(1, 1, 0, 8, 0.0, 0.5), failed, later], [v(1, 2)] * 8).ok


def commit_op(uid: int, seq: int, t0: float, t1: float, cid: str, snapshot: list[int], kind: str = "commit",
              ref: str = "main", **args) -> Op:
    return Op(uid, seq, kind, LINE.name, ref, args, t0, t1, "ok", result={"cid": cid},
              snapshot=np.array(snapshot, dtype=np.int64), digest=None)


def test_a_commit_that_changed_or_vanished_or_missed_a_write_is_reported() -> None:
    w = write(1, 1, 0, 8, 0.0, 1.0)
    good = commit_op(1, 2, 2.0, 3.0, "c1", [v(1, 1)] * 8)
    assert judge([w, good], [v(1, 1)] * 8, c1=[v(1, 1)] * 8).ok

    changed = judge([w, good], [v(1, 1)] * 8, c1=[v(1, 1)] * 7 + [0])
    assert changed.counts == {"commit-changed": 1}
    assert changed.anomalies[0].detail == {"first_element": 7, "then": "u1/s1", "now": "fill"}

    assert judge([w, good], [v(1, 1)] * 8).counts == {"commit-unreadable": 1}

    stale = commit_op(1, 2, 2.0, 3.0, "c1", [0] * 8)  # made after the write returned, without it
    assert judge([w, stale], [v(1, 1)] * 8, c1=[0] * 8).counts == {"commit-snapshot": 8}


def test_tags_must_stay_where_they_were_made() -> None:
    w = write(1, 1, 0, 8, 0.0, 1.0)
    tag = commit_op(1, 2, 2.0, 3.0, "c1", [v(1, 1)] * 8, kind="tag", tag="t1")
    arrays = {(LINE.name, "main"): [v(1, 1)] * 8, (LINE.name, "c1"): [v(1, 1)] * 8,
              (LINE.name, "c2"): [0] * 8}
    report = torture.check(History([w, tag], t_end=100.0), FakeStorage(arrays, {"t1": "c2"}), [LINE])
    assert report.counts == {"tag-moved": 1}
    assert "now names c2" in report.anomalies[0].message
    report = torture.check(History([w, tag], t_end=100.0), FakeStorage(arrays, {}), [LINE])
    assert report.counts == {"ref-missing": 1}


def test_a_merge_must_bring_its_branch_changes_into_main() -> None:
    base = commit_op(1, 1, 0.0, 1.0, "c0", [0] * 8, kind="branch", branch="b")
    bw = write(1, 2, 0, 4, 2.0, 3.0, ref="b")
    bc = commit_op(1, 3, 4.0, 5.0, "c1", [v(1, 2)] * 4 + [0] * 4, kind="bcommit", ref="b", branch="b")
    merged = [v(1, 2)] * 4 + [0] * 4
    merge = commit_op(1, 4, 6.0, 7.0, "c2", merged, kind="merge", branch="b", theirs="c1", base="c0", strategy=None)
    refs = dict(c0=[0] * 8, c1=[v(1, 2)] * 4 + [0] * 4, c2=merged, b=[v(1, 2)] * 4 + [0] * 4)
    assert judge([base, bw, bc, merge], merged, **refs).ok

    report = judge([base, bw, bc, merge], [0] * 8, **refs)  # main lost what the merge brought
    assert report.counts == {"branch-final": 4}

    lossy = commit_op(1, 4, 6.0, 7.0, "c2", [0] * 8, kind="merge", branch="b", theirs="c1", base="c0", strategy=None)
    report = judge([base, bw, bc, lossy], merged, **{**refs, "c2": [0] * 8})
    assert report.counts["merge-content"] == 4
    assert report.anomalies[-1].detail["expected"] == "u1/s2"


def test_a_branch_is_judged_from_its_base_commit() -> None:
    main_w = write(1, 1, 0, 8, 0.0, 1.0)
    base = commit_op(1, 2, 2.0, 3.0, "c0", [v(1, 1)] * 8, kind="branch", branch="b")
    bw = write(1, 3, 0, 2, 4.0, 5.0, ref="b")
    refs = dict(c0=[v(1, 1)] * 8)
    assert judge([main_w, base, bw], [v(1, 1)] * 8, b=[v(1, 3)] * 2 + [v(1, 1)] * 6, **refs).ok
    report = judge([main_w, base, bw], [v(1, 1)] * 8, b=[v(1, 3)] * 2 + [0] * 6, **refs)
    assert report.counts == {"branch-final": 6}
    assert report.anomalies[0].ref == "b" and report.anomalies[0].detail["initial"] == "u1/s1"


# --- shapes: resize and append ----------------------------------------------------------------------

GROW = DatasetSpec("t/grow", (16,), (4,), grow=4)  # starts with 4 elements, capacity 16


def shaped(uid: int, seq: int, kind: str, t0: float, t1: float | None, rows: int | list[int],
           status: str = "ok") -> Op:
    """An append (``rows``: the region [start, stop] it returned) or a resize (``rows``: the new length)."""
    if kind == "append":
        return Op(uid, seq, kind, GROW.name, "main", dict(rows=rows[1] - rows[0], value=v(uid, seq)), t0, t1,
                  status if t1 is not None else "unknown", result=dict(rows=rows) if status == "ok" else None)
    return Op(uid, seq, kind, GROW.name, "main", dict(rows=rows), t0, t1, status if t1 is not None else "unknown",
              result=dict(rows=rows))


def judge_grow(ops: list[Op], final: list[int]) -> torture.Report:
    return torture.check(History(ops, t_end=100.0), FakeStorage({(GROW.name, "main"): final}), [GROW])


def test_appends_set_the_shape_and_their_rows() -> None:
    ops = [shaped(1, 1, "append", 0.0, 1.0, [4, 7]), shaped(2, 1, "append", 2.0, 3.0, [7, 9])]
    assert judge_grow(ops, [0] * 4 + [v(1, 1)] * 3 + [v(2, 1)] * 2).ok
    report = judge_grow(ops, [0] * 4 + [v(1, 1)] * 3)  # the second append's rows are gone
    assert report.counts == {"shape": 1}
    assert "7 rows" in report.anomalies[0].message
    assert report.anomalies[0].detail["dominated_by"]["op"] == "u2/s1 append"
    report = judge_grow(ops, [0] * 4 + [v(1, 1)] * 2 + [0] + [v(2, 1)] * 2)  # a returned row lost its values
    assert report.counts == {"branch-final": 1}


def test_a_read_after_an_append_returned_must_see_its_rows() -> None:
    """The anomaly the checker found in hubdask (a handle that wrote kept its old shape): a read invoked
    after an append returned, with the rows before it."""
    app = shaped(1, 1, "append", 0.0, 1.0, [4, 9])
    read = Op(2, 1, "read", GROW.name, "main", {}, 2.0, 3.0, "ok", snapshot=np.zeros(4, np.int64))
    report = judge_grow([app, read], [0] * 4 + [v(1, 1)] * 5)
    assert report.counts == {"shape": 1} and report.anomalies[0].invariant == "shape"
    concurrent = Op(2, 1, "read", GROW.name, "main", {}, 0.5, 3.0, "ok", snapshot=np.zeros(4, np.int64))
    assert judge_grow([app, concurrent], [0] * 4 + [v(1, 1)] * 5).ok


def test_a_shrink_then_grow_never_brings_old_rows_back() -> None:
    ops = [shaped(1, 1, "append", 0.0, 1.0, [4, 8]), shaped(1, 2, "resize", 2.0, 3.0, 4),
           shaped(1, 3, "resize", 4.0, 5.0, 8)]
    assert judge_grow(ops, [0] * 8).ok
    report = judge_grow(ops, [0] * 4 + [v(1, 1)] * 4)
    assert report.counts == {"branch-final": 4}
    assert "dominated" in report.anomalies[0].message
    assert judge_grow(ops, [0] * 4).counts == {"shape": 1}  # the grow to 8 returned last


def test_an_append_that_died_may_have_landed_anywhere_past_the_start() -> None:
    died = shaped(2, 1, "append", 0.5, None, [0, 0])
    died.killed_at = 1.0
    assert judge_grow([died], [0] * 4).ok
    assert judge_grow([died], [0] * 4 + [v(2, 1)] * 3).ok
    after = judge_grow([died, shaped(1, 1, "resize", 5.0, 6.0, 4)], [0] * 4 + [v(2, 1)] * 3)  # cut since
    assert after.counts == {"shape": 1, "branch-final": 3}


# --- a shared branch deleted and made again under its name ------------------------------------------

def shared_write(uid: int, seq: int, t0: float, t1: float, status: str = "ok") -> Op:
    return Op(uid, seq, "swrite", LINE.name, "s", dict(sel=[[0, 8]], value=v(uid, seq), whole=True), t0, t1, status)


def recreate(uid: int, seq: int, t0: float, t1: float, base: list[int], cid: str = "c0") -> Op:
    return Op(uid, seq, "recreate", LINE.name, "main", dict(branch="s"), t0, t1, "ok", result={"cid": cid},
              snapshot=np.array(base, dtype=np.int64))


def judge_shared(ops: list[Op], shared: list[int] | None, main: list[int] | None = None) -> torture.Report:
    arrays = {(LINE.name, "main"): main or [0] * 8, (LINE.name, "c0"): [0] * 8}
    branches = ("main",)
    if shared is not None:
        arrays[(LINE.name, "s")], branches = shared, ("main", "s")
    return torture.check(History(ops, t_end=100.0), FakeStorage(arrays, branches=branches), [LINE], shared="s")


def test_a_recreated_branch_starts_from_its_new_base() -> None:
    ops = [shared_write(1, 1, 0.0, 1.0), recreate(2, 1, 2.0, 3.0, [0] * 8)]
    assert judge_shared(ops, [0] * 8).ok
    report = judge_shared(ops, [v(1, 1)] * 8)  # the deleted life's write is back
    assert report.counts == {"branch-final": 8}
    assert report.anomalies[0].ref == "s#1"
    assert judge_shared(ops[:1], [v(1, 1)] * 8).ok  # without the re-creation it is the branch's value


def test_a_write_into_the_new_life_must_stay_there() -> None:
    """What a stale committer claiming into the re-created branch does: the branch goes back to the old
    life's state, and a write that returned in the new one is lost."""
    ops = [shared_write(1, 1, 0.0, 1.0), recreate(2, 1, 2.0, 3.0, [0] * 8), shared_write(3, 1, 4.0, 5.0)]
    assert judge_shared(ops, [v(3, 1)] * 8).ok
    report = judge_shared(ops, [v(1, 1)] * 8)
    assert report.counts == {"branch-final": 8}
    assert report.anomalies[0].detail["dominated_by"]["op"] == "u3/s1 swrite"
    straddling = shared_write(3, 1, 2.5, 5.0)  # invoked during the re-creation: it may have gone either way
    assert judge_shared(ops[:2] + [straddling], [v(3, 1)] * 8).ok
    assert judge_shared(ops[:2] + [straddling], [0] * 8).ok


def test_a_recreated_branch_that_is_gone_is_missing() -> None:
    ops = [recreate(2, 1, 2.0, 3.0, [0] * 8)]
    assert judge_shared(ops, None).counts == {"ref-missing": 1}
    unsure = Op(2, 1, "recreate", LINE.name, "main", dict(branch="s"), 2.0, None, "unknown", killed_at=2.5)
    assert judge_shared([unsure], None).ok  # it died between the delete and the create


# --- the whole pipeline: worker processes, storage, checker ----------------------------------------

@pytest.fixture
def cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process of the run shares one HUBDASK_CACHE (and its lock files) in the test's folder."""
    monkeypatch.setenv("HUBDASK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HUBDASK_LOCKS", raising=False)


@pytest.mark.timeout(180)
def test_the_pipeline_catches_a_write_path_that_drops_writes(tmp_path: Path, cache_env: None) -> None:
    """Workers whose ``a[sel] = v`` silently drops every 4th write, no faults: the check must fail."""
    cfg = Config(root=str(tmp_path / "root"), workers=1, seconds=3.0, faults=(), sabotage=4)
    report = torture.run(cfg, tmp_path / "run")
    assert not report.ok
    assert set(report.counts) & {"branch-final", "read", "commit-snapshot"}
    assert any("lost write" in a.message for a in report.anomalies)


def exercised(report: torture.Report) -> None:
    """The run did what it is for: no worker crashed on its own (a broken harness), and writes, commits,
    appends and resizes returned, and so did writes to the shared branch (and its re-creations)."""
    assert report.faults["exit"] == 0, report.summary()
    for kind in ("partial", "whole", "commit", "append", "swrite", "scommit"):
        assert report.ops[f"{kind} ok"] > 0, (kind, report.summary())
    assert report.checked["commits"] > 0 and report.checked["read shapes"] > 0


@pytest.mark.timeout(RUN_TIMEOUT)
def test_torture_local_root(tmp_path: Path, cache_env: None) -> None:
    """Three worker processes on a local folder, SIGKILL and SIGSTOP at random moments."""
    cfg = Config(root=str(tmp_path / "root"), workers=3, seconds=TORTURE_SECONDS, seed=11,
                 faults=("kill", "stop"), fault_interval=3.0)
    report = torture.run(cfg, tmp_path / "run")
    exercised(report)
    # the commit-heavy dataset's main went past a claim-log trim (refs.TRIM_EVERY + CLAIMS_KEPT heads)
    assert report.checked["commits on the busiest branch"] > refs.TRIM_EVERY + refs.CLAIMS_KEPT, report.summary()
    assert report.ok, report.summary()


@pytest.mark.timeout(RUN_TIMEOUT)
def test_torture_s3_through_the_fault_proxy(tmp_path: Path, s3_root_faulty: str, fault_proxy, cache_env: None) -> None:
    """Three worker processes on moto S3, each with its own cache (as on separate machines, no scheduler),
    SIGKILL, SIGSTOP and fault-proxy episodes (503s, resets, truncations, delays)."""
    cfg = Config(root=s3_root_faulty, workers=3, seconds=S3_SECONDS, seed=12, separate_caches=True,
                 faults=("kill", "stop", "proxy"), fault_interval=3.0, late_landing=2.0)
    report = torture.run(cfg, tmp_path / "run", proxy=fault_proxy)
    exercised(report)
    assert report.ok, report.summary()


@pytest.mark.timeout(RUN_TIMEOUT)
def test_torture_dask_scheduler(tmp_path: Path, cache_env: None) -> None:
    """The workers are clients of one dask scheduler (chunk locks through it, leases of 2 s) and also run
    ``hd.store`` jobs on a LocalCluster worker; SIGSTOP holds a worker past its lease, SIGKILL hits workers
    and the dask worker process."""
    distributed = pytest.importorskip("distributed")  # noqa: F841
    cfg = Config(root=str(tmp_path / "root"), workers=3, seconds=DASK_SECONDS, seed=13, scheduler=True,
                 faults=("kill", "stop", "kill_dask"), fault_interval=3.0)
    report = torture.run(cfg, tmp_path / "run")
    assert report.checked["scheduler lock acquisitions"] > 0  # the writes did go through the scheduler
    exercised(report)
    assert report.ok, report.summary()
