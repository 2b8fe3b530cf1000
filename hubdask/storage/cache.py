"""The local disk cache of immutable objects: committed chunks of remote roots, read through.

Only objects reached through a commit's chunk map are cached: a committed node never changes, so a
cached copy can never be stale and needs no validation. A branch's open node (uncommitted writes) is
never cached, and local or memory roots are not cached at all (they are as fast as the cache).

One file per object under ``objects/`` (named by a hash of root URL and key), written atomically (temp
file + rename), so reading an entry is reading a file: as fast as a local root, with no index to lock.
Bounded by ``HUBDASK_CACHE_SIZE`` (``0`` turns it off): a hit touches the file's time, and whichever
process finds the total over the bound deletes the least recently used files (under a file lock).
Safe for many processes and threads at once (DataLoader workers, dask workers on one machine), and it
survives restarts. Location ``HUBDASK_CACHE`` (default ``~/.cache/hubdask``). Every entry carries a
crc32c of its bytes: a corrupted or truncated entry is dropped and refetched, never returned. When the
disk is full, caching turns off for this process with one warning, and reads go on from storage.

``hd.cache.info()`` gives this process's hits, misses and the bytes held on disk (shared by all
processes); ``hd.cache.clear()`` empties it.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import errno
import hashlib
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hubdask import config
from hubdask.storage import files
from hubdask.storage.root import Root

_CACHES: dict[str, "_Files"] = {}  # folder -> its entries
_LOCK = threading.Lock()
_STATS = {"hits": 0, "misses": 0, "corrupt": 0, "stored": 0}
_STATS_LOCK = threading.Lock()


def _count(what: str) -> None:
    with _STATS_LOCK:
        _STATS[what] += 1


_DISABLED: dict[str, str] = {}  # folder -> why caching was turned off in this process
_FULL = {errno.ENOSPC, errno.EDQUOT}


def folder() -> Path:
    return config.cache_dir() / "objects"


class _Files:
    """The entries of one cache folder: ``ab/cdef...`` files named by a hash of their full key."""

    EVICT_TO = 0.9  # an eviction brings the total down to this fraction of the bound

    def __init__(self, path: Path, limit: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path, self.limit = path, limit
        self._approx: int | None = None  # bytes on disk when this process last counted, plus its writes

    def file(self, full_key: str) -> Path:
        digest = hashlib.sha256(full_key.encode()).hexdigest()[:40]
        return self.path / digest[:2] / digest[2:]

    def read(self, full_key: str, scratch: bool = False) -> bytes | memoryview | None:
        """The entry's bytes (``scratch``: in this thread's reused buffer, see storage.files), or None."""
        path = self.file(full_key)
        data = files.read(path, scratch=scratch)
        if data is None:
            return None
        try:
            os.utime(path)  # least recently used = oldest time
        except OSError:
            pass
        return data

    def delete(self, full_key: str) -> None:
        self.file(full_key).unlink(missing_ok=True)

    def write(self, full_key: str, *parts: Any) -> None:
        """Store the entry made of the buffers ``parts`` (written one after the other, not joined)."""
        files.write_atomic(self.file(full_key), *parts)
        size = sum(memoryview(p).nbytes for p in parts)
        if self._approx is None:
            self._approx = self.volume()[0]
        else:
            self._approx += size
        if self._approx > self.limit:
            self.evict()

    def entries(self) -> list[tuple[Path, os.stat_result]]:
        """Every entry on disk; none when the folder (or a part of it) was deleted meanwhile."""
        out = []
        for sub in _scan(self.path):
            if sub.is_dir(follow_symlinks=False):
                for entry in _scan(sub.path):
                    if not entry.name.endswith(files.TEMP_SUFFIX):
                        try:
                            out.append((Path(entry.path), entry.stat(follow_symlinks=False)))
                        except FileNotFoundError:
                            pass
        return out

    def volume(self) -> tuple[int, int]:
        found = self.entries()
        return sum(st.st_size for _, st in found), len(found)

    def evict(self) -> None:
        """Delete the least recently used entries until the total is under EVICT_TO of the bound."""
        import filelock

        self.path.mkdir(parents=True, exist_ok=True)  # the folder may have been deleted since it was opened
        with filelock.FileLock(str(self.path / ".evict.lock")):
            found = sorted(self.entries(), key=lambda e: e[1].st_mtime)
            total = sum(st.st_size for _, st in found)
            for path, st in found:
                if total <= self.limit * self.EVICT_TO:
                    break
                path.unlink(missing_ok=True)
                total -= st.st_size
            self._approx = total

    def clear(self) -> int:
        found = self.entries()
        for path, _ in found:
            path.unlink(missing_ok=True)
        self._approx = 0
        return len(found)


def _scan(path: str | Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except FileNotFoundError:
        return []


def _open() -> "_Files | None":
    """This process's view of the configured cache folder, or None when caching is off."""
    path = str(folder())
    if path in _DISABLED or config.cache_size() <= 0:
        return None
    files = _CACHES.get(path)
    if files is None or files.limit != config.cache_size():
        with _LOCK:
            try:
                files = _CACHES[path] = _Files(Path(path), config.cache_size())
            except OSError as exc:
                _disable(path, exc)
                return None
    return files


def _disable(path: str, exc: BaseException) -> None:
    if path not in _DISABLED:
        _DISABLED[path] = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"hubdask: the chunk cache in {path} is turned off for this process ({exc}); "
                      "reads go on from storage", RuntimeWarning, stacklevel=3)


def _is_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL


class Reader:
    """Cache access for one root: keys are ``root URL / physical key`` (the URL holds no secrets). The
    cache folder is looked up once, when the reader is made (not per chunk)."""

    def __init__(self, root: Root, files: _Files) -> None:
        self.prefix = root.url.rstrip("/") + "/"
        self._files, self._folder = files, str(files.path)

    def _open(self) -> "_Files | None":
        """The cache, or None once a full disk turned it off."""
        return None if self._folder in _DISABLED else self._files

    def get(self, key: str, verify: bool = True, scratch: bool = False) -> memoryview | None:
        """The cached bytes of ``key``, or None. ``verify``: check the entry's crc32c (a caller whose
        objects carry their own checksum may skip it and ``discard`` an entry that fails to decode).
        ``scratch``: the bytes are in this thread's reused read buffer (storage.files.read)."""
        import crc32c

        cache = self._open()
        if cache is None:
            return None
        full = self.prefix + key
        writer = _WRITERS.get(os.getpid())  # none yet: nothing waits (no thread is started for a lookup)
        waiting = None if writer is None else writer.pending(full)
        if waiting is not None:
            _count("hits")
            return memoryview(waiting)
        try:
            value = cache.read(full, scratch)
        except OSError:
            value = None
        if value is not None:
            view = memoryview(value)
            if len(view) >= 4 and (not verify or crc32c.crc32c(view[:-4]) == int.from_bytes(view[-4:], "little")):
                _count("hits")
                return view[:-4]
            _count("corrupt")
            try:
                cache.delete(full)
            except OSError:
                pass
        _count("misses")
        return None

    def discard(self, key: str) -> None:
        """Drop a damaged entry (found so by the caller, e.g. a chunk whose own checksum failed)."""
        cache = self._open()
        if cache is not None:
            _count("corrupt")
            try:
                cache.delete(self.prefix + key)
            except OSError:
                pass

    def put(self, key: str, data: Any) -> None:
        """Keep ``data`` for ``key``, written by a background thread so reads never wait for the disk
        (``flush()`` waits for it). A full disk turns caching off with a warning; nothing fails."""
        if self._open() is None:
            return
        _writer().submit(self.prefix + key, data if isinstance(data, bytes) else _immutable(data))

    def reading(self) -> contextlib.AbstractContextManager[None]:
        """A context for a read through this cache: the entries it puts are written once no read is in
        flight (see _Writer), not while its fetches and decodes need the CPU."""
        return _writer().reading()


def _immutable(data: Any) -> Any:
    """``data`` itself if it is a buffer nobody can change (obstore's Bytes), else a copy."""
    return data if type(data).__name__ == "Bytes" and type(data).__module__.startswith("obstore") else bytes(data)


def _store(full_key: str, data: Any) -> None:
    import crc32c

    cache = _open()
    if cache is None:
        return
    trailer = crc32c.crc32c(data).to_bytes(4, "little")
    try:
        cache.write(full_key, data, trailer)
        _count("stored")
    except OSError as exc:
        if _is_full(exc):
            _disable(str(folder()), exc)
        else:
            warnings.warn(f"hubdask: could not cache an object ({type(exc).__name__}: {exc}); reading on",
                          RuntimeWarning, stacklevel=2)


class _Writer:
    """One background thread per process storing cache entries, off the reads' critical path: while a
    read is in flight in this process (``reading()``), entries wait in memory, so the disk copy never
    competes with the read's fetches and decodes for the CPU; once more than half of MAX_PENDING bytes
    wait, they are written anyway (a read bigger than that is still cached whole), and beyond
    MAX_PENDING an entry is simply not cached (memory stays bounded). A waiting entry is served to the
    reads of this process (``pending``) as if it were on disk already."""

    MAX_PENDING = 512 * 2**20

    def __init__(self) -> None:
        self._queue: collections.deque[tuple[str, Any]] = collections.deque()
        self._held: dict[str, Any] = {}  # key -> the entry queued or being written
        self._pending = 0
        self._cond = threading.Condition()
        self._busy = False
        self._reads = 0  # reads in flight in this process
        self._draining = 0  # flush() calls waiting: write whatever the reads
        threading.Thread(target=self._run, name="hubdask-cache-writer", daemon=True).start()

    def submit(self, key: str, data: Any) -> None:
        with self._cond:
            if self._pending + memoryview(data).nbytes > self.MAX_PENDING:
                return
            self._queue.append((key, data))
            self._held[key] = data
            self._pending += memoryview(data).nbytes
            self._cond.notify_all()

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Hold the entries back for the duration of a read."""
        with self._cond:
            self._reads += 1
        try:
            yield
        finally:
            with self._cond:
                self._reads -= 1
                self._cond.notify_all()

    def pending(self, key: str) -> Any:
        """The entry for ``key`` not yet on disk, or None."""
        with self._cond:
            return self._held.get(key)

    def _may_write(self) -> bool:
        return bool(self._queue) and (not self._reads or self._draining > 0 or 2 * self._pending > self.MAX_PENDING)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._may_write():
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait()
                key, data = self._queue.popleft()
                self._busy = True
            try:
                _store(key, data)
            finally:
                with self._cond:
                    self._pending -= memoryview(data).nbytes
                    if self._held.get(key) is data:
                        del self._held[key]

    def flush(self) -> None:
        with self._cond:
            self._draining += 1
            self._cond.notify_all()
            try:
                while self._queue or self._busy:
                    self._cond.wait(0.05)
            finally:
                self._draining -= 1


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
    """The child has no writer thread of its own yet (threads do not survive a fork). The parent's
    queued entries may be obstore buffers: kept, never freed here (storage.forked.keep)."""
    from hubdask.storage import forked

    forked.keep(*_WRITERS.values())
    _WRITERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def reader(root: Root) -> Reader | None:
    """The cache for ``root``'s committed objects, or None: local and memory roots are not cached."""
    if not root.is_remote:
        return None
    files = _open()
    return Reader(root, files) if files is not None else None


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
        out["bytes"], out["entries"] = cache.volume()
    elif path in _DISABLED:
        out["why"] = _DISABLED[path]
    return out


def clear() -> int:
    """Empty the cache (every process's entries) and this process's counters; returns entries removed."""
    flush()
    cache = _open()
    removed = cache.clear() if cache is not None else 0
    for k in _STATS:
        _STATS[k] = 0
    return removed


def reset() -> None:
    """Forget open caches and a 'disk full' decision (tests; after freeing space)."""
    flush()
    with _LOCK:
        _CACHES.clear()
        _DISABLED.clear()
