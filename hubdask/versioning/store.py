"""The versioned zarr Store view: logical zarr keys resolved to physical objects of one state.

At a commit the view is read-only and every key resolves in memory through the commit's chunk map
(an unwritten chunk costs no request). At a branch the view reads the branch's open node first (its
uncommitted writes, so every returned write is seen) and falls back to the base commit's map; writes go
to the open node, together with the branch's written mark for it (refs.written_key). When the head was
read without that mark the node holds no returned write and reads skip it (except in a process that
writes there itself: begin_write). A zero-byte object in a node is a
tombstone: the key was deleted there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype

from hubdask.errors import CorruptChunkError
from hubdask.storage import Root
from hubdask.storage import retry
from hubdask.versioning import refs

PARTIAL_SUFFIX = ".partial"  # LocalStore's temp files while a write is in flight


def node_prefix(ds: str, node: str) -> str:
    return f"{ds}/nodes/{node}/"


# (root token, dataset, node) of open nodes this process writes into (its own reads look there) and of
# those whose written mark it has seen land in storage
_WRITING: set[tuple[str, str, str]] = set()
_MARKED: set[tuple[str, str, str]] = set()


def begin_write(root: Root, ds: str, node: str) -> None:
    """Note, before a write reads or writes anything, that this process writes into ``node``: from now on
    its reads (the read-modify-write of a partial chunk among them) look in the node."""
    _WRITING.add((root.token, ds, node))


def writing(root: Root, ds: str, node: str) -> bool:
    """Whether this process writes into ``node`` (begin_write)."""
    return (root.token, ds, node) in _WRITING


class VersionedStore(Store):
    """A zarr Store over one dataset state: ``chunk_map`` (the base commit) plus an optional open node
    of ``branch``; ``node_written=False`` when the head's listing showed no written mark for it."""

    supports_writes = True
    supports_deletes = True
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, root: Root, ds: str, chunk_map: dict[str, str | None], node: str | None = None,
                 *, branch: str | None = None, node_written: bool = True, immutable_get: Any = None) -> None:
        super().__init__(read_only=node is None)
        self.root, self.ds, self.chunk_map, self.node = root, ds, chunk_map, node
        self.branch, self.node_written = branch, node_written
        self._mark = (root.token, ds, node)
        self._immutable_get = immutable_get  # the disk cache's reader for committed objects, if any

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, VersionedStore) and (self.root.token, self.ds, self.node)
                == (other.root.token, other.ds, other.node) and self.chunk_map is other.chunk_map)

    def __repr__(self) -> str:
        return f"VersionedStore({self.root.url!r}, {self.ds!r}, node={self.node})"

    def with_read_only(self, read_only: bool = False) -> "VersionedStore":
        return VersionedStore(self.root, self.ds, self.chunk_map, None if read_only else self.node,
                              branch=self.branch, node_written=self.node_written, immutable_get=self._immutable_get)

    def physical_key(self, key: str, node: str) -> str:
        return f"{self.ds}/nodes/{node}/{key}"

    def locate(self, key: str) -> tuple[str | None, str | None]:
        """Where ``key``'s bytes may be, in the order to try: (the open node's object, which may not
        exist; the committed object), each None where there is none. Pure arithmetic, no I/O."""
        mutable = None
        if self.node is not None and (self.node_written or self._mark in _WRITING):
            mutable = self.physical_key(key, self.node)
        holder = self.chunk_map.get(key)
        return mutable, (self.physical_key(key, holder) if holder is not None else None)

    async def mark_written(self) -> None:
        """Create the branch's written mark of the open node (once per process; begin_write first): a
        write returns only once it is in storage, since readers that list the branch without it take the
        node as empty. It may land concurrently with the write's own objects (a write in flight may be
        seen in part or not at all)."""
        _WRITING.add(self._mark)
        if self.branch is None or self._mark in _MARKED:
            return
        key = refs.written_key(self.ds, self.branch, self.node)
        await self.root.put_async(key, b"")
        _MARKED.add(self._mark)

    async def _io(self, what: str, request):
        """``await request()``; on a remote root retried through transient failures (storage.retry)."""
        if self.root.is_local or self.root.scheme == "memory":
            return await request()
        return await retry.call(request, f"dataset {self.ds!r}: {what}")

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        store = self.root.store
        mutable, pkey = self.locate(key)
        if mutable is not None:
            buf = await self._io(f"GET {mutable!r}", lambda: store.get(mutable, prototype, byte_range))
            if buf is not None:
                return None if len(buf) == 0 else buf
        if pkey is None:
            return None
        if self._immutable_get is not None and byte_range is None:
            buf = await self._immutable_get(pkey, prototype)
        else:
            buf = await self._io(f"GET {pkey!r}", lambda: store.get(pkey, prototype, byte_range))
        if buf is None:
            raise CorruptChunkError(
                f"dataset {self.ds!r}: object {key!r} of a committed version is missing from storage "
                f"(expected {pkey!r}); the store was modified outside hubdask"
            )
        return None if len(buf) == 0 else buf

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return [await self.get(k, prototype, r) for k, r in key_ranges]

    async def exists(self, key: str) -> bool:
        return await self.get(key, _proto()) is not None

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()
        await self.mark_written()
        pkey = self.physical_key(key, self.node)
        await self._io(f"PUT {pkey!r}", lambda: self.root.store.set(pkey, value))

    async def delete(self, key: str) -> None:
        self._check_writable()
        await self.mark_written()
        pkey = self.physical_key(key, self.node)
        await self._io(f"PUT {pkey!r}", lambda: self.root.store.set(pkey, _proto().buffer.from_bytes(b"")))

    async def _keys(self) -> set[str]:
        keys = {k for k, h in self.chunk_map.items() if h is not None}
        if self.node is not None and (self.node_written or self._mark in _WRITING):
            prefix = node_prefix(self.ds, self.node)
            async for k in self.root.store.list_prefix(prefix):
                if not k.endswith(PARTIAL_SUFFIX):
                    keys.add(k[len(prefix):])
        return keys

    async def list(self) -> AsyncIterator[str]:
        for k in sorted(await self._keys()):
            yield k

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for k in sorted(await self._keys()):
            if k.startswith(prefix):
                yield k

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        seen = set()
        for k in await self._keys():
            if k.startswith(prefix):
                seen.add(k[len(prefix):].split("/", 1)[0])
        for k in sorted(seen):
            yield k


def _proto() -> BufferPrototype:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype()
