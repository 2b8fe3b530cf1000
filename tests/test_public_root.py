"""Public read-only roots: a root folder on a static web server (``python -m http.server`` in its own
process: GET only, no LIST, no credentials) and anonymous S3 (moto's server, ``anon=True``)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import hubdask as hd
from hubdask.storage.public import INDEX
from hubdask.storage.publish import write_index
from helpers import run_python, snapshot

DATA = np.arange(60, dtype="int32").reshape(10, 6)


class StaticServer:
    """``python -m http.server`` serving ``folder`` on a free loopback port; its request log is kept."""

    def __init__(self, folder: Path, log: Path) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.log_path = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
                                      "--directory", str(folder)], stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("python -m http.server did not start")
                time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request so far."""
        self._log.flush()
        text = self.log_path.read_text()
        return re.findall(r'"([A-Z]+) (\S+) HTTP/1\.[01]"', text)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[StaticServer, Path, dict]]:
    """A root with ``pub/a`` (tag v1 = DATA, then an uncommitted write on main), served statically."""
    monkeypatch.setenv("HUBDASK_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "site"
    a = hd.array(DATA.shape, "pub/a", dtype="int32", chunks=(4, 3), storage=str(folder))
    a[...] = DATA
    c1 = a.commit("data")
    a.tag("v1")
    a[0] = -1  # uncommitted on main
    server = StaticServer(folder, tmp_path / "http.log")
    try:
        yield server, folder, {"commit": c1}
    finally:
        server.close()


def test_tags_and_commit_ids_resolve_by_get_only(published):
    server, folder, refs = published
    tag = hd.load(f"{server.url}/pub/a:v1")
    np.testing.assert_array_equal(np.asarray(tag), DATA)
    by_id = hd.load(f"{server.url}/pub/a:{refs['commit']}")
    np.testing.assert_array_equal(np.asarray(by_id[2:7, 1:4]), DATA[2:7, 1:4])
    seen = server.requests()
    assert seen, "the reads went through the web server"
    assert {m for m, _ in seen} == {"GET"}, seen
    assert not [p for _, p in seen if p.endswith("/")], f"a folder was listed: {seen}"


def test_disk_cache_serves_repeated_reads(published):
    server, _, _ = published
    tag = hd.load(f"{server.url}/pub/a:v1")
    np.testing.assert_array_equal(np.asarray(tag), DATA)
    before = len(server.requests())
    hits = hd.cache.info()["hits"]
    np.testing.assert_array_equal(np.asarray(tag), DATA)
    assert len(server.requests()) == before, "a repeated read of a tag went to the server"
    assert hd.cache.info()["hits"] > hits


def test_a_branch_needs_the_key_index(published):
    server, folder, _ = published
    with pytest.raises(hd.NotFoundError, match=f"main.*{INDEX}.*branches do not resolve there, tags and commit ids do"):
        hd.load(f"{server.url}/pub/a")
    assert write_index(str(folder / "pub" / "a")) > 0
    assert (folder / "pub" / "a" / INDEX).exists()
    # A new process (this one trusts the index's absence for storage.public.INDEX_TTL seconds).
    out = run_python(f"""
        import numpy as np, hubdask as hd
        b = hd.load("{server.url}/pub/a")
        print(b.branch_name, np.asarray(b)[0].tolist(), np.asarray(b)[1].tolist())
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["main", str([-1] * 6).replace(" ", ""), str(DATA[1].tolist()).replace(" ", "")] \
        or out.stdout.strip() == f"main {[-1] * 6} {DATA[1].tolist()}"
    assert {m for m, _ in server.requests()} == {"GET"}


def test_writes_raise_read_only_error_naming_the_root(published):
    server, folder, _ = published
    write_index(str(folder / "pub" / "a"))
    before = snapshot(str(folder))
    url = f"{server.url}/pub"
    tag = hd.load(f"{url}/a:v1")
    with pytest.raises(hd.ReadOnlyError):
        tag[0] = 1
    branch = hd.load(f"{url}/a")
    for attempt in (lambda: branch.__setitem__(0, 1), lambda: branch.commit("x"), lambda: branch.tag("t2"),
                    lambda: hd.array((3,), f"{url}/new", dtype="int8"), lambda: hd.delete(f"{url}/a")):
        with pytest.raises(hd.ReadOnlyError, match=re.escape(url)):
            attempt()
    assert snapshot(str(folder)) == before
    assert {m for m, _ in server.requests()} == {"GET"}


def make_public(moto_server, s3_root: str) -> None:
    """A bucket policy letting anyone GET and LIST, as a public dataset bucket on AWS has."""
    import json

    bucket = s3_root.split("://", 1)[1].split("/", 1)[0]
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject"], "Resource": f"arn:aws:s3:::{bucket}/*"},
        {"Effect": "Allow", "Principal": "*", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}"}]}
    moto_server.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def test_anonymous_s3_reads_and_refuses_writes(s3_root, moto_server):
    """Through obstore, the default S3 client (unsigned requests). s3fs's anonymous HEAD gets a 403 from
    moto under the same policy, so the s3fs fallback is not covered here."""
    make_public(moto_server, s3_root)
    a = hd.array(DATA.shape, "pub/a", dtype="int32", chunks=(4, 3), storage=s3_root)
    a[...] = DATA
    a.commit("data")
    a.tag("v1")
    before = snapshot(s3_root)
    anon = {"anon": True}
    x = hd.load("pub/a:v1", storage=s3_root, storage_options=anon)
    np.testing.assert_array_equal(np.asarray(x), DATA)
    b = hd.load("pub/a", storage=s3_root, storage_options=anon)  # S3 lists: branches resolve
    np.testing.assert_array_equal(np.asarray(b), DATA)
    for attempt in (lambda: b.__setitem__(0, 1), lambda: b.commit("x"),
                    lambda: hd.array((3,), "pub/new", dtype="int8", storage=s3_root, storage_options=anon)):
        with pytest.raises(hd.ReadOnlyError, match=re.escape(s3_root)):
            attempt()
    assert snapshot(s3_root) == before
