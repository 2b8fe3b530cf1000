"""Local files the way the data path reads and writes them: chunks of a local root and cache entries.

Reading a chunk into a fresh ``bytes`` costs more than the read itself (a multi-MB allocation is new
memory, and every page of it faults in), so ``read(path, scratch=True)`` fills a buffer owned by the
calling thread and reused by its next read. Writes are atomic: a temp file beside the target (named
``NAME.RANDOM.partial``, which listings ignore), then a rename.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Callable

from hubdask.errors import StorageError

TEMP_SUFFIX = ".partial"

_THREAD = threading.local()


def _scratch(nbytes: int) -> memoryview:
    buf = getattr(_THREAD, "buf", None)
    if buf is None or len(buf) < nbytes:
        buf = _THREAD.buf = bytearray(max(nbytes, 1 << 20))
    return memoryview(buf)


def read(path: str | Path, *, scratch: bool = False) -> bytes | memoryview | None:
    """The file's bytes, or None if it does not exist. ``scratch``: a view of this thread's read buffer,
    valid only until the thread reads again (callers decode or copy it at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        if not scratch:
            with open(fd, "rb", closefd=False) as f:
                return f.read()
        size = os.fstat(fd).st_size
        buf = _scratch(size + 1)  # one spare byte: a file that grew is caught below, not truncated
        n = 0
        while True:
            got = os.readv(fd, [buf[n:]])
            if got == 0:
                return buf[:n]
            n += got
            if n == len(buf):  # replaced by a bigger file since fstat: read it whole the plain way
                os.lseek(fd, 0, os.SEEK_SET)
                with open(fd, "rb", closefd=False) as f:
                    return f.read()
    finally:
        os.close(fd)


def read_tail_then(path: str | Path, tail: int, spans: Callable[[bytes], list[tuple[int, int]]]
                   ) -> tuple[bytes, list[tuple[int, bytes]]] | None:
    """The file's last ``tail`` bytes (all of a shorter file) and ``(start, bytes)`` of each range
    ``(start, end)`` that ``spans(those bytes)`` names, read from one open file (one version of it, even when it is replaced meanwhile); None if it
    does not exist. A local shard's small read: its index, then only the inner chunks it needs."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - tail)
        last = os.pread(fd, size - start, start)
        return last, [(a, os.pread(fd, b - a, a)) for a, b in spans(last)]
    finally:
        os.close(fd)


def _temp_beside(path: Path, parts: tuple) -> Path:
    """A complete temp file beside ``path`` holding ``parts`` (named ``NAME.RANDOM.partial``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(path: str | Path, *parts: bytes | memoryview) -> None:
    """Write the buffers ``parts``, one after the other, to ``path`` so readers see the old file or the
    whole new one, never a part."""
    _land(Path(path), parts, os.replace)


def create_exclusive(path: str | Path, *parts: bytes | memoryview) -> bool:
    """Write ``parts`` to ``path`` only if nothing is there yet: True if this call created it. Readers
    see no file or the whole file (a complete temp file is hard-linked into place, which fails if the
    name exists); a crash leaves at most a temp file, which listings ignore."""
    try:
        _land(Path(path), parts, os.link)
        return True
    except FileExistsError:
        return False


TEMP_ATTEMPTS = 3  # fresh temp files tried when each one vanished before it landed


def _land(path: Path, parts: tuple, move) -> None:
    """Write a complete temp file beside ``path`` and ``move`` it into place (``os.replace`` or
    ``os.link``). A writer stalled past gc's grace may find its temp file collected (gc removes stale
    ``*.partial`` files): it starts again with a fresh one, so the write lands whole or not at all."""
    for _ in range(TEMP_ATTEMPTS):
        tmp = _temp_beside(path, parts)
        try:
            move(tmp, path)
            return
        except FileNotFoundError:
            if not path.parent.is_dir():
                raise StorageError(f"cannot write {str(path)!r}: its folder was removed during the write "
                                   "(the dataset was deleted?); expected the folder to stay") from None
        finally:
            tmp.unlink(missing_ok=True)
    raise StorageError(f"cannot write {str(path)!r}: its temp file was removed before it landed, "
                       f"{TEMP_ATTEMPTS} times (gc with a grace shorter than this write?); nothing was "
                       "written: retry, or give gc a longer grace")


def list_sizes(root: Path, prefix: str, temps: bool = False) -> dict[str, int]:
    """Every file under ``root`` whose relative path starts with ``prefix`` (string prefix, as S3
    LIST) -> its size; temp files left out unless ``temps``."""
    parent, _, start = prefix.rpartition("/")
    base = root / parent if parent else root
    out: dict[str, int] = {}
    stack: list[tuple[Path, str, str]] = [(base, f"{parent}/" if parent else "", start)]
    while stack:
        folder, rel, must_start = stack.pop()
        try:
            entries = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for e in entries:
                if must_start and not e.name.startswith(must_start):
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append((Path(e.path), f"{rel}{e.name}/", ""))
                elif temps or not e.name.endswith(TEMP_SUFFIX):
                    try:
                        out[f"{rel}{e.name}"] = e.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        pass
    return out
