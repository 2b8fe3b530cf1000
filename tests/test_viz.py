"""Pictures: PNG encoding, slice rendering, the Jupyter repr, matplotlib plots and the local viewer
(over HTTP, and in headless Chromium driven through the DevTools protocol)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import hubdask as hd
from hubdask.viz import png, render, thumbnail, to_png
from hubdask.viz.server import serve
from hubdask.viz.summary import safe_url

PIL = pytest.importorskip("PIL.Image", reason="the picture checks decode PNGs with Pillow (test extra)")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
ARTIFACTS = Path(os.environ.get("HUBDASK_TEST_ARTIFACTS", tempfile.gettempdir())) / "hubdask-viz"


def decode(data: bytes) -> np.ndarray:
    return np.asarray(PIL.open(io.BytesIO(data)))


def slices(n: int = 6, h: int = 64, w: int = 96) -> np.ndarray:
    """float32 slices that differ: slice k is a ramp turned by k steps plus k."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([np.sin((x * np.cos(k) + y * np.sin(k)) / 9) * (k + 1) + k for k in range(n)]).astype(np.float32)


def chunk_gets(server, since: int) -> list[str]:
    """Object keys of chunks (``.../c/i/j/...``, without their version suffix) that moto served with GET
    after log line ``since`` (LISTs left out)."""
    from urllib.parse import unquote

    keys = []
    for line in server.log_lines()[since:]:
        m = re.search(r'"GET (\S+) HTTP', line)
        path = unquote(m.group(1).split("?")[0]) if m else ""
        if "/c/" in path:
            keys.append(re.sub(r"@\d+$", "", path).replace("/@hub", ""))
    return keys


# --- rendering ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (5, 7, 4)])
def test_png_round_trips_through_pillow(shape):
    img = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    assert np.array_equal(decode(png.encode(img)), img)


def test_png_refuses_what_it_cannot_encode():
    with pytest.raises(TypeError, match="uint8"):
        png.encode(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="shape"):
        png.encode(np.zeros((2, 2, 2), np.uint8))


def test_to_image_scales_colors_and_passes_images_through():
    rgb = np.random.default_rng(1).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    assert render.to_image(rgb) is rgb
    gray = render.to_image(np.array([[0, 128], [255, 3]], np.uint8))
    assert gray.dtype == np.uint8 and gray.shape == (2, 2) and gray[1, 0] == 255
    f = render.to_image(np.array([[0.0, 1.0], [2.0, np.nan]]))
    assert f.shape == (2, 2, 3)
    assert tuple(f[0, 0]) == (68, 1, 84) and tuple(f[1, 0]) == (253, 231, 37)  # viridis ends
    assert tuple(render.to_image(np.array([[0.0, 2.0]]), cmap="gray")[0, 1]) == (255, 255, 255)
    assert render.to_image(np.ones((3, 3), bool)).max() == 255
    assert render.to_image(np.full((2, 2), 7.0)).shape == (2, 2, 3)  # constant: no division by zero
    with pytest.raises(ValueError, match="index it down further"):
        render.to_image(np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="colormap"):
        render.to_image(np.zeros((2, 2)), cmap="jet")


def test_stats_give_range_and_histogram():
    data = np.array([[1.0, 2.0], [3.0, np.nan]])
    st = render.stats(data, bins=4)
    assert (st.min, st.max, st.nan, sum(st.counts)) == (1.0, 3.0, 1, 3)
    assert st.mean == pytest.approx(2.0)


def test_safe_url_drops_credentials():
    assert safe_url("s3://bucket/p") == "s3://bucket/p"
    assert safe_url("https://user:s3cret@host:9000/path") == "https://host:9000/path"
    assert safe_url("/local/path") == "/local/path"


# --- the array's pictures -------------------------------------------------------------------------


def test_repr_html_summarizes_and_thumbnails_from_one_chunk(s3_root, moto_server, monkeypatch, tmp_path):
    monkeypatch.setenv("HUBDASK_CACHE", str(tmp_path / "cache"))
    data = slices()
    a = hd.array(data.shape, "viz/repr", dtype="float32", chunks=(1, 32, 48), storage=s3_root,
                 storage_options={"key": "testing", "secret": "testing"})
    a[...] = data
    since = len(moto_server.log_lines())
    html = a._repr_html_()
    gets = chunk_gets(moto_server, since)
    assert len(set(gets)) == 1 and gets[0].endswith("/c/0/0/0"), gets  # the thumbnail read one chunk
    for text in ("6 × 64 × 96", "float32", "1 × 32 × 48", "6 × 2 × 2 = 24 chunks, 24 written", s3_root,
                 "main", "created", "data:image/png;base64,"):
        assert text in html, text
    assert "secret" not in html.lower()
    thumb = decode(base64.b64decode(re.search(r"base64,([^\"]+)\"", html).group(1)))
    assert np.array_equal(thumb, render.to_image(data[0, :32, :48]))

    t = thumbnail(a[2:, 40:, ::-1])  # a view: still the one chunk holding its first element
    assert np.array_equal(t, render.to_image(data[2:, 40:, ::-1][0, :24, :48]))
    assert thumbnail(hd.array((10,), "viz/line", storage=s3_root)) is None  # 1-D: no picture


def test_dataset_repr_lists_arrays(tmp_path):
    ds = hd.dataset("viz/ds", images=np.zeros((4, 16, 16, 3), np.uint8), labels=np.arange(4), storage=str(tmp_path))
    html = ds._repr_html_()
    assert "images" in html and "labels" in html and "4 × 16 × 16 × 3" in html and html.count("<img") == 1


def test_to_png_and_show(tmp_path):
    pytest.importorskip("matplotlib", reason="show() draws with matplotlib (test extra)")
    data = slices(3, 40, 50)
    a = hd.array(data.shape, "viz/show", dtype="float32", storage=str(tmp_path))
    a[...] = data
    out = tmp_path / "s.png"
    to_png(a[1], out, cmap="gray")
    assert np.array_equal(decode(out.read_bytes()), render.to_image(data[1], cmap="gray"))
    big = decode(to_png(a[1], max_side=10))  # strided before reading: every 5th pixel
    assert big.shape == (8, 10, 3)
    with pytest.raises(ValueError, match=r"index it further, e\.g\. \[0\]"):
        to_png(a)
    ax = a.show(1)
    assert ax.get_title() == f"{a.name}[1]" and ax.images[0].get_array().shape == (40, 50)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(ARTIFACTS / "show.png")
    line = a.plot((0, 5))
    assert np.allclose(line.lines[0].get_ydata(), data[0, 5])
    import matplotlib.pyplot as plt

    plt.close("all")


# --- the viewer over HTTP --------------------------------------------------------------------------


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_viewer_serves_slices_reading_only_their_chunks(s3_root, moto_server, monkeypatch, tmp_path):
    monkeypatch.setenv("HUBDASK_CACHE", str(tmp_path / "cache"))
    data = slices()
    a = hd.array((1000, 64, 96), "viz/view", dtype="float32", chunks=(1, 32, 48), storage=s3_root)
    a[:6] = data
    server = serve(hd.load("viz/view", storage=s3_root))
    try:
        assert server.server_address[0] == "127.0.0.1"
        meta = json.loads(get(server.url + "meta")[1])
        assert meta["length"] == 1000 and meta["sliced"] and meta["written"] == [[0, 6]]
        since = len(moto_server.log_lines())
        code, body = get(server.url + "slice.png?i=3")
        assert code == 200 and np.array_equal(decode(body), render.to_image(data[3]))
        gets = chunk_gets(moto_server, since)
        assert gets and {g.rsplit("/c/", 1)[1].split("/")[0] for g in gets} == {"3"}, gets
        assert len(set(gets)) == 4  # slice 3 spans 2 x 2 chunks; nothing else is read
        st = json.loads(get(server.url + "stats?i=3")[1])  # served from the cache: no new read
        assert st["min"] == pytest.approx(float(data[3].min())) and st["max"] == pytest.approx(float(data[3].max()))
        assert sum(st["counts"]) == data[3].size
        assert len(chunk_gets(moto_server, since)) == len(gets)
        empty = json.loads(get(server.url + "stats?i=999")[1])
        assert empty["min"] == empty["max"] == 0.0
        code, body = get(server.url + "stats?i=1000")
        assert code == 400 and "out of range" in json.loads(body)["error"]
        assert get(server.url + "stats?i=x")[0] == 400
        assert b"<input type=\"range\"" in get(server.url)[1]
    finally:
        server.close()


def test_viewer_of_a_sharded_array_shows_its_shards_and_written_slices(tmp_path):
    """The page names the shard shape; the written ranges are whole shards (the storage object), not
    inner chunks counted as shards."""
    a = hd.array((100, 8, 8), "viz/sh", dtype="uint8", chunks=(1, 8, 8), shards=(10, 8, 8), storage=str(tmp_path))
    a[23] = 5
    a[41:43] = 7
    server = serve(hd.load("viz/sh", storage=str(tmp_path)))
    try:
        meta = json.loads(get(server.url + "meta")[1])
        assert meta["chunks"] == [1, 8, 8] and meta["shards"] == [10, 8, 8]
        assert meta["written"] == [[20, 30], [40, 50]]
        assert b"meta.shards" in get(server.url)[1]
        st = json.loads(get(server.url + "stats?i=42")[1])
        assert st["min"] == st["max"] == 7
    finally:
        server.close()


# --- the viewer in a real browser -----------------------------------------------------------------


class DevTools:
    """Headless Chromium driven over its DevTools protocol (a websocket), for one page."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--window-size=1000,700", "--hide-scrollbars", "--remote-debugging-port=0"]

    def __init__(self, url: str, profile: Path) -> None:
        from tornado.websocket import websocket_connect

        self.proc = subprocess.Popen([CHROMIUM, *self.FLAGS, f"--user-data-dir={profile}", url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        while True:
            pages = [t for t in json.loads(get(f"http://127.0.0.1:{port}/json/list")[1]) if t["type"] == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        async def connect():
            return await websocket_connect(pages[0]["webSocketDebuggerUrl"], max_message_size=256 * 2**20)

        self.loop = asyncio.new_event_loop()
        self.ws = self.loop.run_until_complete(connect())
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.write_message(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = self.loop.run_until_complete(self._read())
            reply = json.loads(msg)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    async def _read(self) -> str:
        return await asyncio.wait_for(self.ws.read_message(), 60)

    def js(self, expr: str):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not self.js(expr):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never got to: {expr} (status: {self.js('document.body.innerText')!r})")
            time.sleep(0.05)

    def screenshot(self, path: Path) -> np.ndarray:
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return decode(data)[..., :3]

    def key(self, name: str, code: int) -> None:
        for kind in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=name, code=name, windowsVirtualKeyCode=code)

    def close(self) -> None:
        try:
            self.ws.close()
            self.loop.close()
        except AttributeError:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (Debian: apt-get install -y chromium)")
def test_viewer_in_chromium_slider_changes_the_picture(tmp_path):
    data = slices()
    a = hd.array(data.shape, "viz/browser", dtype="float32", chunks=(1, 32, 48), storage=str(tmp_path / "root"))
    a[...] = data
    server = serve(hd.load("viz/browser", storage=str(tmp_path / "root")))
    profile = tmp_path / "profile"
    profile.mkdir()
    browser = DevTools(server.url, profile)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        browser.wait_for("document.getElementById('pic').dataset.index === '0' && "
                         "document.getElementById('pic').complete")
        rect = browser.js("JSON.stringify(document.getElementById('pic').getBoundingClientRect())")
        r = json.loads(rect)
        assert r["width"] >= 96 and r["height"] >= 64
        box = (slice(int(r["top"]) + 2, int(r["bottom"]) - 2), slice(int(r["left"]) + 2, int(r["right"]) - 2))
        first = browser.screenshot(ARTIFACTS / "viewer-0.png")
        assert first[box].std() > 10  # the picture is there, not a blank box
        text = browser.js("document.getElementById('range').textContent")
        assert f"{float(data[0].max()):.6g}"[:5] in text and "min" in text
        painted = browser.js("(() => { const c = document.getElementById('hist');"
                             "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                             "let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; })()")
        assert painted > 500  # histogram bars drawn
        browser.js("document.getElementById('slider').focus()")
        for _ in range(3):  # the user moves the slider with the keyboard: 0 -> 3
            browser.key("ArrowRight", 39)
        browser.wait_for("document.getElementById('pic').dataset.index === '3' && "
                         "document.getElementById('pic').complete")
        assert browser.js("document.getElementById('num').value") == "3"
        moved = browser.screenshot(ARTIFACTS / "viewer-3.png")
        diff = np.abs(first[box].astype(int) - moved[box].astype(int)).mean()
        assert diff > 10, diff  # a different picture
        assert f"{float(data[3].max()):.6g}"[:5] in browser.js("document.getElementById('range').textContent")
    finally:
        browser.close()
        server.close()


def test_viewer_answers_only_its_own_host_header(tmp_path):
    """DNS rebinding: a page at http://evil.example:PORT/ (resolving to 127.0.0.1) sends that Host; refused."""
    import http.client

    from hubdask.viz.server import serve

    a = hd.array((2, 4, 4), name="v/host", dtype="uint8", storage=str(tmp_path / "root"))
    server = serve(a)
    try:
        port = server.server_address[1]
        for host, status in ((f"127.0.0.1:{port}", 200), (f"evil.example:{port}", 421), ("localhost", 421),
                             (f"127.0.0.1:{port + 1}", 421)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/meta", headers={"Host": host})
            r = conn.getresponse()
            body = r.read()
            conn.close()
            assert r.status == status, (host, r.status, body)
            if status == 200:
                assert json.loads(body)["name"] == "v/host:main"
    finally:
        server.close()


def test_jupyter_repr_of_a_view_shows_the_views_chunks(tmp_path):
    a = hd.array((4, 6, 8, 3), name="v/grid", dtype="uint8", chunks=(1, 3, 4, 3), storage=str(tmp_path / "root"))
    page = a[0]._repr_html_()
    assert "3 &times; 4 &times; 3" in page or "3 × 4 × 3" in page or "(3, 4, 3)" in page, page
    assert "stored chunk grid" in page and "stored array" in page


def test_single_channel_pictures_are_gray():
    from hubdask.viz import render

    img = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    assert np.array_equal(render.to_image(img), img[..., 0])
    assert render.picture_ndim((10, 28, 28, 1)) == 3 and render.leading_index((10, 28, 28, 1)) == (0,)
    assert render.upscale(np.ones((28, 28), np.uint8), 256).shape == (252, 252)
    assert render.upscale(np.ones((300, 10), np.uint8), 256).shape == (300, 10)
