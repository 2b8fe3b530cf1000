"""``hubdask serve NAME[:REF]``: one version served read-only over HTTP as a plain zarr v3 hierarchy.

``GET /zarr.json``, ``GET /c/0/0``, ``GET /images/zarr.json``... answer the version's logical zarr keys
(through ``Source.store()``, never hubdask's object layout), so any zarr reader that speaks HTTP reads
it: tensorstore's ``http`` kvstore, zarr-python over fsspec, neuroglancer, vizarr. Only GET, HEAD and
OPTIONS; single byte ranges (206, 416); CORS for browser viewers; the ``Host`` header must name the
bound address (no DNS rebinding from a web page); a path is a zarr key of the dataset or nothing (no
``..``, no empty or dot parts, no query). A path ending in ``/`` lists that folder as links (what
fsspec's HTTP listing reads). A branch serves its current state on every request (``no-cache``); a tag
or commit id never changes, so its answers say ``immutable`` and carry an ETag.
"""

from __future__ import annotations

import hashlib
import html
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from hubdask.storage import sync

IMMUTABLE = "public, max-age=31536000, immutable"
MUTABLE = "no-cache"
_PART = re.compile(r"[A-Za-z0-9._-]+")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range, If-None-Match, If-Modified-Since, Content-Type",
    "Access-Control-Expose-Headers": "Content-Length, Content-Range, Accept-Ranges, ETag",
    "Access-Control-Max-Age": "86400",
}


def zarr_key(path: str) -> str | None:
    """The zarr key a request path names ('' for the root folder), or None if it names none."""
    if "?" in path or "#" in path or "\\" in path:
        return None
    path = unquote(path)
    if not path.startswith("/"):
        return None
    body = path[1:]
    folder = body.endswith("/") or body == ""
    parts = body.rstrip("/").split("/") if body.rstrip("/") else []
    if any(p in (".", "..") or not _PART.fullmatch(p) for p in parts):
        return None
    return "/".join(parts) + ("/" if folder and parts else "")


class Version:
    """What the server reads: a store at the named version (a branch: re-resolved per request)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.immutable = obj.branch_name is None
        self._fixed = self._make_store() if self.immutable else None

    def _make_store(self) -> Any:
        from hubdask.storage.cache import immutable_reader

        src = self.obj._fresh_source()
        return src.store(immutable_reader(src.root) if src.cache else None)

    def store(self) -> Any:
        return self._fixed if self._fixed is not None else self._make_store()

    def etag(self, key: str, data: bytes) -> str:
        """A tag or commit's key never changes: its ETag names (commit, key), no hashing of the bytes.
        A branch's may change at any write: its ETag is a digest of the bytes served."""
        text = f"{self.obj.commit_id}/{key}".encode() if self.immutable else data
        return '"' + hashlib.sha256(text).hexdigest()[:32] + '"'

    def get(self, key: str) -> bytes | None:
        from zarr.core.buffer import default_buffer_prototype

        buf = sync(self.store().get(key, default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def children(self, folder: str) -> list[str]:
        store = self.store()

        async def run() -> list[str]:
            names = [k async for k in store.list_dir(folder)]
            out = []
            for n in names:  # a listed key that reads as nothing was deleted in this version
                key = f"{folder}{n}"
                if await store.exists(key) or [k async for k in store.list_prefix(f"{key}/")]:
                    out.append(n)
            return out

        return sync(run())

    def is_folder(self, name: str) -> bool:
        store = self.store()

        async def run() -> bool:
            async for _ in store.list_prefix(f"{name}/"):
                return True
            return False

        return sync(run())


class _Handler(BaseHTTPRequestHandler):
    server: "VersionServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _headers(self, code: int, headers: dict[str, str], length: int) -> None:
        self.send_response(code)
        for k, v in {**CORS, **headers}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _fail(self, code: int, text: str, extra: dict[str, str] | None = None) -> None:
        body = (text + "\n").encode()
        self._headers(code, {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store", **(extra or {})},
                      len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").strip().lower()
        return host in self.server.allowed_hosts or self.server.any_host

    def do_OPTIONS(self) -> None:
        if not self._host_ok():
            return self._fail(403, f"Host {self.headers.get('Host')!r} is not this server's address")
        self._headers(204, {}, 0)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._host_ok():
            return self._fail(403, f"Host {self.headers.get('Host')!r} is not this server's address "
                                   f"({self.server.url}); requests must name it")
        key = zarr_key(self.path)
        if key is None:
            return self._fail(404, "not a zarr key of this dataset")
        version = self.server.version
        try:
            if key == "" or key.endswith("/"):
                return self._listing(key)
            data = version.get(key)
            if data is None:
                if version.is_folder(key):
                    return self._fail(404, f"{key!r} is a folder: list it as {key}/")
                return self._fail(404, f"no key {key!r} in {self.server.name}")
        except Exception as exc:  # one line, never a traceback
            return self._fail(500, f"{type(exc).__name__}: {exc}")
        etag = version.etag(key, data)
        headers = {"Content-Type": "application/json" if key.endswith("zarr.json") else "application/octet-stream",
                   "Cache-Control": IMMUTABLE if version.immutable else MUTABLE, "ETag": etag,
                   "Accept-Ranges": "bytes"}
        if etag in [t.strip() for t in (self.headers.get("If-None-Match") or "").split(",")]:
            self._headers(304, {k: v for k, v in headers.items() if k != "Content-Type"}, 0)
            return
        body, code = data, 200
        rng = self.headers.get("Range")
        if rng:
            span = _byte_range(rng, len(data))
            if span is None:
                return self._fail(416, f"range {rng!r} does not fit {len(data)} bytes",
                                  {"Content-Range": f"bytes */{len(data)}"})
            start, stop = span
            body, code = data[start:stop], 206
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
        self._headers(code, headers, len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def _listing(self, folder: str) -> None:
        names = self.server.version.children(folder)
        if folder and not names:
            return self._fail(404, f"no folder {folder!r} in {self.server.name}")
        links = "".join(f'<a href="{html.escape(n)}{"" if "." in n or n.isdigit() else "/"}">{html.escape(n)}</a>\n'
                        for n in names)
        body = f"<!doctype html><title>{html.escape(self.server.name)}/{html.escape(folder)}</title>\n{links}".encode()
        self._headers(200, {"Content-Type": "text/html; charset=utf-8",
                            "Cache-Control": IMMUTABLE if self.server.version.immutable else MUTABLE}, len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refuse(self) -> None:
        self._fail(405, f"{self.server.name} is served read-only: GET, HEAD and OPTIONS only",
                   {"Allow": "GET, HEAD, OPTIONS"})

    do_PUT = do_POST = do_DELETE = do_PATCH = _refuse


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> [start, stop) within ``size``, or None."""
    m = _RANGE.match(header.strip())
    if not m or m.groups() == ("", ""):
        return None
    a, b = m.groups()
    if a == "":
        n = int(b)
        return (max(size - n, 0), size) if n > 0 and size > 0 else None
    start = int(a)
    stop = min(int(b) + 1, size) if b else size
    return (start, stop) if start < size and start < stop else None


class VersionServer(ThreadingHTTPServer):
    """The HTTP server of one version; ``url``, ``start()`` (in a thread), ``close()``."""

    daemon_threads = True

    def __init__(self, name: Any, host: str = "127.0.0.1", port: int = 0, storage: Any = None,
                 storage_options: dict | None = None, verbose: bool = False) -> None:
        if isinstance(name, str):
            from hubdask.api import load

            obj = load(name, storage=storage, storage_options=storage_options)
        else:
            obj = name
        self.name = obj.name
        self.version = Version(obj)
        self.verbose = verbose
        super().__init__((host, port), _Handler)
        bound = self.server_address[1]
        self.host = host
        self.any_host = host in ("0.0.0.0", "::", "")
        names = {host.lower()} | ({"localhost", "127.0.0.1"} if host in ("127.0.0.1", "localhost") else set())
        self.allowed_hosts = {f"{n}:{bound}" for n in names} | ({n for n in names} if bound == 80 else set())

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server_address[1]}/"

    def start(self) -> "VersionServer":
        threading.Thread(target=self.serve_forever, name="hubdask-serve", daemon=True).start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def serve(name: Any, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> VersionServer:
    """Serve ``name`` (or an opened Array/Dataset) in the background; returns the server."""
    return VersionServer(name, host, port, **kwargs).start()
