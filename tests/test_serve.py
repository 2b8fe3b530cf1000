"""``hubdask serve``: a version read-only over HTTP as a plain zarr v3 hierarchy, read by tensorstore's
``http`` kvstore, zarr-python over fsspec HTTP, xarray, and a headless-Chromium page (cross-origin)."""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import hubdask as hd
from hubdask.serve import IMMUTABLE, serve

DATA = np.arange(10 * 6, dtype="int32").reshape(10, 6)
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


@pytest.fixture
def root(tmp_path: Path) -> str:
    root = str(tmp_path / "root")
    a = hd.array(DATA.shape, "t/a", dtype="int32", chunks=(4, 3), storage=root, dims=("time", "x"))
    a[...] = DATA
    a.commit("data")
    a.tag("v1")
    a[9] = 99  # uncommitted on main
    return root


@pytest.fixture
def tag_server(root: str):
    server = serve("t/a:v1", storage=root)
    yield server
    server.close()


def request(server, method: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One raw HTTP request (the path is sent as given, not normalised by a client library)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        hdrs = {"Host": f"127.0.0.1:{server.server_address[1]}", **(headers or {})}
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_tensorstore_reads_the_served_version(tag_server):
    ts = pytest.importorskip("tensorstore")
    t = ts.open({"driver": "zarr3", "kvstore": {"driver": "http", "base_url": tag_server.url}}).result()
    np.testing.assert_array_equal(t.read().result(), DATA)
    np.testing.assert_array_equal(t[2:7, 1:5].read().result(), DATA[2:7, 1:5])
    assert list(t.domain.labels) == ["time", "x"]


def test_zarr_python_over_fsspec_http(tag_server):
    import zarr
    from zarr.storage import FsspecStore

    z = zarr.open_array(FsspecStore.from_url(tag_server.url, read_only=True), mode="r")
    np.testing.assert_array_equal(z[:], DATA)


def test_a_dataset_is_served_as_a_group_xarray_reads(tmp_path):
    import xarray as xr

    root = str(tmp_path / "root")
    ds = hd.dataset("t/ds", storage=root, images=dict(data=np.arange(32, dtype="uint8").reshape(8, 4),
                                                      dims=("sample", "x")),
                    labels=dict(data=np.arange(8), dims=("sample",)))
    ds.tag("v1")
    server = serve("t/ds:v1", storage=root)
    try:
        x = xr.open_zarr(server.url, consolidated=False)  # members found through the folder listings
        assert dict(x.sizes) == {"sample": 8, "x": 4}
        np.testing.assert_array_equal(x["labels"].values, np.arange(8))
        ts = pytest.importorskip("tensorstore")
        t = ts.open({"driver": "zarr3", "kvstore": {"driver": "http", "base_url": server.url, "path": "images/"}}).result()
        np.testing.assert_array_equal(t.read().result(), np.arange(32).reshape(8, 4))
    finally:
        server.close()


def test_get_head_ranges_and_cache_headers(tag_server):
    code, h, body = request(tag_server, "GET", "/c/0/0")
    assert code == 200 and h["cache-control"] == IMMUTABLE and h["etag"] and h["accept-ranges"] == "bytes"
    assert int(h["content-length"]) == len(body) > 4
    code, h2, nothing = request(tag_server, "HEAD", "/c/0/0")
    assert code == 200 and nothing == b"" and h2["content-length"] == h["content-length"]
    code, h3, part = request(tag_server, "GET", "/c/0/0", {"Range": "bytes=2-5"})
    assert code == 206 and part == body[2:6] and h3["content-range"] == f"bytes 2-5/{len(body)}"
    code, _, tail = request(tag_server, "GET", "/c/0/0", {"Range": "bytes=-4"})
    assert code == 206 and tail == body[-4:]
    code, h4, _ = request(tag_server, "GET", "/c/0/0", {"Range": f"bytes={len(body)}-"})
    assert code == 416 and h4["content-range"] == f"bytes */{len(body)}"
    code, _, _ = request(tag_server, "GET", "/c/0/0", {"If-None-Match": h["etag"]})
    assert code == 304
    code, h5, meta = request(tag_server, "GET", "/zarr.json")
    assert code == 200 and h5["content-type"] == "application/json" and b'"zarr_format": 3' in meta


def test_cors_for_browser_viewers(tag_server):
    code, h, _ = request(tag_server, "OPTIONS", "/c/0/0", {"Origin": "http://viewer.example",
                                                           "Access-Control-Request-Method": "GET",
                                                           "Access-Control-Request-Headers": "range"})
    assert code == 204 and h["access-control-allow-origin"] == "*"
    assert "GET" in h["access-control-allow-methods"] and "Range" in h["access-control-allow-headers"]
    code, h, _ = request(tag_server, "GET", "/zarr.json", {"Origin": "http://viewer.example"})
    assert code == 200 and h["access-control-allow-origin"] == "*" and "Content-Range" in h["access-control-expose-headers"]


def test_read_only(tag_server):
    for method in ("PUT", "POST", "DELETE", "PATCH"):
        code, h, _ = request(tag_server, method, "/c/0/0", {"Content-Length": "0"})
        assert code == 405 and h["allow"] == "GET, HEAD, OPTIONS", method
    code, _, _ = request(tag_server, "GET", "/c/0/0")
    assert code == 200


def test_host_header_must_name_the_bound_address(tag_server):
    port = tag_server.server_address[1]
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", ""):
        code, _, body = request(tag_server, "GET", "/zarr.json", {"Host": host})
        assert code == 403 and b"Host" in body, host
    assert request(tag_server, "GET", "/zarr.json", {"Host": f"localhost:{port}"})[0] == 200


def test_nothing_outside_the_dataset_is_reachable(root, tag_server):
    assert Path(root, "t", "a", "@hub", "hubdask.json").exists()  # files next to the keys exist, but are not keys
    for path in ("/../hubdask.json", "/..%2fhubdask.json", "/%2e%2e/%2e%2e/t/a/hubdask.json", "/c/../../zarr.json",
                 "/./zarr.json", "/hubdask.json", "/c/0/0?x=1", "/c\\0\\0", "/zarr.json%00",
                 "http://127.0.0.1/zarr.json", "*", "/refs/tags/v1", "/commits", "/@hub/hubdask.json",
                 "/%40hub/refs/tags/v1"):
        code, _, body = request(tag_server, "GET", path)
        assert code == 404, (path, code, body[:100])
    # (Python's http.server itself turns a leading '//' into '/', so '//zarr.json' is the root's zarr.json.)


def test_a_branch_serves_its_current_state(root):
    import zarr
    from zarr.storage import FsspecStore

    server = serve("t/a", storage=root)
    try:
        code, h, _ = request(server, "GET", "/c/0/0")
        assert code == 200 and h["cache-control"] == "no-cache"
        want = DATA.copy()
        want[9] = 99
        np.testing.assert_array_equal(zarr.open_array(FsspecStore.from_url(server.url, read_only=True), mode="r")[:], want)
        branch = hd.load("t/a", storage=root)
        branch[0] = -5  # a write after the server started is served at once
        want[0] = -5
        np.testing.assert_array_equal(zarr.open_array(FsspecStore.from_url(server.url, read_only=True), mode="r")[:], want)
    finally:
        server.close()


def test_cli_serve_refuses_an_unknown_ref(root, capsys):
    from hubdask.cli import main as cli

    assert cli(["--storage", root, "serve", "t/a:nope", "--port", "0"]) == 1
    assert "nope" in capsys.readouterr().err


PAGE = """<!doctype html><html><body>waiting<script>
fetch("%s/c/0/0", {headers: {"Range": "bytes=0-3"}})
  .then(r => r.arrayBuffer().then(b => { document.body.textContent =
      "status=" + r.status + " bytes=" + b.byteLength + " range=" + r.headers.get("Content-Range"); }))
  .catch(e => { document.body.textContent = "failed " + e; });
</script></body></html>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (Debian: apt-get install -y chromium; "
                                              ".ci/run installs it)")
def test_a_browser_page_on_another_origin_fetches_a_chunk(tag_server, tmp_path):
    data_url = tag_server.url.rstrip("/")
    page = (PAGE % data_url).encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args) -> None:
            pass

    origin = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    try:
        total = len(request(tag_server, "GET", "/c/0/0")[2])
        out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000",
                              "--dump-dom", f"http://127.0.0.1:{origin.server_address[1]}/page.html"],
                             capture_output=True, text=True, timeout=120)
        assert f"status=206 bytes=4 range=bytes 0-3/{total}" in out.stdout, (out.stdout[-500:], out.stderr[-1500:])
    finally:
        origin.shutdown()
        origin.server_close()


def test_cli_serve_in_its_own_process(root):
    import sys
    import zarr
    from zarr.storage import FsspecStore

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]),
                                                                    os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "hubdask.cli", "--storage", root, "serve", "t/a:v1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving t/a:v1 read-only at http://127.0.0.1:"), (line, proc.stderr.read()[-2000:])
        url = line.split(" at ", 1)[1].split()[0]
        np.testing.assert_array_equal(zarr.open_array(FsspecStore.from_url(url, read_only=True), mode="r")[:], DATA)
    finally:
        proc.terminate()
        proc.wait(10)
