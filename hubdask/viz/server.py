"""``hubdask view NAME``: a local web page to browse an array along its first axis.

The server binds 127.0.0.1 only. Each request reads one picture: ``array[i, 0.., ::s, ::s]`` strided
to at most ``max_side`` pixels per side, so only the chunks holding slice ``i`` are fetched. The page
(no external assets) has a slider and a number box for ``i``, the image, the value range and a histogram,
and jumps between slices that hold written chunks.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from hubdask import grid
from hubdask.view import view_of
from hubdask.viz import png, render
from hubdask.viz.page import PAGE
from hubdask.viz.summary import safe_url, written_chunks

HOST = "127.0.0.1"
MAX_WRITTEN_RANGES = 10_000


class Viewer:
    """The data behind the page: pictures and stats of slices along axis 0, with a small cache."""

    def __init__(self, array: Any, max_side: int = 1024, bins: int = 64, keep: int = 16) -> None:
        if array.ndim == 0:
            raise ValueError(f"dataset {array.name!r} is 0-dimensional: there is nothing to view")
        self.array, self.max_side, self.bins, self.keep = array, max_side, bins, keep
        shape = array.shape
        self.sliced = array.ndim > render.picture_ndim(shape)  # a slider over axis 0
        inner = shape[1:] if self.sliced else shape
        self._lead = (0,) * (len(inner) - render.picture_ndim(inner))  # further leading axes: at 0
        self._cache: OrderedDict[tuple, tuple[bytes, dict]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def length(self) -> int:
        return self.array.shape[0] if self.sliced else 1

    def meta(self) -> dict:
        a = self.array
        return {
            "name": a.name, "root": safe_url(view_of(a).source.root.url), "shape": list(a.shape), "dtype": str(a.dtype),
            "chunks": list(a.chunks), "shards": None if a.shards is None else list(a.shards),
            "sliced": self.sliced, "length": self.length,
            "chunk0": a.chunks[0] if self.sliced else self.length, "fixed_axes": len(self._lead),
            "written": self.written_ranges(),
        }

    def written_ranges(self) -> list[list[int]]:
        """[start, stop) ranges of axis-0 indices whose storage objects (chunks, or shards) hold written
        data (merged, bounded)."""
        a = self.array
        if not self.sliced or a.is_view:
            return [[0, self.length]]
        c, n = a.storage_chunks[0], a.shape[0]
        rows = sorted({coords[0] for coords in written_chunks(a)})[:MAX_WRITTEN_RANGES]
        out: list[list[int]] = []
        for r in rows:
            lo, hi = r * c, min((r + 1) * c, n)
            if out and out[-1][1] == lo:
                out[-1][1] = hi
            else:
                out.append([lo, hi])
        return out

    def picture_view(self, i: int) -> Any:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} is out of range 0..{self.length - 1} along axis 0 of {self.array.name!r}")
        view = self.array[(i, *self._lead)] if self.sliced else self.array[self._lead] if self._lead else self.array
        if view.ndim == 1:
            return view[:: render.stride_for(view.shape, self.max_side * 4)]
        return view[render.downsample_index(view.shape, self.max_side)]

    def picture(self, i: int) -> tuple[bytes, dict]:
        """PNG bytes and stats of slice ``i`` (cached per state of the array)."""
        key = (view_of(self.array).source.current().key, i)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            view = self.picture_view(i)
            data = view.read()
            st = render.stats(data, self.bins).to_dict()
            st.update(index=i, shape=list(view.shape), step=_step(view))
            out = (png.encode(render.to_image(data)), st)
            self._cache[key] = out
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
            return out


def _step(view: Any) -> int:
    steps = [abs(a.step) for a in view_of(view).axes if isinstance(a, grid.Span)]
    return steps[0] if steps else 1


class _Handler(BaseHTTPRequestHandler):
    server: "ViewerServer"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the CLI prints the URL only
        pass

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: Any, code: int = 200) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def do_GET(self) -> None:
        if self.headers.get("Host") != self.server.host_header:  # DNS rebinding: another name for us
            return self._json({"error": f"this viewer answers only to Host {self.server.host_header}"}, 421)
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        viewer = self.server.viewer
        try:
            if url.path in ("/", "/index.html"):
                return self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            if url.path == "/meta":
                return self._json(viewer.meta())
            if url.path in ("/slice.png", "/stats"):
                try:
                    i = int(query.get("i", ["0"])[0])
                except ValueError:
                    return self._json({"error": "i must be an integer index along axis 0"}, 400)
                body, st = viewer.picture(i)
                return self._send(200, body, "image/png") if url.path == "/slice.png" else self._json(st)
            return self._json({"error": f"no page {url.path!r}"}, 404)
        except IndexError as exc:
            return self._json({"error": str(exc)}, 400)
        except Exception as exc:  # shown on the page, one line, never a traceback
            return self._json({"error": f"{type(exc).__name__}: {exc}"}, 500)


class ViewerServer(ThreadingHTTPServer):
    """The viewer's HTTP server on 127.0.0.1 (port 0: any free port)."""

    daemon_threads = True

    def __init__(self, array: Any, port: int = 0, **viewer_kw: Any) -> None:
        self.viewer = Viewer(array, **viewer_kw)
        super().__init__((HOST, port), _Handler)

    @property
    def host_header(self) -> str:
        """The only Host header answered: the address bound (a page of another origin that resolves its
        own name to 127.0.0.1 sends that name, and is refused)."""
        return f"{HOST}:{self.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host_header}/"

    def start(self) -> "ViewerServer":
        """Serve in a daemon thread (for notebooks and tests); ``close()`` stops it."""
        threading.Thread(target=self.serve_forever, name="hubdask-viewer", daemon=True).start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def serve(array: Any, port: int = 0, **viewer_kw: Any) -> ViewerServer:
    """Start the viewer of ``array`` in the background; returns the server (``.url``, ``.close()``)."""
    return ViewerServer(array, port, **viewer_kw).start()
