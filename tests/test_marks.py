"""Written and meta marks beside a branch's heads: a mark that lands after its node was sealed (a late
writer) is removed, so the folder that every head resolution lists stays a handful of objects."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import hubdask as hd
from hubdask.storage import open_root
from hubdask.versioning import refs

from helpers import internal


@pytest.fixture(params=["local", "s3"])
def any_root(request, tmp_path) -> str:
    return str(tmp_path / "root") if request.param == "local" else request.getfixturevalue("s3_root")


def _folder(root: str, ds: str) -> list[str]:
    prefix = internal(ds, "refs/heads/main/")
    return sorted(k[len(prefix):] for k in open_root(root).list_prefix(prefix))


def _hold_marks_of(monkeypatch, node: str) -> tuple[threading.Event, threading.Event]:
    """Hold every mark put beside ``node``'s head (written and meta) until ``go`` is set; ``held`` is set
    when the first is reached: the writer has read its head, its mark has not landed yet."""
    held, go = threading.Event(), threading.Event()
    real_written, real_meta = refs.mark_written, refs.mark_meta

    async def written(root, ds, branch, nd, writer):
        if nd == node:
            held.set()
            while not go.is_set():
                await _asleep()
        return await real_written(root, ds, branch, nd, writer)

    async def meta(root, ds, branch, nd):
        if nd == node:
            held.set()
            while not go.is_set():
                await _asleep()
        return await real_meta(root, ds, branch, nd)

    monkeypatch.setattr(refs, "mark_written", written)
    monkeypatch.setattr(refs, "mark_meta", meta)
    return held, go


async def _asleep() -> None:
    import asyncio

    await asyncio.sleep(0.005)


@pytest.mark.parametrize("how", ["write", "append"])
def test_a_mark_that_lands_after_its_node_was_sealed_is_removed(any_root, monkeypatch, how):
    """Each round a writer reads the head (node N), stalls right before its mark lands, two commits
    move the branch past N (the prune of N's marks runs before the mark exists), then the mark lands
    and the write finds N sealed and lands again in the open node. Afterwards the folder holds marks
    of the last two heads' nodes only, whatever the number of rounds, and every write is kept."""
    ds = "m/late"
    a = hd.array((4, 4), name=ds, dtype="int32", chunks=(4, 4), storage=any_root)
    a.commit("start")  # from here on `a` commits the head it made last (no LIST of the folder)
    expected = np.zeros((4, 4), np.int32)
    rounds = 4
    for r in range(rounds):
        a.commit(f"r{r}")  # a fresh open node N, which nobody marked yet
        w = hd.load(ds, storage=any_root)
        held, go = _hold_marks_of(monkeypatch, w._source.node)
        block = np.full((4, 4), r + 1, np.int32)
        act = (lambda: w.append(block)) if how == "append" else (lambda: w.__setitem__(slice(0, 4), block))
        failed: list[BaseException] = []
        t = threading.Thread(target=lambda: _catch(act, failed))
        t.start()
        assert held.wait(60)
        a.commit(f"r{r} a")
        a.commit(f"r{r} b")  # N's head is pruned now, with N's marks (none landed yet)
        go.set()
        t.join(120)
        assert not t.is_alive() and not failed, failed
        monkeypatch.undo()
        if how == "append":
            expected = np.concatenate([expected, block])
        else:
            expected[:4] = block
    for i in range(3):
        a.commit(f"after {i}")
    names = _folder(any_root, ds)
    heads = [n for n in names if n[0].isdigit()]
    kept = {n.split(".")[1] for n in heads}
    marks = [n for n in names if not n[0].isdigit()]
    assert all(refs._marked_node(m) in kept for m in marks), (marks, heads)
    assert len(names) <= 2 + 3 * 2, names
    np.testing.assert_array_equal(hd.load(ds, storage=any_root).read(), expected)
    np.testing.assert_array_equal(hd.load(f"{ds}:{a.log()[0].id}", storage=any_root).read(), expected)


def _catch(fn, failed: list) -> None:
    try:
        fn()
    except BaseException as exc:  # handed to the test
        failed.append(exc)


def test_a_late_mark_whose_writer_died_goes_at_the_next_sweep(tmp_path, monkeypatch):
    """A writer that died after its late mark landed never drops it: the committer's next head at a
    multiple of SWEEP_EVERY prunes from a fresh listing of the folder (the others prune from the one they
    knew), and the mark goes."""
    from hubdask.versioning.repository import Repository

    root = str(tmp_path / "root")
    monkeypatch.setattr(Repository, "SWEEP_EVERY", 4, raising=False)
    a = hd.array((4,), name="m/dead", dtype="int32", storage=root)
    a.commit("start")
    dead = a._source.node
    a[0] = 1
    a.commit("past the dead writer's node")
    a.commit("its head pruned")
    late = refs.written_key("m/dead", "main", dead, many=True)
    open_root(root).put(late, b"")  # landed after the prune; its writer died before dropping it
    for i in range(4):
        a.commit(f"c{i}")
    assert late.rsplit("/", 1)[1] not in _folder(root, "m/dead")
    assert hd.load("m/dead", storage=root).read()[0] == 1
