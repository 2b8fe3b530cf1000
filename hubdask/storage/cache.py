"""The local disk cache of immutable objects: committed chunks of remote roots, read through.

Only objects reached through a commit's chunk map are cached: a committed node never changes, so a
cached copy can never be stale and needs no validation. A branch's open node (uncommitted writes) is
never cached, and local or memory roots are not cached at all (they are as fast as the cache).

Built on diskcache (SQLite index + one file per object): bounded by ``HUBDASK_CACHE_SIZE`` (``0`` turns
it off), least-recently-used eviction, safe for many processes and threads at once (DataLoader
workers, dask workers on one machine), and it survives restarts. Location ``HUBDASK_CACHE``
(default ``~/.cache/hubdask``), folder ``objects/``. Every entry carries a crc32c of its bytes: a
corrupted or truncated entry is dropped and refetched, never returned. When the disk is full, caching
turns off for this process with one warning, and reads go on from storage.

``hd.cache.info()`` gives this process's hits, misses and the bytes held on disk (shared by all
processes); ``hd.cache.clear()`` empties it.
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import os
import sqlite3
import threading
import warnings
from pathlib import Path
from typing import Any

from hubdask import config
from hubdask.storage.root import Root

_CACHES: dict[tuple[str, int], Any] = {}  # (folder, pid) -> diskcache.Cache
_LOCK = threading.Lock()
_STATS = {"hits": 0, "misses": 0, "corrupt": 0, "stored": 0}
_STATS_LOCK = threading.Lock()
# Held around every SQLite use. A fork waits for it, so no transaction is in flight in the parent when a
# child (a DataLoader worker, multiprocessing) is forked: SQLite's in-memory lock bookkeeping, copied into
# the child, would otherwise show a lock that no thread of the child will ever release.
_SQL = threading.Lock()


def _count(what: str) -> None:
    with _STATS_LOCK:
        _STATS[what] += 1
_DISABLED: dict[str, str] = {}  # folder -> why caching was turned off in this process
_FULL = {errno.ENOSPC, errno.EDQUOT}


def folder() -> Path:
    return config.cache_dir() / "objects"


def _open() -> Any:
    """This process's diskcache.Cache for the configured folder (reopened after a fork), or None."""
    path = str(folder())
    if path in _DISABLED or config.cache_size() <= 0:
        return None
    key = (path, os.getpid())
    cache = _CACHES.get(key)
    if cache is None:
        with _LOCK:
            cache = _CACHES.get(key)
            if cache is None:
                import diskcache

                try:
                    with _SQL:
                        cache = diskcache.Cache(path, size_limit=config.cache_size(),
                                                eviction_policy="least-recently-used", statistics=False,
                                                sqlite_mmap_size=0)
                except (OSError, sqlite3.Error) as exc:
                    _disable(path, exc)
                    return None
                _CACHES[key] = cache
    return cache


def _disable(path: str, exc: BaseException) -> None:
    if path not in _DISABLED:
        _DISABLED[path] = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"hubdask: the chunk cache in {path} is turned off for this process ({exc}); "
                      "reads go on from storage", RuntimeWarning, stacklevel=3)


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    return isinstance(exc, sqlite3.Error) and "full" in str(exc).lower()


class Reader:
    """Cache access for one root: keys are ``root URL / physical key`` (the URL holds no secrets)."""

    def __init__(self, root: Root) -> None:
        self.prefix = root.url.rstrip("/") + "/"

    def get(self, key: str, verify: bool = True) -> memoryview | None:
        """The cached bytes of ``key``, or None. ``verify``: check the entry's crc32c (a caller whose
        objects carry their own checksum may skip it and ``discard`` an entry that fails to decode)."""
        import crc32c

        cache = _open()
        if cache is None:
            return None
        full = self.prefix + key
        try:
            with _SQL:  # only the index lookup under the lock; a file-backed value is read after it
                value = cache.get(full, default=None, retry=True, read=True)
            if value is not None and not isinstance(value, (bytes, bytearray)):
                with value as f:
                    value = f.read()
        except (OSError, sqlite3.Error):
            value = None
        if value is not None:
            view = memoryview(value)
            if len(view) >= 4 and (not verify or crc32c.crc32c(view[:-4]) == int.from_bytes(view[-4:], "little")):
                _count("hits")
                return view[:-4]
            _count("corrupt")
            try:
                with _SQL:
                    cache.delete(full, retry=True)
            except (OSError, sqlite3.Error):
                pass
        _count("misses")
        return None

    def discard(self, key: str) -> None:
        """Drop a damaged entry (found so by the caller, e.g. a chunk whose own checksum failed)."""
        cache = _open()
        if cache is not None:
            _count("corrupt")
            try:
                with _SQL:
                    cache.delete(self.prefix + key, retry=True)
            except (OSError, sqlite3.Error):
                pass

    def put(self, key: str, data: Any) -> None:
        """Keep ``data`` for ``key``, written by a background thread so reads never wait for the disk
        (``flush()`` waits for it). A full disk turns caching off with a warning; nothing fails."""
        if _open() is None:
            return
        _writer().submit(self.prefix + key, bytes(data))


def _store(full_key: str, data: bytes) -> None:
    import crc32c

    cache = _open()
    if cache is None:
        return
    value = b"".join((data, crc32c.crc32c(data).to_bytes(4, "little")))
    try:
        with _SQL:
            cache.set(full_key, value, retry=True)
        _count("stored")
    except (OSError, sqlite3.Error) as exc:
        if _is_full(exc):
            _disable(str(folder()), exc)
        else:
            warnings.warn(f"hubdask: could not cache an object ({type(exc).__name__}: {exc}); reading on",
                          RuntimeWarning, stacklevel=2)


class _Writer:
    """One background thread per process storing cache entries; at most MAX_PENDING bytes queued
    (beyond that an entry is simply not cached)."""

    MAX_PENDING = 512 * 2**20

    def __init__(self) -> None:
        self._queue: list[tuple[str, bytes]] = []
        self._pending = 0
        self._cond = threading.Condition()
        self._busy = False
        threading.Thread(target=self._run, name="hubdask-cache-writer", daemon=True).start()

    def submit(self, key: str, data: bytes) -> None:
        with self._cond:
            if self._pending + len(data) > self.MAX_PENDING:
                return
            self._queue.append((key, data))
            self._pending += len(data)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait()
                key, data = self._queue.pop(0)
                self._busy = True
            try:
                _store(key, data)
            finally:
                with self._cond:
                    self._pending -= len(data)

    def flush(self) -> None:
        with self._cond:
            while self._queue or self._busy:
                self._cond.wait(0.05)


_WRITERS: dict[int, _Writer] = {}


def _writer() -> _Writer:
    pid = os.getpid()
    w = _WRITERS.get(pid)
    if w is None:
        with _LOCK:
            w = _WRITERS.get(pid)
            if w is None:
                w = _WRITERS[pid] = _Writer()
    return w


def flush() -> None:
    """Wait until every entry handed to the cache by this process is on disk."""
    w = _WRITERS.get(os.getpid())
    if w is not None:
        w.flush()


atexit.register(flush)


def _after_fork_in_child() -> None:
    """The child starts with no open cache (it opens its own), no writer thread, and a free lock."""
    global _SQL
    _SQL = threading.Lock()
    _CACHES.clear()
    _WRITERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=lambda: _SQL.acquire(), after_in_parent=lambda: _SQL.release(),
                        after_in_child=_after_fork_in_child)


def reader(root: Root) -> Reader | None:
    """The cache for ``root``'s committed objects, or None: local and memory roots are not cached."""
    if root.is_local or root.scheme == "memory" or config.cache_size() <= 0 or str(folder()) in _DISABLED:
        return None
    return Reader(root)


def immutable_reader(root: Root):
    """An async ``get(key, prototype)`` serving committed objects through the cache (zarr's Store path),
    or None to read storage directly."""
    cached = reader(root)
    if cached is None:
        return None

    async def get(key: str, prototype: Any) -> Any:
        raw = await asyncio.to_thread(cached.get, key)
        if raw is None:
            raw = await root.fetch_async(key)
            if raw is None:
                return None
            await asyncio.to_thread(cached.put, key, raw)
        return prototype.buffer.from_bytes(bytes(raw))

    return get


def info() -> dict[str, Any]:
    """``hits`` and ``misses`` (this process), ``bytes`` and ``entries`` on disk (all processes),
    ``size_limit``, ``directory`` and whether caching is ``enabled`` (and if not, ``why``)."""
    flush()
    path = str(folder())
    cache = _open()
    out = {"directory": path, "enabled": cache is not None, "size_limit": config.cache_size(),
           "hits": _STATS["hits"], "misses": _STATS["misses"], "corrupt": _STATS["corrupt"],
           "bytes": 0, "entries": 0}
    if cache is not None:
        with _SQL:
            out["bytes"], out["entries"] = cache.volume(), len(cache)
    elif path in _DISABLED:
        out["why"] = _DISABLED[path]
    return out


def clear() -> int:
    """Empty the cache (every process's entries) and this process's counters; returns entries removed."""
    flush()
    cache = _open()
    with _SQL:
        removed = cache.clear(retry=True) if cache is not None else 0
    for k in _STATS:
        _STATS[k] = 0
    return removed


def reset() -> None:
    """Forget open caches and a 'disk full' decision (tests; after freeing space)."""
    flush()
    with _LOCK:
        for c in _CACHES.values():
            try:
                c.close()
            except Exception:
                pass
        _CACHES.clear()
        _DISABLED.clear()
