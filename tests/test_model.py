"""Model-based test: random sequences of writes (aligned and partial), commits, tags, branches,
checkouts, merges and garbage collection on a versioned array, every read checked against a plain
numpy model of each branch and commit.

CI runs a bounded number of examples on the local and memory roots; more on demand:
``HUBDASK_MODEL_EXAMPLES=500 pytest tests/test_model.py``.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import hubdask as hd

SHAPE, CHUNKS = (6, 5), (2, 2)  # edge chunks are partial on both axes
EXAMPLES = int(os.environ.get("HUBDASK_MODEL_EXAMPLES", "25"))
STEPS = int(os.environ.get("HUBDASK_MODEL_STEPS", "25"))
NAMES = st.sampled_from(["a", "b", "c"])


def spans(n: int, c: int):
    """Aligned (chunk borders) or arbitrary [start, stop) on an axis of length n with chunks c."""
    aligned = st.tuples(st.integers(0, (n - 1) // c), st.integers(1, 2)).map(
        lambda t: (t[0] * c, min(n, (t[0] + t[1]) * c)))
    anything = st.tuples(st.integers(0, n - 1), st.integers(1, n)).map(lambda t: (t[0], min(n, t[0] + t[1])))
    return st.one_of(aligned, anything)


class VersionedArrayModel(RuleBasedStateMachine):
    root_kind = "local"
    layout: dict = {"chunks": CHUNKS}

    @initialize()
    def create(self) -> None:
        self.root = (f"/tmp/hubdask-model-{uuid.uuid4().hex}" if self.root_kind == "local"
                     else f"memory://model-{uuid.uuid4().hex}")
        self.arr = hd.array(SHAPE, name="m/x", dtype="int16", **self.layout, storage=self.root)
        first = self.arr.commit_id
        self.commits = {first: np.zeros(SHAPE, np.int16)}  # commit id -> its data
        self.parents = {first: ()}
        self.work = {"main": np.zeros(SHAPE, np.int16)}  # branch -> working state (with uncommitted writes)
        self.base = {"main": first}  # branch -> last commit
        self.dirty = {"main": False}
        self.tags: dict[str, str] = {}
        self.counter = 0

    def teardown(self) -> None:
        import shutil

        if getattr(self, "root", "").startswith("/tmp/hubdask-model-"):
            shutil.rmtree(self.root, ignore_errors=True)

    def open(self, ref: str) -> hd.Array:
        return hd.load(f"m/x:{ref}", storage=self.root)

    def _commit(self, branch: str, message: str = "") -> str:
        cid = self.open(branch).commit(message)
        self._record(branch, cid, (self.base[branch],))
        return cid

    def _record(self, branch: str, cid: str, parents: tuple) -> None:
        self.commits[cid] = self.work[branch].copy()
        self.parents[cid] = parents
        self.base[branch] = cid
        self.dirty[branch] = False

    def _settle(self, branch: str) -> str:
        """What tag/branch/merge do first: commit pending writes, return the branch's commit."""
        return self._commit(branch, "pending") if self.dirty[branch] else self.base[branch]

    branches = property(lambda self: sorted(self.work))

    # --- rules -------------------------------------------------------------------------------------

    @rule(data=st.data(), rows=spans(SHAPE[0], CHUNKS[0]), cols=spans(SHAPE[1], CHUNKS[1]),
          value=st.integers(-1000, 1000))
    def write(self, data, rows, cols, value) -> None:
        branch = data.draw(st.sampled_from(self.branches))
        sel = (slice(*rows), slice(*cols))
        block = (np.arange((rows[1] - rows[0]) * (cols[1] - cols[0]), dtype=np.int16).reshape(
            rows[1] - rows[0], cols[1] - cols[0]) + value).astype(np.int16)
        self.open(branch)[sel] = block
        self.work[branch][sel] = block
        self.dirty[branch] = True

    @rule(data=st.data())
    def commit(self, data) -> None:
        self._commit(data.draw(st.sampled_from(self.branches)), "c")

    @rule(data=st.data())
    def tag(self, data) -> None:
        branch = data.draw(st.sampled_from(self.branches))
        self.counter += 1
        name = f"t{self.counter}"
        cid = self._settle(branch)
        assert self.open(branch).tag(name) == cid
        self.tags[name] = cid

    @precondition(lambda self: len(self.work) < 3)
    @rule(data=st.data(), name=NAMES)
    def branch(self, data, name) -> None:
        src = data.draw(st.sampled_from(self.branches))
        if name in self.work:
            with pytest.raises(hd.AlreadyExistsError, match="m/x"):
                self.open(src).branch(name)
            return
        cid = self._settle(src)
        new = self.open(src).branch(name)
        assert new.branch_name == name and new.commit_id == cid
        self.work[name], self.base[name], self.dirty[name] = self.commits[cid].copy(), cid, False

    @rule(data=st.data())
    def checkout(self, data) -> None:
        """Open any branch, tag or commit and compare a random window (a lazy view) with the model."""
        refs = self.branches + sorted(self.tags) + sorted(self.commits)
        ref = data.draw(st.sampled_from(refs))
        want = self.work.get(ref, self.commits.get(self.tags.get(ref, ref)))
        r0, r1 = data.draw(spans(SHAPE[0], CHUNKS[0]))
        c0, c1 = data.draw(spans(SHAPE[1], CHUNKS[1]))
        view = self.open(ref)[r0:r1, c0:c1]
        np.testing.assert_array_equal(view.compute() if data.draw(st.booleans()) else view.read(),
                                      want[r0:r1, c0:c1])
        if ref not in self.work:
            with pytest.raises(hd.ReadOnlyError):
                self.open(ref)[0, 0] = 1

    @precondition(lambda self: len(self.work) > 1)
    @rule(data=st.data())
    def merge(self, data) -> None:
        ours = data.draw(st.sampled_from(self.branches))
        theirs = data.draw(st.sampled_from([b for b in self.branches if b != ours]))
        o_cid, t_cid = self._settle(ours), self._settle(theirs)
        base = self.merge_base(o_cid, t_cid)
        B, O, T = self.commits[base], self.commits[o_cid], self.commits[t_cid]
        clash = (O != B) & (T != B) & (O != T)
        arr = self.open(ours)
        if base == t_cid:
            assert arr.merge(theirs) == o_cid
            return
        if clash.any():
            with pytest.raises(hd.ConflictError, match="m/x"):
                arr.merge(theirs)
            strategy = data.draw(st.sampled_from(["ours", "theirs"]))
            cid = arr.merge(theirs, strategy=strategy)
            take_t = (T != B) & ~clash if strategy == "ours" else (T != B)
        else:
            cid = arr.merge(theirs)
            take_t = T != B
        self.work[ours] = np.where(take_t, T, O)
        self._record(ours, cid, (o_cid, t_cid))

    @rule()
    def gc(self) -> None:
        """Collect everything no branch or tag reaches; the model forgets those commits too."""
        hd.gc("m/x", dry_run=False, grace=0, storage=self.root)
        keep = set()
        frontier = list(self.base.values()) + list(self.tags.values())
        while frontier:
            c = frontier.pop()
            if c not in keep:
                keep.add(c)
                frontier.extend(self.parents[c])
        for c in set(self.commits) - keep:
            del self.commits[c]
            with pytest.raises(hd.NotFoundError):
                self.open(c)

    # --- the model's own merge base (the documented rule, git's: a best common ancestor, one that is no
    # ancestor of another common one; among those the nearest, ties by id) ----------------------------

    def merge_base(self, a: str, b: str) -> str:
        def dist(c: str) -> dict[str, int]:
            out, frontier = {c: 0}, [c]
            while frontier:
                nxt = []
                for x in frontier:
                    for p in self.parents[x]:
                        if p not in out:
                            out[p] = out[x] + 1
                            nxt.append(p)
                frontier = nxt
            return out

        da_, db = dist(a), dist(b)
        common = set(da_) & set(db)
        below = {x for c in common for p in self.parents[c] for x in dist(p)}
        return min(common - below, key=lambda c: (da_[c] + db[c], c))

    @invariant()
    def branches_read_as_modelled(self) -> None:
        if not hasattr(self, "work"):
            return
        for b, want in self.work.items():
            np.testing.assert_array_equal(self.open(b).read(), want)


SETTINGS = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


class LocalModel(VersionedArrayModel):
    root_kind = "local"


class MemoryModel(VersionedArrayModel):
    """The same rules over a sharded array: the storage objects (shards) are CHUNKS, of 1x1 inner chunks,
    so writes, merges and gc work inside shards."""

    root_kind = "memory"
    layout = {"chunks": (1, 1), "shards": CHUNKS}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBDASK_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("revert", [True, False])
def test_merging_a_branch_that_only_inherited_keeps_our_change(tmp_path, revert):
    """The shortest history the model found where two common ancestors are equally near: main commits
    C1 then C2; a and b both merge main (both then hold C1 and C2); a rewrites chunk 0 (back to C1's
    values, or to new ones); merging b into a must keep a's chunk and raise no conflict: b changed
    nothing since C2, the best common ancestor (C1 is C2's parent, so it is no merge base)."""
    root = str(tmp_path / "root")
    main = hd.array(SHAPE, name="m/x", dtype="int16", chunks=CHUNKS, storage=root)
    main[0:2, 0:2] = [[0, 1], [2, 3]]
    main.commit("C1")
    a, b = main.branch("a"), main.branch("b")
    main[0:2, 0:2] = [[-999, -998], [-997, -996]]
    c2 = main.commit("C2")
    a.merge("main")
    b.merge("main")
    ours = [[0, 1], [2, 3]] if revert else [[5, 6], [7, 8]]
    a[0:2, 0:2] = ours
    a.commit("a's change")
    assert hd.load("m/x:a", storage=root)._repo.graph.merge_base(a.commit_id, b.commit_id) == c2
    a.merge("b")
    want = np.zeros(SHAPE, np.int16)
    want[0:2, 0:2] = ours
    np.testing.assert_array_equal(hd.load("m/x:a", storage=root).read(), want)


TestLocalModel = LocalModel.TestCase
TestLocalModel.settings = SETTINGS
TestMemoryModel = MemoryModel.TestCase
TestMemoryModel.settings = SETTINGS
