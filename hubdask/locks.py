"""Chunk locks for read-modify-write of partial chunks.

A lock is named after (root, dataset, branch, chunk). Inside a dask.distributed context (a current
Client, or code running in a worker task) it is a ``distributed.Lock``: the scheduler coordinates every
machine connected to it, and the lock's lease (``distributed.scheduler.locks.lease-timeout``, 30 s by
default) frees the lock of a writer that died. Elsewhere it is a process-local lock plus a file lock,
kept beside a local root (``ROOT/@locks/``, so every process that sees the root takes the same lock,
whatever its ``HUBDASK_CACHE``), or in the cache folder for a remote root.

Locks are for speed, not for safety: every chunk write is fenced by an exclusive create of the chunk's
next version (versioning.store.put_version), so a writer whose lease expired, or writers that share no
lock at all (two machines without a scheduler), still lose no update; the loser of a race reads again
and retries. The locks make writers of one chunk take turns instead.

Chunk names are hashed into a bounded set of *stripes* (``HUBDASK_LOCK_STRIPES``, 4096 by default) and
the stripe is what gets locked. distributed's scheduler never forgets a lock name (it keeps about eight
dict entries per name until someone calls ``close``, which is unsafe while others wait), and every
``distributed.Lock`` object keeps a lease-refresh callback alive in its process; one name per chunk
would grow both without bound over a long job. Stripes bound them, at the price of a rare wait when
two chunks share a stripe. Several stripes are always taken in one global (sorted) order, so writers
never deadlock, and everything taken is released on any error.

``distributed.MultiLock`` is never used: it has no lease, so a killed holder would keep it forever.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from pathlib import Path

from hubdask import config
from hubdask.scheduler import distributed_active, distributed_owner

LOCK_FOLDER = "@locks"  # beside a local root's datasets; '@' is in no dataset name

_GUARD = threading.Lock()
_THREAD: dict[str, threading.Lock] = {}  # stripe -> lock for the threads of this process
_FILES: dict[str, Any] = {}  # lock file path -> filelock.FileLock, shared by the processes of this machine
# the Worker or Client a distributed lock is bound to -> {stripe: distributed.Lock}
_DIST: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()


def lock_name(root_url: str, ds: str, branch: str, key: str) -> str:
    """The logical lock of one chunk of one branch."""
    return f"hubdask:{root_url}/{ds}:{branch}/{key}"


def stripe(name: str, stripes: int | None = None) -> str:
    """The stripe that lock ``name`` maps to: the same in every process (a stable hash)."""
    n = stripes or config.lock_stripes()
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return f"hubdask-lock-{digest % n:05d}"


def resolve_mode(lock: bool | str | None) -> str:
    """``lock`` (True/False/None/mode name) -> one of distributed, local, off.

    ``None`` follows ``HUBDASK_LOCKS``; ``False`` is off; ``True`` locks even if the setting says off.
    """
    if lock is False:
        return "off"
    if isinstance(lock, str):
        mode = lock.lower()
        if mode not in ("auto", "distributed", "local", "off"):
            raise ValueError(f"lock={lock!r}: expected True, False, 'auto', 'distributed', 'local' or 'off'")
    else:
        mode = config.lock_mode()
        if lock is True and mode == "off":
            mode = "auto"
    if mode == "auto":
        return "distributed" if distributed_active() else "local"
    return mode


def _thread_lock(name: str) -> threading.Lock:
    with _GUARD:
        lk = _THREAD.get(name)
        if lk is None:
            lk = _THREAD[name] = threading.Lock()
        return lk


def _file_lock(name: str, root: Any = None) -> Any:
    import filelock

    if root is not None and root.is_local:
        path = Path(root.url) / LOCK_FOLDER / f"{name}.lock"  # with the root: every process that sees it
    else:
        path = config.cache_dir() / "locks" / f"{name}.lock"  # keyed by path: HUBDASK_CACHE may change
    with _GUARD:
        lk = _FILES.get(str(path))
        if lk is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            lk = _FILES[str(path)] = filelock.FileLock(str(path), thread_local=False)
        return lk


def _distributed_lock(name: str) -> tuple[Any, bool]:
    """This process's ``distributed.Lock`` for stripe ``name``, bound to the worker's scheduler connection
    inside a task (else to the current client's), created once and reused; and whether it is a worker's."""
    import distributed

    owner = distributed_owner()
    if owner is None:
        raise RuntimeError("chunk locks in 'distributed' mode need a dask.distributed Client or worker; "
                           "none is active (set HUBDASK_LOCKS=auto or local)")
    with _GUARD:
        per_owner = _DIST.setdefault(owner, {})
        lk = per_owner.get(name)
        if lk is None:
            lk = per_owner[name] = distributed.Lock(name, scheduler_rpc=owner.scheduler, loop=owner.loop)
        return lk, isinstance(owner, distributed.Worker)


# seconds between a waiter's tries of a file lock (filelock polls; its default, 50 ms, made four local
# appenders, whose critical sections take about a millisecond, slower together than one alone)
FILE_POLL = 0.002


class _Held:
    """One stripe taken: the thread lock, then the file lock or the distributed lock."""

    def __init__(self, name: str, mode: str, root: Any = None) -> None:
        self.thread = _thread_lock(name)
        self.nowait = False  # release without waiting for the scheduler (in a long-lived worker only)
        self.outer: Any = None
        self.thread.acquire()
        try:
            if mode == "distributed":
                outer, self.nowait = _distributed_lock(name)
                outer.acquire()
            else:
                outer = _file_lock(name, root)
                outer.acquire(poll_interval=FILE_POLL)
            self.outer = outer
        except BaseException:
            self.thread.release()
            raise

    def release(self) -> None:
        try:
            if self.nowait:
                _release_nowait(self.outer)
            else:
                self.outer.release()
        finally:
            self.thread.release()


def _release_nowait(lk: Any) -> None:
    """Release a worker's ``distributed.Lock`` without waiting for the scheduler's reply: one round trip
    per locked write instead of two (the write is complete before this runs; the worker's event loop
    sends the release). One that never arrives (the worker died) is covered by the lease timeout. A
    client process, which may exit right after its write, releases synchronously. Falls back to
    ``release()`` if distributed's Semaphore internals ever change."""
    send = getattr(lk, "_release", None)
    leases = getattr(lk, "_leases", None)
    if send is None or not leases:
        lk.release()
        return
    lk.loop.add_callback(send, leases.popleft())


@contextlib.contextmanager
def chunk_locks(names: list[str], lock: bool | str | None = None, root: Any = None) -> Iterator[None]:
    """Hold the locks ``names`` for the body: their stripes, deduplicated, taken in sorted order and all
    released on any error (including an error while taking a later one). ``root``: the storage root the
    chunks live in (a local root keeps its lock files)."""
    mode = resolve_mode(lock)
    if mode == "off" or not names:
        yield
        return
    stripes = sorted({stripe(n) for n in names})
    held: list[_Held] = []
    try:
        for s in stripes:
            held.append(_Held(s, mode, root))
        yield
    except BaseException:
        _release(held)
        raise
    _release(held, report=True)


def _release(held: list[_Held], report: bool = False) -> None:
    """Release every lock in ``held`` (last taken first), even if one release fails: an unreleased
    distributed lease expires anyway. With ``report``, the first failure is raised afterwards."""
    errors = []
    for h in reversed(held):
        try:
            h.release()
        except Exception as exc:
            errors.append(exc)
    if errors and report:
        raise errors[0]


def _reset_after_fork() -> None:
    """In a forked child: forget every lock, whose holders (threads of the parent) do not exist here;
    a lock held by another thread at the fork would otherwise stay taken in the child forever."""
    global _GUARD
    _GUARD = threading.Lock()
    _THREAD.clear()
    _FILES.clear()
    _DIST.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
