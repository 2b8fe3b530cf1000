"""The error types of hubdask; every message names the dataset and what was expected."""

from __future__ import annotations


class HubdaskError(Exception):
    """Base of every hubdask-specific error."""


class InvalidNameError(HubdaskError, ValueError):
    """A dataset, branch or tag name that hubdask refuses before touching storage."""


class NotFoundError(HubdaskError, LookupError):
    """An unknown dataset, array, branch, tag or commit."""


class ReadOnlyError(HubdaskError, PermissionError):
    """A write to a tag, a commit id or a read-only root."""


class ConflictError(HubdaskError, RuntimeError):
    """A merge or commit that cannot be applied as asked."""


class AlreadyExistsError(HubdaskError, FileExistsError):
    """A dataset, branch or tag that already exists where a new one was asked for."""


class CorruptionError(HubdaskError, OSError):
    """Stored bytes that fail their checksum or do not parse (a chunk, a record, a marker)."""


class CorruptChunkError(CorruptionError):
    """Bytes in storage that fail their checksum or do not decode to a chunk."""


class StorageError(HubdaskError, OSError):
    """Storage that kept failing (HTTP 5xx, resets, truncated bodies) past the retry budget."""


def refusing_read_only(what: str, url: str):
    """A context around writes that turns the OS's "read-only file system" or "permission denied" into a
    ReadOnlyError, and "no space left" or "quota exceeded" into a StorageError, naming ``what`` (e.g. the
    dataset) and the root, instead of a bare OSError about some object path."""
    import contextlib
    import errno

    @contextlib.contextmanager
    def ctx():
        try:
            yield
        except OSError as exc:
            if isinstance(exc, HubdaskError):
                raise
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageError(f"{what}: the root {url} is full ({exc.strerror}); expected free space for "
                                   "the write: free some (e.g. 'hubdask gc NAME --yes') and write again") from exc
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            raise ReadOnlyError(f"{what}: the root {url} is read-only ({exc.strerror}); expected a writable "
                                "root") from exc

    return ctx()
