"""A root: where datasets live. A path or URL becomes a zarr v3 ``Store`` plus the few primitives
the versioning layer needs (exclusive create for atomic refs, listing).

``Root`` pickles to its URL and options and reopens its store in the receiving process, so dask tasks
carry a root, never a live connection. Its repr shows the URL only: options may hold credentials.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync as _sync
from zarr.storage import FsspecStore, LocalStore, MemoryStore

from hubdask import config
from hubdask.names import safe_url
from hubdask.storage import forked
from hubdask.storage.retry import Policy, retrying

T = TypeVar("T")
_PROTO = default_buffer_prototype()
_MEMORY: dict[str, dict[str, Any]] = {}  # memory://NAME -> the dict behind every MemoryStore of NAME
_OPEN: dict[tuple[str, str], "Root"] = {}
_OPEN_LOCK = threading.Lock()


def sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on zarr's I/O event loop (one loop thread per process, fork-safe)."""
    return _sync(coro)


def options_token(options: dict[str, Any]) -> str:
    """A stable digest of storage options, so equal options share one open root (secrets stay hidden)."""
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:16]


def open_root(url: str | os.PathLike | None = None, storage_options: dict[str, Any] | None = None) -> "Root":
    """The Root for ``url`` (default: ``HUBDASK_ROOT`` or ``~/.hubdask``), one per process per URL."""
    url = normalize_url(url if url is not None else config.root())
    options = dict(storage_options or {})
    client = config.s3_client() if url.startswith(("s3://", "s3a://")) else ""
    key = (url, options_token(options) + client)
    with _OPEN_LOCK:
        root = _OPEN.get(key)
        if root is None:
            root = _OPEN[key] = Root(url, options)
        return root


def normalize_url(url: str | os.PathLike) -> str:
    url = os.fspath(url)
    if "://" not in url:
        return os.path.abspath(os.path.expanduser(url))
    if url.startswith("file://"):
        return os.path.abspath(url[len("file://"):])
    return url.rstrip("/") if not url.endswith("://") else url


class Root:
    """A storage root URL with its zarr Store, opened lazily in each process."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self.url = safe_url(url)  # what is shown (messages, reprs, lock names): never user:password@
        self._open_url = url  # what opens the store: may carry credentials
        self._options = options
        self._store: Store | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Root({self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (open_root, (self._open_url, self._options))

    @property
    def token(self) -> str:
        secret = {} if self._open_url == self.url else {"url": self._open_url}  # roots of two users differ
        return f"{self.url}#{options_token({**secret, **self._options})}"

    @property
    def scheme(self) -> str:
        return self.url.split("://")[0] if "://" in self.url else "file"

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def is_remote(self) -> bool:
        """Whether every request is a network round trip (not a local folder or memory): the roots whose
        latency only many requests in flight hide."""
        return not self.is_local and self.scheme != "memory"

    @property
    def store(self) -> Store:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = _make_store(self._open_url, self._options)
        return self._store

    # --- the primitives of the layers above, as coroutines and as blocking calls -----------------

    @retrying("GET")
    async def get_async(self, key: str) -> bytes | None:
        buf = await self.store.get(key, prototype=_PROTO)
        return None if buf is None else buf.to_bytes()

    @retrying("PUT")
    async def put_async(self, key: str, data: bytes) -> None:
        store = self.store
        if type(store).__name__ == "ObjectStore":
            import obstore

            await obstore.put_async(store.store, key, data)
            return
        if isinstance(store, LocalStore):  # the one local write path (files.write_atomic), as create's
            import asyncio

            from hubdask.storage import files

            await asyncio.to_thread(files.write_atomic, store.root / key, data)
            return
        await store.set(key, _PROTO.buffer.from_bytes(data))

    @retrying("GET")
    async def fetch_async(self, key: str) -> Any:
        """The object's bytes as a buffer (zero-copy where the client allows), or None if absent.
        The data path's GET: obstore's own call on S3, no zarr Buffer in between."""
        store = self.store
        if type(store).__name__ == "ObjectStore":
            import obstore

            try:
                resp = await obstore.get_async(store.store, key)
                return await resp.bytes_async()
            except FileNotFoundError:
                return None
        buf = await store.get(key, prototype=_PROTO)
        return None if buf is None else buf.as_numpy_array()

    @retrying("GET")
    async def fetch_range_async(self, key: str, start: int | None, end: int) -> Any:
        """Bytes ``start:end`` of the object (``start`` None: its last ``end`` bytes, or all of a shorter
        object), or None if absent: a ranged GET."""
        from zarr.abc.store import RangeByteRequest, SuffixByteRequest

        request = SuffixByteRequest(end) if start is None else RangeByteRequest(start, end)
        buf = await self.store.get(key, prototype=_PROTO, byte_range=request)
        return None if buf is None else buf.as_numpy_array()

    @retrying("create")
    async def create_async(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist; True if this call created it. Atomic where the
        backend allows: local (link of a complete temp file), memory, S3 (If-None-Match)."""
        store, buf = self.store, _PROTO.buffer.from_bytes(data)
        if isinstance(store, LocalStore):
            import asyncio

            from hubdask.storage import files

            return await asyncio.to_thread(files.create_exclusive, store.root / key, data)
        if isinstance(store, MemoryStore):
            if key in store._store_dict:
                return False
            store._store_dict[key] = buf
            return True
        if type(store).__name__ == "ObjectStore":
            import obstore

            try:
                await obstore.put_async(store.store, key, data, mode="create")
                return True
            except obstore.exceptions.AlreadyExistsError:
                return False
        if isinstance(store, FsspecStore):
            path = f"{store.path.rstrip('/')}/{key}"
            if self.scheme in ("s3", "s3a"):
                try:
                    await store.fs._pipe_file(path, data, mode="create")
                    return True
                except (FileExistsError, OSError) as exc:
                    if isinstance(exc, FileExistsError) or "PreconditionFailed" in str(exc):
                        return False
                    raise
        # Any other fsspec backend: best effort (check, then write), said once per root (docs/concurrency.md).
        _warn_not_atomic(self)
        if await store.exists(key):
            return False
        await store.set(key, buf)
        return True

    @retrying("COPY")
    async def copy_async(self, src: str, dst: str) -> None:
        """Copy object ``src`` to ``dst`` inside the root, without the bytes passing through us where the
        backend allows: a hard link locally (later replacements of ``src`` make a new file), a
        server-side copy on S3, a reference in memory."""
        store = self.store
        if isinstance(store, LocalStore):
            s, d = store.root / src, store.root / dst
            d.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(s, d)
            except FileExistsError:
                pass
            except OSError:  # file systems without hard links
                await store.set(dst, await store.get(src, prototype=_PROTO))
            return
        if isinstance(store, MemoryStore):
            store._store_dict[dst] = store._store_dict[src]
            return
        if type(store).__name__ == "ObjectStore":
            import obstore

            await obstore.copy_async(store.store, src, dst)
            return
        if isinstance(store, FsspecStore):
            base = store.path.rstrip("/")
            await store.fs._copy(f"{base}/{src}", f"{base}/{dst}")
            return
        await store.set(dst, await store.get(src, prototype=_PROTO))

    def copy_many(self, pairs: list[tuple[str, str]], concurrency: int = 32) -> None:
        """``copy_async`` for every (src, dst) pair, ``concurrency`` at a time."""
        import asyncio

        async def run() -> None:
            gate = asyncio.Semaphore(concurrency)

            async def one(src: str, dst: str) -> None:
                async with gate:
                    await self.copy_async(src, dst)

            await asyncio.gather(*(one(s, d) for s, d in pairs))

        if pairs:
            sync(run())

    @retrying("DELETE")
    async def delete_async(self, key: str) -> None:
        await self.store.delete(key)

    @retrying("LIST")
    async def list_prefix_async(self, prefix: str) -> list[str]:
        if isinstance(self.store, LocalStore):
            # one scandir walk: zarr's LocalStore lists with Path.rglob, which (Python 3.11) can miss files
            # that stand still while others in the same folder are created and deleted (a branch's head
            # names while writers put marks beside them: the branch would seem to vanish mid-commit)
            import asyncio

            from hubdask.storage import files

            folder = prefix.rstrip("/") + "/" if prefix.rstrip("/") else ""
            return sorted(await asyncio.to_thread(files.list_sizes, self.store.root, folder, True))
        return [k async for k in self.store.list_prefix(prefix)]

    @retrying("LIST")
    async def list_sizes_async(self, prefix: str) -> dict[str, int]:
        """Every object whose key starts with ``prefix`` (a string prefix, as S3 LIST; it need not end
        at a folder) -> its size in bytes. One paginated LIST on object stores."""
        store = self.store
        if isinstance(store, LocalStore):
            import asyncio

            from hubdask.storage import files

            return await asyncio.to_thread(files.list_sizes, store.root, prefix)
        if isinstance(store, MemoryStore):
            return {k: len(v) for k, v in list(store._store_dict.items()) if k.startswith(prefix)}
        if type(store).__name__ == "ObjectStore":
            import obstore

            # obstore's prefix is a folder: list the folder from ``prefix`` on (S3 lists in key order)
            parent, _, start = prefix.rpartition("/")
            out: dict[str, int] = {}
            stream = obstore.list(store.store, parent or None, offset=prefix if start else None, chunk_size=1000)
            async for batch in stream:
                for meta in batch:
                    if meta["path"].startswith(prefix):
                        out[meta["path"]] = meta["size"]
                    elif start and meta["path"] > prefix:
                        return out
            return out
        if isinstance(store, FsspecStore):
            base = store.path.rstrip("/")
            parent, _, start = prefix.rpartition("/")
            where = f"{base}/{parent}" if parent else base
            try:
                found = await store.fs._find(where, prefix=start, detail=True)  # s3fs: a server-side prefix
            except TypeError:
                found = await store.fs._find(where, detail=True)
            out = {}
            for path, info in found.items():
                rel = path[len(base) + 1:] if base else path
                if rel.startswith(prefix) and info.get("type", "file") != "directory":
                    out[rel] = int(info.get("size") or 0)
            return out
        return {k: -1 async for k in store.list_prefix(prefix)}

    def list_sizes(self, prefix: str) -> dict[str, int]:
        return sync(self.list_sizes_async(prefix))

    @retrying("LIST")
    async def list_dir_async(self, prefix: str) -> list[str]:
        return [k async for k in self.store.list_dir(prefix)]

    def get(self, key: str) -> bytes | None:
        return sync(self.get_async(key))

    def put(self, key: str, data: bytes) -> None:
        sync(self.put_async(key, data))

    def create(self, key: str, data: bytes) -> bool:
        return sync(self.create_async(key, data))

    def delete(self, key: str) -> None:
        sync(self.delete_async(key))

    def list_prefix(self, prefix: str) -> list[str]:
        return sync(self.list_prefix_async(prefix))

    def list_dir(self, prefix: str) -> list[str]:
        return sync(self.list_dir_async(prefix))

    def delete_many(self, keys: list[str], concurrency: int = 32) -> None:
        """Delete every key of ``keys`` (missing ones included), ``concurrency`` at a time."""
        import asyncio

        async def run() -> None:
            gate = asyncio.Semaphore(concurrency)

            async def one(key: str) -> None:
                async with gate:
                    await self.delete_async(key)

            await asyncio.gather(*(one(k) for k in keys))

        if keys:
            sync(run())

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many."""

        async def run() -> int:
            keys = await self.list_prefix_async(prefix)
            for k in keys:
                await self.delete_async(k)  # each DELETE retried and bounded like any request
            return len(keys)

        return sync(run())


_WARNED: set[str] = set()


def _warn_not_atomic(root: "Root") -> None:
    if root.url in _WARNED:
        return
    _WARNED.add(root.url)
    import re
    import warnings

    shown = re.sub(r"//[^/@]*@", "//", root.url)  # never a user:password
    warnings.warn(
        f"root {shown} ({root.scheme}://) cannot create objects exclusively: refs and chunk "
        "versions are created check-then-write, so two processes writing the same chunk or committing the "
        "same branch at the same instant may lose an update. Coordinate writers with a dask.distributed "
        "cluster (chunk locks), or use a local folder, memory or S3 root", RuntimeWarning, stacklevel=3)


def _reopen_after_fork() -> None:
    """In a forked child (a DataLoader worker, multiprocessing): drop every open store, whose connections
    belong to the parent, so each reopens lazily; an S3 root reopens over a fresh obstore (forked.py)."""
    global _OPEN_LOCK
    _OPEN_LOCK = threading.Lock()
    for root in _OPEN.values():
        forked.keep(root._store)  # freeing the parent's obstore objects here could hang (forked.keep)
        root._store = None
        root._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reopen_after_fork)


def _make_store(url: str, options: dict[str, Any]) -> Store:
    from hubdask.storage import public  # https:// and anonymous S3 roots: read-only (storage/public.py)

    return public.wrap(url, options, _open_store(url, options))


def _open_store(url: str, options: dict[str, Any]) -> Store:
    scheme = url.split("://")[0] if "://" in url else "file"
    if scheme == "file":
        return LocalStore(url)
    if scheme == "memory":
        return MemoryStore(_MEMORY.setdefault(url, {}))
    if scheme in ("s3", "s3a") and config.s3_client() == "obstore":
        if not _has_credentials(options):
            from hubdask.errors import StorageError
            from hubdask.storage.retry import CREDENTIALS_HELP

            raise StorageError(f"storage {safe_url(url)}: no S3 credentials found: {CREDENTIALS_HELP}")
        forked.reload_obstore()  # a forked child's inherited obstore has no live runtime
        return _obstore_s3(url, options)
    store = FsspecStore.from_url(url, storage_options=_fsspec_options(scheme, options))
    if scheme in ("s3", "s3a"):
        store.fs.retries = 1  # one budget (storage/retry.py): botocore's attempts and ours, no s3fs loop on top
    return store


def _fsspec_options(scheme: str, options: dict[str, Any]) -> dict[str, Any]:
    opts = dict(options)
    if scheme in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in opts and "endpoint_url" not in opts.get("client_kwargs", {}):
            opts["endpoint_url"] = endpoint
        opts.setdefault("config_kwargs", Policy.from_env().botocore_config())  # HUBDASK_RETRIES (retry.py)
    return opts


_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                   "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_PROFILE")


def _has_credentials(options: dict[str, Any]) -> bool:
    """Whether obstore will find credentials: in storage_options, in the environment, or from an instance
    metadata service that answers (probed once per root, 1 s at most: obstore would otherwise retry an
    absent one for the whole retry budget before saying so)."""
    if options.get("key") or options.get("anon") or any(os.environ.get(k) for k in _CREDENTIAL_ENV):
        return True
    import http.client
    from urllib.parse import urlsplit

    endpoint = urlsplit(os.environ.get("AWS_METADATA_ENDPOINT") or "http://169.254.169.254")
    conn = http.client.HTTPConnection(endpoint.hostname or "169.254.169.254", endpoint.port or 80, timeout=1.0)
    try:
        conn.request("PUT", "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _obstore_s3(url: str, options: dict[str, Any]) -> Store:
    """zarr's ObjectStore over obstore's S3Store, configured from s3fs-style options and AWS env vars."""
    from obstore.store import S3Store
    from zarr.storage import ObjectStore

    opts = dict(options)
    client_kwargs = opts.pop("client_kwargs", {}) or {}
    cfg: dict[str, Any] = {}
    endpoint = (
        opts.pop("endpoint_url", None)
        or client_kwargs.get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    if endpoint:
        cfg["endpoint"] = endpoint
    for ours, theirs in (("key", "access_key_id"), ("secret", "secret_access_key"), ("token", "session_token")):
        if opts.get(ours):
            cfg[theirs] = opts.pop(ours)
    region = client_kwargs.get("region_name") or opts.pop("region", None) or os.environ.get("AWS_REGION") or os.environ.get(
        "AWS_DEFAULT_REGION"
    )
    if region:
        cfg["region"] = region
    if opts.pop("anon", False):
        cfg["skip_signature"] = True

    if not endpoint or endpoint.startswith("https://"):
        cfg["unsigned_payload"] = True  # TLS protects the body; as botocore, hash it only over plain HTTP
    policy = Policy.from_env()
    client_options: dict[str, Any] = {}
    if policy.client_timeout() is not None:  # one request never outlasts HUBDASK_RETRY_TIMEOUT (retry.py)
        client_options.update(timeout=f"{policy.timeout:g}s", connect_timeout=f"{min(policy.timeout, 10.0):g}s")
    if endpoint and endpoint.startswith("http://"):
        client_options["allow_http"] = True
    bucket_and_prefix = url.split("://", 1)[1]
    bucket, _, prefix = bucket_and_prefix.partition("/")
    store = S3Store(
        bucket,
        prefix=prefix or None,
        config=cfg,
        client_options=client_options,
        retry_config=policy.obstore_config(),  # HUBDASK_RETRIES etc. (storage/retry.py)
    )
    _settle_obstore_at_exit()
    return ObjectStore(store)


_SETTLE_REGISTERED = False


def _settle_obstore_at_exit() -> None:
    """Give obstore's runtime threads a moment at exit, before the interpreter finalizes: a thread that
    delivers a finished request's result (a wake-up of the asyncio loop) while Python 3.11 finalizes is
    ended with pthread_exit inside Rust frames, and the process aborts (SIGABRT after all its work was
    done: seen in about 3% of short S3 processes, 0 of 120 with this)."""
    global _SETTLE_REGISTERED
    if not _SETTLE_REGISTERED:
        import atexit
        import time

        _SETTLE_REGISTERED = True
        atexit.register(time.sleep, 0.05)
