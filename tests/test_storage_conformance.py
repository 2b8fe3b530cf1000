"""One conformance suite for every storage backend: the Root primitives the versioning layer relies on.

Parametrized over a local folder, memory://, and S3 (moto's server in its own process, over HTTP)
through obstore (the hot path) and through s3fs (``HUBDASK_S3_CLIENT=s3fs``, the fallback).
"""

from __future__ import annotations

import asyncio
import threading
import uuid

import numpy as np
import pytest

import hubdask as hd
from hubdask.storage import open_root
from hubdask.storage.root import sync

BACKENDS = ["local", "memory", "s3-obstore", "s3-s3fs"]


@pytest.fixture(params=BACKENDS)
def root(request, tmp_path, monkeypatch):
    kind = request.param
    if kind == "local":
        return open_root(str(tmp_path / "root"))
    if kind == "memory":
        return open_root(f"memory://conformance-{uuid.uuid4().hex}")
    url = request.getfixturevalue("s3_root")
    monkeypatch.setenv("HUBDASK_S3_CLIENT", kind.split("-")[1])
    r = open_root(url)
    expected = "ObjectStore" if kind == "s3-obstore" else "FsspecStore"
    assert type(r.store).__name__ == expected
    return r


def test_get_put_overwrite_and_missing(root):
    assert root.get("ds/a") is None
    root.put("ds/a", b"one")
    assert root.get("ds/a") == b"one"
    root.put("ds/a", b"two, longer")
    assert root.get("ds/a") == b"two, longer"
    root.put("ds/empty", b"")
    assert root.get("ds/empty") == b""  # zero bytes (a tombstone) is not 'absent'
    assert sync(root.fetch_async("ds/missing")) is None
    assert bytes(sync(root.fetch_async("ds/a"))) == b"two, longer"


def test_create_is_exclusive(root):
    assert root.create("ds/refs/x", b"first") is True
    assert root.create("ds/refs/x", b"second") is False
    assert root.get("ds/refs/x") == b"first"


def test_create_race_has_one_winner(root):
    """Eight threads create the same key at once: exactly one wins and its bytes stay."""
    results, barrier = {}, threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        results[i] = root.create("ds/refs/heads/main/000000000001", f"writer {i}".encode())

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, ok in results.items() if ok]
    assert len(winners) == 1
    assert root.get("ds/refs/heads/main/000000000001") == f"writer {winners[0]}".encode()


def test_list_prefix_dir_and_delete(root):
    for key in ("ds/nodes/n1/c/0/0", "ds/nodes/n1/c/0/1", "ds/nodes/n2/zarr.json", "ds/refs/tags/v1", "other/x"):
        root.put(key, key.encode())
    assert sorted(root.list_prefix("ds/nodes/n1/")) == ["ds/nodes/n1/c/0/0", "ds/nodes/n1/c/0/1"]
    assert sorted(k.rstrip("/") for k in root.list_dir("ds/nodes/")) == ["n1", "n2"]
    assert sorted(k.rstrip("/") for k in root.list_dir("ds/")) == ["nodes", "refs"]
    assert root.list_prefix("ds/nothing/") == []
    root.delete("ds/refs/tags/v1")
    assert root.get("ds/refs/tags/v1") is None
    assert root.delete_prefix("ds/") == 3
    assert root.list_prefix("ds/") == []
    assert root.get("other/x") == b"other/x"


def test_many_concurrent_gets_and_puts(root):
    """The data path's pattern: many PUTs then GETs in flight at once on one event loop."""
    blobs = {f"ds/nodes/n/c/{i}": np.random.default_rng(i).bytes(1000 + i) for i in range(40)}

    async def run():
        await asyncio.gather(*(root.put_async(k, v) for k, v in blobs.items()))
        return await asyncio.gather(*(root.fetch_async(k) for k in blobs))

    got = sync(run())
    assert [bytes(g) for g in got] == list(blobs.values())


def test_array_round_trip_through_the_chunk_engine(root):
    """A whole array written and read through hubdask on this backend (partial chunks included)."""
    data = np.random.default_rng(3).integers(0, 1000, (37, 29), dtype=np.int32)
    a = hd.array(data.shape, "conf/arr", dtype="int32", chunks=(8, 7), storage=root)
    a[...] = data
    a[3:20, 5] = -1
    data[3:20, 5] = -1
    np.testing.assert_array_equal(np.asarray(hd.load("conf/arr", storage=root)), data)
    a.commit("c1")
    b = hd.load("conf/arr", storage=root)
    np.testing.assert_array_equal(np.asarray(b[::-3, 4:]), data[::-3, 4:])
    assert int(b.sum().compute()) == int(data.astype(np.int64).sum())


def test_s3_payload_is_hashed_only_over_plain_http(monkeypatch):
    """As botocore: over TLS the body is not hashed for the signature (TLS protects it; saves a SHA-256
    pass over every byte written); over plain HTTP the signature covers the body."""
    from hubdask.storage.root import _obstore_s3

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)

    assert _obstore_s3("s3://b/p", {"endpoint_url": "https://s3.example"}).store.config.get("unsigned_payload") == "true"
    assert _obstore_s3("s3://b/p", {}).store.config.get("unsigned_payload") == "true"  # AWS itself: https
    assert "unsigned_payload" not in _obstore_s3("s3://b/p", {"endpoint_url": "http://s3.example"}).store.config
