"""The bad-input corpus: user mistakes over the public API and the ``hubdask`` CLI.

Every case asserts the exception type (or the CLI's exit status: 2 usage, 1 error), that the message
names the dataset (or the name given) and what was expected, and that storage is byte-for-byte
unchanged (tests/helpers.snapshot).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import dask.array as da
import numpy as np
import pytest

import hubdask as hd
from hubdask.storage import open_root

from helpers import committed_object, internal, snapshot

DS = "o/ds"


@dataclass
class World:
    """A root holding ``o/ds`` (int32 (20, 10), chunks (5, 5)): commit ``c1``, tag ``v1``, branch ``exp``."""

    root: str
    c1: str
    extra: dict = field(default_factory=dict)

    def load(self, ref: str = "") -> hd.Array:
        return hd.load(f"{DS}:{ref}" if ref else DS, storage=self.root)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = str(tmp_path_factory.mktemp("bad") / "root")
    a = hd.array((20, 10), name=DS, dtype="int32", chunks=(5, 5), storage=root)
    a[:] = np.arange(200, dtype=np.int32).reshape(20, 10)
    c1 = a.commit("c1")
    a.tag("v1")
    a[0] = 7
    a.commit("c2")
    a.branch("exp")
    hd.array((4,), name="o/half", dtype="float16", chunks=(2,), storage=root)
    return World(root, c1)


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[World], Any]
    error: type[BaseException]
    says: tuple[str, ...]  # substrings of the message (case-insensitive): the name and what was expected


def setitem(ref: str, index: Any, value: Any) -> Callable[[World], None]:
    def run(w: World) -> None:
        w.load(ref)[index] = value

    return run


def load(name: str) -> Callable[[World], Any]:
    return lambda w: hd.load(name, storage=w.root)


def create(**kw: Any) -> Callable[[World], Any]:
    args = {"shape": (10, 10), "name": "o/new", "dtype": "float32", **kw}
    return lambda w: hd.array(storage=w.root, **args)


API_CASES = [
    # names: refused before any storage is touched
    Case("traversal", load("o/../etc"), hd.InvalidNameError, ("o/../etc", "expected")),
    Case("traversal-dataset", load("../etc"), hd.InvalidNameError, ("'..'", "expected")),
    Case("empty-part", load("o//ds"), hd.InvalidNameError, ("o//ds", "expected")),
    Case("leading-slash", load("/o/ds"), hd.InvalidNameError, ("/o/ds", "expected")),
    Case("unicode-lookalike", load("o/d\u0430ta"), hd.InvalidNameError, ("d\u0430ta", "expected")),
    Case("zero-width", load("o/ds\u200b"), hd.InvalidNameError, ("ds\\u200b", "expected")),  # shown escaped
    Case("over-long", load("o/" + "x" * 300), hd.InvalidNameError, ("xxxxxxxxxx", "255")),
    Case("too-many-parts", load("a/b/c"), hd.InvalidNameError, ("a/b/c", "expected 'owner/dataset'")),
    Case("two-refs", load("o/ds:a:b"), hd.InvalidNameError, ("o/ds:a:b", "more than one ':'")),
    Case("bad-ref", load("o/ds:v 1"), hd.InvalidNameError, ("v 1", "expected a branch, tag or commit")),
    Case("not-a-str", load(42), hd.InvalidNameError, ("str", "owner/dataset")),
    Case("create-bad-name", create(name="o/x y"), hd.InvalidNameError, ("x y", "expected")),
    # unknown things
    Case("unknown-dataset", load("o/missing"), hd.NotFoundError, ("o/missing",)),
    Case("unknown-ref", load(f"{DS}:nope"), hd.NotFoundError, (DS, "nope", "branches")),
    Case("merge-unknown-ref", lambda w: w.load("exp").merge("nope"), hd.NotFoundError, (DS, "nope")),
    Case("delete-unknown", lambda w: hd.delete("o/missing", storage=w.root), hd.NotFoundError, ("o/missing",)),
    # read-only refs
    Case("write-tag", setitem("v1", 0, 1), hd.ReadOnlyError, (DS, "read-only")),
    Case("write-old-commit", lambda w: setitem(w.c1, 0, 1)(w), hd.ReadOnlyError, (DS, "read-only")),
    Case("commit-tag", lambda w: w.load("v1").commit("x"), hd.ReadOnlyError, (DS, "read-only")),
    Case("store-into-tag", lambda w: hd.store(da.zeros((20, 10), dtype="int32"), w.load("v1")),
         hd.ReadOnlyError, (DS, "read-only")),
    Case("delete-with-ref", lambda w: hd.delete(f"{DS}:v1", storage=w.root), hd.InvalidNameError,
         (DS, "without ':REF'")),
    # shapes, dtypes, indices
    Case("shape-mismatch", setitem("", slice(0, 2), np.ones((3, 10), np.int32)), ValueError, (DS, "broadcast", "(2, 10)")),
    Case("string-value", setitem("", 0, "abc"), TypeError, (DS, "int32")),
    Case("nan-into-int", setitem("", 0, float("nan")), TypeError, (DS, "nan", "int32")),
    Case("float-array-into-int", setitem("", 0, np.full(10, np.nan)), TypeError, (DS, "float64", "int32")),
    Case("inf-into-int", setitem("", 0, np.inf), TypeError, (DS, "int32")),
    Case("overflow", setitem("", 0, 2**40), TypeError, (DS, "int32", "range")),
    Case("object-value", setitem("", 0, np.array([object()] * 10)), TypeError, (DS, "object", "int32")),
    Case("index-out-of-bounds", lambda w: w.load()[100], IndexError, (DS, "100")),
    Case("negative-out-of-bounds", setitem("", -21, 1), IndexError, (DS, "-21")),
    Case("too-many-indices", lambda w: w.load()[0, 0, 0], IndexError, (DS,)),
    Case("float-index", lambda w: w.load()[1.5], IndexError, (DS,)),
    Case("store-shape", lambda w: hd.store(da.zeros((3, 3), dtype="int32"), w.load()), ValueError,
         (DS, "(3, 3)", "(20, 10)")),
    # creating arrays
    Case("object-dtype", create(dtype=object), TypeError, ("o/new", "numeric")),
    Case("string-dtype", create(dtype="U4"), TypeError, ("o/new", "numeric")),
    Case("not-a-dtype", create(dtype="nonsense"), TypeError, ("o/new", "nonsense")),
    Case("negative-chunk", create(chunks=(-1, 5)), ValueError, ("o/new", "positive")),
    Case("zero-chunk", create(chunks=(0, 5)), ValueError, ("o/new", "positive")),
    Case("chunk-larger-than-shape", create(chunks=(20, 5)), ValueError, ("o/new", "at most the axis length")),
    Case("chunks-wrong-ndim", create(chunks=(5,)), ValueError, ("o/new", "axes")),
    Case("negative-shape", create(shape=(-1, 4)), ValueError, ("o/new", "non-negative")),
    Case("fill-does-not-fit", create(dtype="uint8", fill_value="x"), TypeError, ("o/new", "fill_value")),
    # values that a cast would change: refused at creation as they are in writes (hubdask.spec.cast)
    Case("fill-over-uint8", create(dtype="uint8", fill_value=300), TypeError, ("o/new", "300", "uint8", "0..255")),
    Case("fill-over-int64", create(dtype="int64", fill_value=2**63), TypeError, ("o/new", str(2**63), "int64")),
    Case("fill-huge-int", create(dtype="int64", fill_value=2**70), TypeError, ("o/new", "int64")),
    Case("fill-nan-int32", create(dtype="int32", fill_value=float("nan")), TypeError, ("o/new", "nan", "int32")),
    Case("fill-fraction-int", create(dtype="int16", fill_value=2.5), TypeError, ("o/new", "2.5", "int16")),
    Case("fill-2-bool", create(dtype="bool", fill_value=2), TypeError, ("o/new", "2", "bool")),
    Case("fill-over-float16", create(dtype="float16", fill_value=1e10), TypeError, ("o/new", "float16", "65504")),
    Case("fill-array", create(fill_value=[1, 2]), TypeError, ("o/new", "scalar")),
    Case("float16-overflow", lambda w: hd.load("o/half", storage=w.root).__setitem__(0, 1e10), TypeError,
         ("o/half", "float16", "overflow", "65504")),
    Case("float16-array-overflow", lambda w: hd.load("o/half", storage=w.root).__setitem__(
        slice(None), np.array([1.0, 7e4, 0, 0])), TypeError, ("o/half", "float16", "overflow")),
    # shapes: only integers are lengths
    Case("shape-float", create(shape=(2.5, 3)), TypeError, ("o/new", "2.5", "integers")),
    Case("shape-bool", create(shape=(True, 3)), TypeError, ("o/new", "True", "integers")),
    Case("shape-str", create(shape="10"), TypeError, ("o/new", "'10'", "integers")),
    Case("shape-none", create(shape=None), TypeError, ("o/new", "integers")),
    Case("chunks-bool", create(chunks=(True, 5)), ValueError, ("o/new", "positive integers")),
    Case("chunks-float", create(chunks=(2.5, 5)), ValueError, ("o/new", "positive integers")),
    # dtypes zarr cannot store: one line naming what is supported
    Case("datetime-no-unit", create(dtype="datetime64"), TypeError, ("o/new", "datetime64", "unit", "datetime64[s]")),
    Case("timedelta-no-unit", create(dtype="m8"), TypeError, ("o/new", "timedelta64", "unit")),
    Case("float128", create(dtype=np.longdouble if np.dtype(np.longdouble).itemsize > 8 else "V16"), TypeError,
         ("o/new", "float64", "complex128")),
    Case("complex256", create(dtype=np.clongdouble if np.dtype(np.clongdouble).itemsize > 16 else "V32"), TypeError,
         ("o/new", "complex128")),
    Case("structured-dtype", create(dtype=[("a", "i4"), ("b", "f8")]), TypeError, ("o/new", "numeric")),
    Case("bad-codecs", create(codecs="lz5"), TypeError, ("o/new", "'lz5'", "zstd")),
    Case("dataset-bad-fill", lambda w: hd.dataset("o/newds", storage=w.root, images=dict(
        shape=(4, 2), dtype="uint8", fill_value=-1), labels=np.arange(4)), TypeError, ("o/newds", "images", "uint8")),
    Case("dataset-no-unit", lambda w: hd.dataset("o/newds", storage=w.root, x=dict(shape=(4,), dtype="datetime64")),
         TypeError, ("o/newds", "'x'", "unit")),
    Case("create-array-bad-shape", lambda w: _dataset(w).create_array(
        "z", shape=(1.5,), dtype="int8"), TypeError, ("o/grp", "'z'", "integers")),
    # names shown as given (a URL root keeps its scheme and parts)
    Case("missing-url-dataset", load("memory://bucket-x/prefix/nope/nope"), hd.NotFoundError,
         ("memory://bucket-x/prefix/nope/nope",)),
    Case("exists", create(name=DS, shape=(20, 10), dtype="int32"), FileExistsError, (DS, "exist_ok")),
    Case("exists-other-shape", create(name=DS, exist_ok=True), ValueError, (DS, "(20, 10)")),
    # refs
    Case("branch-exists", lambda w: w.load().branch("exp"), hd.AlreadyExistsError, (DS, "exp")),
    Case("tag-exists", lambda w: w.load("exp").tag("v1"), hd.AlreadyExistsError, (DS, "v1")),
    Case("tag-bad-name", lambda w: w.load("v1").tag("a/b"), hd.InvalidNameError, ("a/b", "expected")),
    Case("delete-only-branch-missing", lambda w: w.load().delete_branch("nope"), hd.NotFoundError, (DS, "nope")),
]


def _dataset(w: World):
    """A multi-array dataset ``o/grp`` (made once per world, outside any case's snapshot)."""
    if "grp" not in w.extra:
        w.extra["grp"] = hd.dataset("o/grp", storage=w.root, images=dict(shape=(2, 2), dtype="uint8"))
    return hd.load("o/grp", storage=w.root)


def check_message(exc: BaseException, says: tuple[str, ...]) -> None:
    text = str(exc).lower()
    for s in says:
        assert s.lower() in text, f"{s!r} not in message {str(exc)!r}"


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api(case: Case, world: World) -> None:
    if case.id == "create-array-bad-shape":
        _dataset(world)
    before = snapshot(world.root)
    with pytest.raises(case.error) as info:
        case.run(world)
    check_message(info.value, case.says)
    assert snapshot(world.root) == before


def test_corpus_is_large_enough() -> None:
    assert len(API_CASES) + len(CLI_CASES) + 4 >= 30


# --- damaged storage: each case damages its own dataset first, then checks nothing else changes ------


def make(root: str, name: str) -> tuple[hd.Array, str]:
    a = hd.array((10, 10), name=name, dtype="float64", chunks=(5, 5), storage=root)
    a[:] = 1.5
    return a, a.commit("c")


def test_corrupted_metadata_json(tmp_path) -> None:
    root = str(tmp_path / "root")
    make(root, "o/meta")
    r = open_root(root)
    for garbage in (b"{not json", b"[]", json.dumps({"zarr_format": 2}).encode()):
        for k in [k for k in r.list_prefix(internal("o/meta", "nodes/")) if "zarr.json@" in k]:
            r.put(k, garbage)
        before = snapshot(root)
        with pytest.raises(hd.CorruptChunkError, match=r"o/meta.*zarr.json.*expected zarr v3"):
            hd.load("o/meta", storage=root)
        assert snapshot(root) == before


@pytest.mark.parametrize("size", ["short", "long", "empty-ish"])
def test_chunk_object_of_wrong_size(tmp_path, size: str) -> None:
    root = str(tmp_path / "root")
    a, cid = make(root, "o/size")
    r = open_root(root)
    key = committed_object(a, cid, "c/1/0")  # the committed object
    raw = r.get(key)
    r.put(key, {"short": raw[:-7], "long": raw + b"\0" * 9, "empty-ish": raw[:3]}[size])
    before = snapshot(root)
    b = hd.load(f"o/size:{cid}", storage=root)
    with pytest.raises(hd.CorruptChunkError, match=r"o/size.*c/1/0.*expected"):
        b.read()
    with pytest.raises(hd.CorruptChunkError, match=r"o/size.*c/1/0"):
        b.compute()
    np.testing.assert_array_equal(b[:5].read(), 1.5)  # the chunks that are fine still read
    assert snapshot(root) == before


def test_root_that_does_not_exist(tmp_path) -> None:
    nowhere = tmp_path / "nowhere" / "root"
    with pytest.raises(hd.NotFoundError, match=r"o/ds.*nowhere"):
        hd.load(DS, storage=str(nowhere))
    assert hd.ls(storage=str(nowhere)) == []
    assert not [p for p in (tmp_path / "nowhere").rglob("*") if p.is_file()]  # reading wrote nothing


def test_read_only_root(world: World, tmp_path) -> None:
    """A root mounted read-only: reads work; a write fails with a PermissionError naming the dataset."""
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "--bind", "-o", "ro", world.root, str(ro)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot bind-mount the root read-only (needs root): {r.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True)
        if os.access(ro, os.W_OK) and _writable(ro):
            pytest.skip("the read-only bind mount is writable here")
        before = snapshot(world.root)
        b = hd.load(DS, storage=str(ro))
        assert b[1, 1].read() == 11
        with pytest.raises(hd.ReadOnlyError, match=rf"{DS}.*read-only"):
            b[1] = 3
        with pytest.raises(hd.ReadOnlyError, match=rf"{DS}.*read-only"):
            b.commit("x")
        assert snapshot(world.root) == before
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def _writable(path) -> bool:
    try:
        with open(path / ".probe", "wb"):
            pass
        os.unlink(path / ".probe")
        return True
    except OSError:
        return False


# --- the CLI: exit status 2 for usage mistakes, 1 for errors; one line naming the dataset, no traceback --

CLI_CASES = [
    (["info", "o/../etc"], 2, ("o/../etc", "expected")),
    (["info", "o/missing"], 1, ("o/missing", "'hubdask ls'")),
    (["cp", DS, f"{DS}:v1"], 1, (DS, "read-only", "branch")),
    (["merge", f"{DS}:v1", "exp"], 1, (DS, "read-only", "hubdask branch")),
    (["merge", DS, "nope"], 1, (DS, "nope")),
    (["diff", DS, "o/other:main"], 2, ("o/other:main", DS, "expected REF")),
    (["show", f"{DS}[0]", "-o", "/missing/dir/x.png"], 2, ("/missing/dir", "existing folder")),
    (["commit", DS, "-m", "nothing"], 0, ()),  # prints "nothing to commit" to stdout, writes nothing
    (["log", f"{DS}:nope"], 1, (DS, "nope")),
    (["commit", f"{DS}:v1", "-m", "x"], 1, (DS, "read-only")),
    (["tag", DS, "v1"], 1, (DS, "v1")),  # AlreadyExistsError: a runtime error, not a usage error
    (["branch", DS, "bad/name"], 2, ("bad/name", "expected")),
    (["rm", f"{DS}:v1", "-y"], 2, (DS, ":REF")),
    (["show", f"{DS}[100]", "-o", "/dev/null"], 2, (DS, "100")),
    (["cp", "/no/such/file.npy", "o/new"], 1, ("file.npy",)),
    (["gc", "o/missing"], 1, ("o/missing",)),
]


def test_cli(world: World, tmp_path) -> None:
    """All CLI cases in one subprocess each (the installed entry point's module)."""
    env = {**os.environ, "HUBDASK_ROOT": world.root, "HUBDASK_CACHE": str(tmp_path / "cache")}
    before = snapshot(world.root)
    for argv, status, says in CLI_CASES:
        r = subprocess.run([sys.executable, "-m", "hubdask.cli", *argv], capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == status, (argv, r.returncode, r.stderr)
        if status == 0:
            assert r.stderr == "" and "nothing to commit" in r.stdout, (argv, r.stdout, r.stderr)
            continue
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, (argv, r.stderr)
        for s in says:
            assert s.lower() in r.stderr.lower(), (argv, s, r.stderr)
    assert snapshot(world.root) == before


# --- shapes and names that used to slip through -----------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "int32", "float64", "complex128"])
def test_zero_d_array_writes_and_reads(tmp_path, dtype: str) -> None:
    """A 0-d array is written and read back by every path (engine, numpy, dask), whatever its itemsize."""
    a = hd.array((), name="o/scalar", dtype=dtype, storage=str(tmp_path / "root"))
    a[()] = 5
    b = hd.load("o/scalar", storage=str(tmp_path / "root"))
    for got in (a.read(), b.read(), np.asarray(b), b.compute(), b[()].read()):
        assert got.shape == () and got == 5
    a[...] = 0
    assert b.read() == 0


def test_single_part_url_name_reads_back() -> None:
    """``memory://x`` shows as ``memory://x:main`` (not ``memory:/x``), a name hd.load accepts."""
    url = f"memory://one{os.getpid()}"
    a = hd.array((2,), name=url, dtype="int8")
    assert a.name == f"{url}:main"
    assert hd.load(a.name).shape == (2,)


def test_url_with_port_and_credentials_parses_and_hides_them() -> None:
    from hubdask.names import parse

    n = parse("ftp://alice:PW1234@127.0.0.1:2121/hub/ds:v1")
    assert (n.path, n.ref, n.root) == ("ds", "v1", "ftp://alice:PW1234@127.0.0.1:2121/hub")
    assert str(n) == "ftp://127.0.0.1:2121/hub/ds:v1"
    with pytest.raises(hd.InvalidNameError) as info:
        parse("ftp://alice:PW1234@127.0.0.1:2121/hub/d s")
    assert "PW1234" not in str(info.value) and "d s" in str(info.value)


# --- storage that is not there, not ours, or never answers: one line, fast, nothing written ------------

CLIENTS = ["obstore", "s3fs"]


@pytest.fixture
def silent_endpoint():
    """``http://127.0.0.1:PORT`` of a socket that accepts every connection and never answers."""
    import socket
    import threading

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join()
    for c in held:
        c.close()
    sock.close()


def _use(monkeypatch, tmp_path, client: str, **env: str) -> None:
    import s3fs

    monkeypatch.setenv("HUBDASK_S3_CLIENT", client)
    monkeypatch.setenv("HUBDASK_CACHE", str(tmp_path / "cache"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("client", CLIENTS)
def test_missing_bucket_is_one_line_naming_bucket_and_root(moto_server, s3_root, monkeypatch, tmp_path, client):
    _use(monkeypatch, tmp_path, client)
    url = f"s3://no-such-bucket-{client}/root"
    with pytest.raises(hd.NotFoundError) as info:
        hd.array((4,), name="o/x", storage=url)
    text = str(info.value)
    assert "\n" not in text and len(text) < 300, text
    check_message(info.value, ("o/x", f"'no-such-bucket-{client}'", url, "does not exist", "create it"))
    with pytest.raises(hd.NotFoundError, match="no-such-bucket"):
        hd.dataset("o/y", storage=url, images=dict(shape=(2,), dtype="uint8"))
    assert f"no-such-bucket-{client}" not in {b["Name"] for b in moto_server.client().list_buckets()["Buckets"]}


@pytest.mark.parametrize("client", CLIENTS)
def test_no_credentials_fail_at_once_saying_where_they_were_looked_for(s3_root, moto_server, monkeypatch, tmp_path,
                                                                        client):
    """No keys anywhere (the metadata service refuses): the first request answers, with no retries."""
    closed = f"http://127.0.0.1:{_closed_port()}"
    _use(monkeypatch, tmp_path, client, AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
         AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_METADATA_ENDPOINT=closed,
         AWS_EC2_METADATA_SERVICE_ENDPOINT=closed, HUBDASK_RETRY_WAIT="30", HUBDASK_RETRY_TIMEOUT="600")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    for attempt in (lambda: hd.array((4,), name="o/x", storage=s3_root), lambda: hd.load("o/x", storage=s3_root)):
        with pytest.raises(hd.StorageError) as info:
            attempt()
        text = str(info.value)
        assert "\n" not in text and "attempt" not in text, text  # a first answer, not a retry budget spent
        check_message(info.value, (s3_root, "no S3 credentials", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "anon"))
    bucket = s3_root.split("/")[2]
    assert moto_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # nothing written


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when this returns: connections are refused


@pytest.mark.parametrize("client", CLIENTS)
def test_requests_end_within_the_retry_timeout(silent_endpoint, monkeypatch, tmp_path, client):
    """An endpoint that accepts and never answers: every request gives up after HUBDASK_RETRY_TIMEOUT
    (here 2 s; before, obstore waited its own 120 s), with a message naming the budget."""
    from support.s3server import s3_env

    _use(monkeypatch, tmp_path, client, HUBDASK_RETRY_TIMEOUT="2", **s3_env(silent_endpoint))
    for attempt in (lambda: hd.load("o/x", storage=f"s3://b-{client}/root"),
                    lambda: hd.array((4,), name="o/x", storage=f"s3://c-{client}/root"),
                    lambda: hd.ls(storage=f"s3://d-{client}/root")):
        with pytest.raises(hd.StorageError) as info:
            attempt()
        check_message(info.value, (f"-{client}/root", "did not answer", "HUBDASK_RETRY_TIMEOUT=2s"))


def test_full_disk_names_the_dataset_and_keeps_commits(tmp_path) -> None:
    """A local root on a full file system (a 512 KiB tmpfs): one StorageError naming the dataset and the
    root, and the committed version still reads as it was."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {r.stderr.decode().strip()}")
    try:
        root = str(mnt / "root")
        a = hd.array((64, 64, 64), name="o/full", dtype="float64", chunks=(1, 64, 64), codecs="none", storage=root)
        a[0] = 1.5
        c1 = a.commit("small")
        with pytest.raises(hd.StorageError) as info:
            a[:] = np.random.default_rng(0).random((64, 64, 64))
        check_message(info.value, ("o/full", root, "full", "free space"))
        assert "Errno" not in str(info.value)
        old = hd.load(f"o/full:{c1}", storage=root).read()
        assert (old[0] == 1.5).all() and (old[1:] == 0).all()
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
