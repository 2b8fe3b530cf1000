"""Chunk locks for read-modify-write of partial chunks.

A lock is named after (root, dataset, branch, chunk). Inside a dask.distributed context (a current
Client, or code running in a worker) it is a ``distributed.Lock``: the scheduler coordinates every
machine, and its lease (``distributed.scheduler.locks.lease-timeout``, 30 s by default) frees the lock
of a worker that died. Elsewhere it is a process-local lock plus a file lock, which coordinates threads
and the processes of one machine. Several locks are always taken in one global (sorted) order.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import threading
from collections.abc import Iterator

from hubdask import config

_LOCAL: dict[str, threading.Lock] = {}
_LOCAL_GUARD = threading.Lock()


def lock_name(root_url: str, ds: str, branch: str, key: str) -> str:
    return f"hubdask:{root_url}/{ds}:{branch}/{key}"


def distributed_active() -> bool:
    """True inside a dask.distributed worker or with a current distributed Client."""
    if "distributed" not in sys.modules:
        return False
    import distributed

    try:
        distributed.get_worker()
        return True
    except ValueError:
        pass
    try:
        distributed.default_client()
        return True
    except ValueError:
        return False


def resolve_mode(lock: bool | str | None) -> str:
    """``lock`` (True/False/None/mode name) -> one of distributed, local, off."""
    if lock is False:
        return "off"
    mode = lock if isinstance(lock, str) else config.lock_mode()
    if mode == "auto":
        return "distributed" if distributed_active() else "local"
    return mode


class _LocalLock:
    """A thread lock of this process plus a file lock shared by the processes of this machine."""

    def __init__(self, name: str) -> None:
        import filelock

        with _LOCAL_GUARD:
            self._thread = _LOCAL.setdefault(name, threading.Lock())
        folder = config.cache_dir() / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(name.encode()).hexdigest()[:32]
        self._file = filelock.FileLock(str(folder / f"{digest}.lock"))

    def acquire(self) -> None:
        self._thread.acquire()
        try:
            self._file.acquire()
        except BaseException:
            self._thread.release()
            raise

    def release(self) -> None:
        try:
            self._file.release()
        finally:
            self._thread.release()


def _make(name: str, mode: str):
    if mode == "distributed":
        import distributed

        return distributed.Lock(name)
    return _LocalLock(name)


@contextlib.contextmanager
def chunk_locks(names: list[str], lock: bool | str | None = None) -> Iterator[None]:
    """Hold the locks ``names`` (sorted, deduplicated) for the body; released on any error."""
    mode = resolve_mode(lock)
    if mode == "off" or not names:
        yield
        return
    held = []
    try:
        for name in sorted(set(names)):
            lk = _make(name, mode)
            lk.acquire()
            held.append(lk)
        yield
    finally:
        for lk in reversed(held):
            lk.release()
