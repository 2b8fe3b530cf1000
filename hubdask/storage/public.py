"""Public read-only roots: a plain ``https://`` (or ``http://``) URL of a static web server or CDN holding
a root folder, and anonymous S3 (``storage_options={"anon": True}``).

Both are wrapped in ``ReadOnlyStore``: reads go to the real store (fsspec's HTTP client, or the S3 client
without signing), and any write raises ``ReadOnlyError`` naming the root, before a request is sent.
A static server cannot LIST. Everything that needs no listing works by GET alone: a dataset's marker,
tags, commit ids and their chunks. A listing (what resolving a *branch* needs) is answered from a key
index, ``hubdask-keys.txt``, that the publisher writes beside the files (``storage.publish.write_index``,
or ``python -m hubdask.storage.publish FOLDER``): every key under its folder, one per line. An index in the
root's folder, in any folder above it or in a folder of the listed prefix serves; with none, a listing
is empty, so a branch is not found and only tags and commit ids resolve. Anonymous S3 lists as usual.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype

from hubdask.errors import ReadOnlyError

INDEX = "hubdask-keys.txt"
INDEX_TTL = 30.0  # seconds an index (or its absence) is trusted before it is fetched again (republishing)


def is_public(url: str, options: dict[str, Any]) -> bool:
    """Whether ``url`` with ``options`` is a public read-only root."""
    scheme = url.split("://")[0] if "://" in url else "file"
    return scheme in ("http", "https") or (scheme in ("s3", "s3a") and bool(options.get("anon")))


def wrap(url: str, options: dict[str, Any], store: Store) -> Store:
    """``store`` as it is, or read-only with listings from key indexes when ``url`` is a public root."""
    if not is_public(url, options):
        return store
    return ReadOnlyStore(store, url, lists=not url.startswith(("http://", "https://")))


class ReadOnlyStore(Store):
    """A zarr Store that reads ``inner`` and refuses every write with ``ReadOnlyError``."""

    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, inner: Store, url: str, *, lists: bool) -> None:
        super().__init__(read_only=True)
        self.inner, self.url, self.lists = inner, url, lists
        self._indexes: dict[str, tuple[float, list[str] | None]] = {}  # folder URL -> (when, keys or None)
        self._index_lock = asyncio.Lock()
        self.listed_blind = False  # a listing was answered empty because no key index was found

    def __repr__(self) -> str:
        return f"ReadOnlyStore({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReadOnlyStore) and other.url == self.url and other.inner == self.inner

    def _refuse(self, what: str) -> ReadOnlyError:
        return ReadOnlyError(f"the root {self.url} is read-only (a public https:// or anonymous S3 root): "
                             f"cannot {what}; expected a writable root (an S3 bucket with credentials or a folder)")

    def _check_writable(self) -> None:
        raise self._refuse("write")

    async def set(self, key: str, value: Buffer) -> None:
        raise self._refuse(f"write {key!r}")

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        raise self._refuse(f"write {key!r}")

    async def delete(self, key: str) -> None:
        raise self._refuse(f"delete {key!r}")

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        return await self.inner.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return await self.inner.get_partial_values(prototype, key_ranges)

    async def exists(self, key: str) -> bool:
        return await self.inner.exists(key)

    # --- listing: the real one (anonymous S3), or from key indexes (static HTTP) -------------------

    async def _keys(self, prefix: str) -> list[str]:
        if self.lists:
            return [k async for k in self.inner.list_prefix(prefix)]
        for base, rel in self._index_places(prefix):
            keys = await self._index(base)
            if keys is not None:
                return sorted(k for k in (_rebase(k, rel) for k in keys) if k is not None and k.startswith(prefix))
        self.listed_blind = True
        return []

    def _index_places(self, prefix: str) -> list[tuple[str, str]]:
        """(folder URL holding a candidate index, the root's path relative to it or, negative, the
        folder's path below the root as '+FOLDER/'), the folders above the root first."""
        scheme, rest = self.url.split("://", 1)
        host, _, path = rest.partition("/")
        parts = [p for p in path.split("/") if p]
        places = [(f"{scheme}://{host}/" + "".join(f"{p}/" for p in parts[:i]), "".join(f"{p}/" for p in parts[i:]))
                  for i in range(len(parts))]
        places.append((self.url.rstrip("/") + "/", ""))
        below = [p for p in prefix.split("/")[:-1] if p]
        for i in range(1, len(below) + 1):
            folder = "".join(f"{p}/" for p in below[:i])
            places.append((self.url.rstrip("/") + "/" + folder, "+" + folder))
        return places

    async def _index(self, folder_url: str) -> list[str] | None:
        import time

        async with self._index_lock:
            seen = self._indexes.get(folder_url)
            if seen is None or time.monotonic() - seen[0] > INDEX_TTL:
                seen = self._indexes[folder_url] = (time.monotonic(), await self._fetch_index(folder_url))
            return seen[1]

    async def _fetch_index(self, folder_url: str) -> list[str] | None:
        from zarr.core.buffer import default_buffer_prototype

        root = self.url.rstrip("/") + "/"
        if folder_url.startswith(root):
            buf = await self.inner.get(folder_url[len(root):] + INDEX, default_buffer_prototype())
        else:  # a folder above the root: fetched with the same client, by full URL
            fs = getattr(self.inner, "fs", None)
            if fs is None:
                return None
            try:
                raw = await fs._cat_file(folder_url + INDEX)
            except FileNotFoundError:
                return None
            return _parse_index(raw)
        return None if buf is None else _parse_index(buf.to_bytes())

    async def list(self) -> AsyncIterator[str]:
        for k in await self._keys(""):
            yield k

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for k in await self._keys(prefix):
            yield k

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        if self.lists:
            async for k in self.inner.list_dir(prefix):
                yield k
            return
        seen = sorted({k[len(prefix):].split("/", 1)[0] for k in await self._keys(prefix)})
        for k in seen:
            yield k


def listing_note(store: Store) -> str:
    """Why a ref may not have been found: this root could not list (a static server without a key
    index), so branches do not resolve there. '' when that is not the case."""
    if not isinstance(store, ReadOnlyStore) or not store.listed_blind:
        return ""
    return (f" (the root {store.url} is a static web server without a key index ({INDEX}), so it cannot list:"
            " branches do not resolve there, tags and commit ids do; publish the index with "
            "'python -m hubdask.storage.publish FOLDER')")


def _parse_index(raw: bytes) -> list[str]:
    return [line for line in raw.decode().splitlines() if line and not line.startswith("#")]


def _rebase(key: str, rel: str) -> str | None:
    """A key of an index, made relative to the root (None if it is outside the root)."""
    if rel.startswith("+"):
        return rel[1:] + key
    return key[len(rel):] if key.startswith(rel) else None
