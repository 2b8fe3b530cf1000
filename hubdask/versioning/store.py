"""The versioned zarr Store view: logical zarr keys resolved to physical objects of one state.

At a commit the view is read-only and every key resolves in memory through the commit's chunk map
(an unwritten chunk costs no request). At a branch the view reads the newest version of a key in the
branch's open node first (its uncommitted writes, so every returned write is seen) and falls back to
the base commit's map. When the head was read without the node's written mark, the node holds no
returned write and reads skip it (except in a process that writes there itself: begin_write).

Writes create the next version of a key in the open node with an exclusive create (``put_version``):
this is the fence of every write path, so that no update is ever lost, with locks or without.
A read-modify-write names the version it read (``based_on``); if another writer created the next
version first, ``StaleRead`` tells the caller to read again and redo its change. A write that does not
depend on what was there (a whole chunk) simply takes the next free version. Deleting a key writes a
version holding ``layout.TOMBSTONE``, so a zero-byte value is a value and a truncated object is damage.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from typing import Any

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype

from hubdask.errors import CorruptChunkError
from hubdask.storage import Root
from hubdask.storage import retry
from hubdask.versioning import layout, refs

TOMBSTONE = layout.TOMBSTONE

# (root token, dataset, node) of open nodes this process writes into (its own reads look there) and of
# those whose written mark it has seen land in storage
_WRITING: set[tuple[str, str, str]] = set()
_MARKED: set[tuple[str, str, str]] = set()
_FIRST: set[tuple[str, str, str]] = set()  # of those, the nodes whose first writer's mark this process made
# (root token, dataset, node) -> {key: (newest version this process created, whether it deletes)}: every
# version it made, so a commit of a node that only this process wrote into needs no LIST of the node
_CREATED: dict[tuple[str, str, str], dict[str, tuple[int, bool]]] = {}
WRITER = os.urandom(6).hex()  # this process's writer id in written marks (a new one after fork)
# (root token, dataset, node, key) -> the newest version this process has seen of it (a hint: a
# create of the next version fails, and the caller looks again, when another process went further)
_NEWEST: dict[tuple[str, str, str, str], int] = {}
_NEWEST_LOCK = threading.Lock()
_NEWEST_MAX = 1_000_000
# (root token, dataset, node, key, version) -> bytes: small immutable versions made or read here (small_version)
_SMALL: "OrderedDict[tuple[str, str, str, str, int], bytes]" = OrderedDict()
_SMALL_MAX = 256

# During a read-modify-write through zarr's own codec path: logical key -> the version the read saw,
# so that the write of the modified chunk is fenced on it (zarr reads and writes through this store)
_BASED_ON: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar("hubdask_based_on", default=None)


class StaleRead(Exception):
    """A read-modify-write of ``key`` read a version that another writer has superseded: read again."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def created_here(root: Root, ds: str, node: str) -> dict[str, tuple[int, bool]]:
    """Key -> (newest version this process created in ``node``, whether it is a tombstone): a copy."""
    with _NEWEST_LOCK:
        return dict(_CREATED.get((root.token, ds, node), {}))


def small_version(root: Root, ds: str, node: str, key: str, seq: int) -> bytes | None:
    """The bytes of version ``seq`` of a small ``key`` (an array's zarr.json) in ``node``: from this
    process's copy of the versions it made or read (versions are immutable: a copy never goes stale),
    else one GET."""
    k = (root.token, ds, node, key, seq)
    raw = _SMALL.get(k)
    if raw is None:
        raw = root.get(layout.version_key(ds, node, key, seq))
        if raw is not None:
            keep_small_version(root, ds, node, key, seq, raw)
    return raw


def keep_small_version(root: Root, ds: str, node: str, key: str, seq: int, data: bytes) -> None:
    """Keep a copy of version ``seq`` of small ``key`` in ``node`` (what small_version serves)."""
    with _NEWEST_LOCK:
        _SMALL[(root.token, ds, node, key, seq)] = bytes(data)
        while len(_SMALL) > _SMALL_MAX:
            _SMALL.popitem(last=False)


def first_writer(root: Root, ds: str, node: str) -> bool:
    """Whether this process made ``node``'s first writer's mark."""
    return (root.token, ds, node) in _FIRST


def written_here_only(root: Root, ds: str, node: str, shared: bool) -> dict[str, tuple[int, bool]] | None:
    """The newest version of every key written in ``node`` with no LIST, when the head a read resolved
    showed no many-writers mark (``shared`` False) and this process made the node's first writer's mark:
    every write that returned into the node is then this process's (any other writer process puts the
    many-writers mark before its write returns), so created_here knows them all; the commit of such a
    node takes its content the same way. None otherwise: list the node."""
    if shared or not first_writer(root, ds, node):
        return None
    return created_here(root, ds, node)


def _reset_after_fork() -> None:
    """A forked child is a new writer: it has written nothing and marked nothing yet."""
    global WRITER, _NEWEST_LOCK
    WRITER = os.urandom(6).hex()
    _NEWEST_LOCK = threading.Lock()
    _MARKED.clear()
    _FIRST.clear()
    _CREATED.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def begin_write(root: Root, ds: str, node: str) -> None:
    """Note, before a write reads or writes anything, that this process writes into ``node``: from now on
    its reads (the read-modify-write of a partial chunk among them) look in the node."""
    _WRITING.add((root.token, ds, node))


def writing(root: Root, ds: str, node: str) -> bool:
    """Whether this process writes into ``node`` (begin_write)."""
    return (root.token, ds, node) in _WRITING


def known_version(root: Root, ds: str, node: str, key: str) -> int:
    """The newest version of ``key`` in ``node`` that this process has seen (0: none); a read-modify-write
    starts from it, and learns from StaleRead if another writer went further."""
    return _NEWEST.get((root.token, ds, node, key), 0)


def _remember(root: Root, ds: str, node: str, key: str, seq: int) -> None:
    k = (root.token, ds, node, key)
    with _NEWEST_LOCK:
        if len(_NEWEST) > _NEWEST_MAX:
            _NEWEST.clear()
        if seq > _NEWEST.get(k, 0):
            _NEWEST[k] = seq


async def newest_version(root: Root, ds: str, node: str, key: str) -> int:
    """The newest version of ``key`` in ``node`` (0: none), from one LIST of the key's versions."""
    prefix = f"{layout.node_prefix(ds, node)}{key}@"
    names = await root.list_sizes_async(prefix)
    seq = max((int(k[len(prefix):]) for k in names if k[len(prefix):].isdigit()), default=0)
    _remember(root, ds, node, key, seq)
    return seq


async def node_versions(root: Root, ds: str, node: str, prefix: str = "") -> dict[str, tuple[int, int]]:
    """Logical key (under ``prefix``) -> (newest version, its size) for every key written in ``node``:
    one LIST of the node (paginated on object stores)."""
    base = layout.node_prefix(ds, node)
    sizes = await root.list_sizes_async(base + prefix)
    out: dict[str, tuple[int, int]] = {}
    for full, size in sizes.items():
        parsed = layout.parse_version(full[len(base):])
        if parsed is not None and parsed[1] > out.get(parsed[0], (0, 0))[0]:
            out[parsed[0]] = (parsed[1], size)
    for key, (seq, _) in out.items():
        _remember(root, ds, node, key, seq)
    return out


async def put_version(root: Root, ds: str, node: str, key: str, data: bytes | memoryview,
                      based_on: int | None = None, what: str = "") -> int:
    """Create the next version of ``key`` in ``node`` holding ``data``; returns its number.

    ``based_on``: the version a read-modify-write read (0: it read the committed value, or nothing);
    the new version must then be exactly ``based_on + 1``, else StaleRead. Without it the write takes
    the next free version, whatever is there."""
    seq = based_on if based_on is not None else known_version(root, ds, node, key)
    for _ in range(10_000):
        if await _io(root, what or f"dataset {ds!r}", f"create {key!r}",
                     lambda: root.create_async(layout.version_key(ds, node, key, seq + 1), bytes(data))):
            _remember(root, ds, node, key, seq + 1)
            with _NEWEST_LOCK:
                mine = _CREATED.setdefault((root.token, ds, node), {})
                if seq + 1 > mine.get(key, (0, False))[0]:
                    mine[key] = (seq + 1, bytes(data[: len(TOMBSTONE) + 1]) == TOMBSTONE)
            return seq + 1
        if based_on is not None:
            _remember(root, ds, node, key, seq + 1)
            raise StaleRead(key)
        seq = max(seq + 1, await newest_version(root, ds, node, key))
    raise RuntimeError(f"{what or ds}: could not claim a version of {key!r} after 10000 attempts")


async def _io(root: Root, what: str, op: str, request):
    """``await request()``; on a remote root retried through transient failures (storage.retry)."""
    if not root.is_remote:
        return await request()
    return await retry.call(request, f"{what}: {op}")


class VersionedStore(Store):
    """A zarr Store over one dataset state: ``chunk_map`` (the base commit) plus an optional open node
    of ``branch``; ``node_written=False`` when the head's listing showed no written mark for it.
    Read-only at a commit (no node); a branch view may be made read-only and keeps reading its node."""

    supports_writes = True
    supports_deletes = True
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, root: Root, ds: str, chunk_map: dict[str, str | None], node: str | None = None,
                 *, branch: str | None = None, node_written: bool = True, immutable_get: Any = None,
                 read_only: bool | None = None) -> None:
        if read_only is False and node is None:
            raise ValueError(f"dataset {ds!r}: a commit's store cannot be writable (open a branch to write)")
        super().__init__(read_only=node is None or bool(read_only))
        self.root, self.ds, self.chunk_map, self.node = root, ds, chunk_map, node
        self.branch, self.node_written = branch, node_written
        self._mark = (root.token, ds, node)
        self._immutable_get = immutable_get  # the disk cache's reader for committed objects, if any

    def _state(self) -> tuple:
        return (self.root.token, self.ds, self.node, self.branch, self.read_only, self.node_written,
                tuple(sorted(self.chunk_map.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VersionedStore) and self._state() == other._state()

    def __hash__(self) -> int:
        return hash((self.root.token, self.ds, self.node))

    def __repr__(self) -> str:
        return f"VersionedStore({self.root.url!r}, {self.ds!r}, node={self.node})"

    def with_read_only(self, read_only: bool = False) -> "VersionedStore":
        if not read_only and self.node is None:
            raise ValueError(f"dataset {self.ds!r}: a commit's store cannot become writable (open a branch)")
        return VersionedStore(self.root, self.ds, self.chunk_map, self.node, branch=self.branch,
                              node_written=self.node_written, immutable_get=self._immutable_get,
                              read_only=read_only)

    @property
    def reads_node(self) -> bool:
        return self.node is not None and (self.node_written or self._mark in _WRITING)

    def committed_key(self, key: str) -> str | None:
        """The physical key of ``key`` in the base commit, or None. Pure arithmetic, no I/O."""
        holder = self.chunk_map.get(key)
        return layout.object_key(self.ds, key, holder) if holder is not None else None

    def small_bytes(self, key: str, seq: int) -> bytes | None:
        """The bytes of small ``key`` (an array's zarr.json) at version ``seq`` of the open node, or (0) of
        the base commit: from this process's copy where it made or read that version (small_version)."""
        if seq:
            return small_version(self.root, self.ds, self.node, key, seq)
        held = self.chunk_map.get(key)
        if held is None:
            return None
        node, _, at = held.partition("@")
        if at:
            return small_version(self.root, self.ds, node, key, int(at))
        return self.root.get(layout.object_key(self.ds, key, held))  # an upgraded dataset's object

    def version_key(self, key: str, seq: int) -> str:
        assert self.node is not None
        return layout.version_key(self.ds, self.node, key, seq)

    async def mark_written(self) -> None:
        """Create the branch's written mark of the open node (once per process; begin_write first): a
        write returns only once it is in storage, since readers that list the branch without it take the
        node as empty. It may land concurrently with the write's own objects (a write in flight may be
        seen in part or not at all)."""
        _WRITING.add(self._mark)
        if self.branch is None or self._mark in _MARKED:
            return
        if await refs.mark_written(self.root, self.ds, self.branch, self.node, WRITER):
            _FIRST.add(self._mark)
        _MARKED.add(self._mark)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        store = self.root.store
        based = _BASED_ON.get()
        if self.reads_node:
            seq = await newest_version(self.root, self.ds, self.node, key)
            if based is not None:
                based[key] = seq
            if seq:
                vkey = self.version_key(key, seq)
                buf = await _io(self.root, f"dataset {self.ds!r}", f"GET {vkey!r}",
                                lambda: _ranged_get(store, vkey, prototype, byte_range))
                if buf is None:
                    raise CorruptChunkError(f"dataset {self.ds!r}: object {vkey!r} of the open node is missing "
                                            "from storage; the store was modified outside hubdask")
                return None if is_tombstone(buf) else buf
        elif based is not None:
            based[key] = 0
        pkey = self.committed_key(key)
        if pkey is None:
            return None
        if self._immutable_get is not None and byte_range is None:
            buf = await self._immutable_get(pkey, prototype)
        else:
            buf = await _io(self.root, f"dataset {self.ds!r}", f"GET {pkey!r}",
                            lambda: _ranged_get(store, pkey, prototype, byte_range))
        if buf is None:
            raise CorruptChunkError(
                f"dataset {self.ds!r}: object {key!r} of a committed version is missing from storage "
                f"(expected {pkey!r}); the store was modified outside hubdask"
            )
        return None if is_tombstone(buf) else buf

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return [await self.get(k, prototype, r) for k, r in key_ranges]

    async def exists(self, key: str) -> bool:
        return await self.get(key, _proto()) is not None

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()
        await self._put(key, value.to_bytes())

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if not await self.exists(key):
            await self.set(key, value)

    async def delete(self, key: str) -> None:
        self._check_writable()
        await self._put(key, layout.TOMBSTONE)

    async def _put(self, key: str, data: bytes) -> None:
        await self.mark_written()
        based = _BASED_ON.get()
        await put_version(self.root, self.ds, self.node, key, data,
                          based_on=based.get(key) if based is not None else None, what=f"dataset {self.ds!r}")

    async def _keys(self, prefix: str = "") -> set[str]:
        keys = {k for k, h in self.chunk_map.items() if h is not None and k.startswith(prefix)}
        if self.reads_node:
            found = await node_versions(self.root, self.ds, self.node, _folder(prefix))
            for key, (seq, size) in found.items():
                if not key.startswith(prefix):
                    continue
                deleted = size == len(layout.TOMBSTONE) and is_tombstone(
                    await self.root.get_async(self.version_key(key, seq)) or b"")
                (keys.discard if deleted else keys.add)(key)
        return keys

    async def list(self) -> AsyncIterator[str]:
        for k in sorted(await self._keys()):
            yield k

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for k in sorted(await self._keys(prefix)):
            yield k

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        seen = set()
        for k in await self._keys(prefix):
            seen.add(k[len(prefix):].split("/", 1)[0])
        for k in sorted(seen):
            yield k


async def _ranged_get(store: Store, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None) -> Buffer | None:
    """``store.get``; a range past the end of an object (S3 answers 416) is the empty value, as a local
    file or memory store gives it."""
    try:
        return await store.get(key, prototype, byte_range)
    except Exception as exc:
        if byte_range is None or not ("416" in str(exc) or "non-partial response" in str(exc)):
            raise
        return prototype.buffer.from_bytes(b"")


def _folder(prefix: str) -> str:
    """The part of ``prefix`` up to its last '/', a LIST prefix that every key under ``prefix`` shares."""
    return prefix[: prefix.rfind("/") + 1] if "/" in prefix else ""


def is_tombstone(raw: Any) -> bool:
    """Whether ``raw`` (bytes, a memoryview, an ndarray or a zarr Buffer) is a deleting version."""
    if raw is None or len(raw) != len(layout.TOMBSTONE):
        return False
    return (raw.to_bytes() if hasattr(raw, "to_bytes") else bytes(raw)) == layout.TOMBSTONE


def based_on_reads() -> "contextvars.Token":
    """Start fencing zarr's read-modify-writes in this context on the versions they read (see _BASED_ON);
    returns the token for ``end_based_on``."""
    return _BASED_ON.set({})


def end_based_on(token: "contextvars.Token") -> None:
    _BASED_ON.reset(token)


def _proto() -> BufferPrototype:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype()
