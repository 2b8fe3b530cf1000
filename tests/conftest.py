"""Shared fixtures: a real S3 (moto's server in its own process) and a fault proxy in front of it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.faultproxy import FaultProxy
from support.s3server import MotoServer, s3_env


def _set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Set `env` for this test, and drop s3fs instances made under another endpoint.

    fsspec caches filesystems by constructor arguments, not by environment, so an s3fs made for
    moto would otherwise be reused by a test that goes through the fault proxy (or vice versa).
    """
    import s3fs

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 server process for the whole session (request log at `.log_path`)."""
    with MotoServer(log_dir=Path(tmp_path_factory.mktemp("moto"))) as server:
        yield server


@pytest.fixture
def s3_root(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://hubdask-test-<uuid>/root`` in a new bucket; AWS_* env vars point at moto."""
    bucket = f"hubdask-test-{uuid.uuid4().hex}"
    moto_server.make_bucket(bucket)
    _set_env(monkeypatch, moto_server.env())
    return f"s3://{bucket}/root"


@pytest.fixture
def fault_proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    """A `FaultProxy` in front of moto, no faults yet (seed 0); change them with `.set(...)`."""
    with FaultProxy(moto_server.endpoint, seed=0) as proxy:
        yield proxy


@pytest.fixture
def s3_root_faulty(s3_root: str, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> str:
    """Like `s3_root`, but clients reach moto through `fault_proxy` (same bucket)."""
    _set_env(monkeypatch, s3_env(fault_proxy.endpoint))
    return s3_root


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A chunk cache folder of this test alone (hit and miss counts start at 0)."""
    import hubdask as hd

    monkeypatch.setenv("HUBDASK_CACHE", str(tmp_path / "cache"))
    hd.cache.reset()
    yield
    hd.cache.reset()


@pytest.fixture(params=["local", "memory", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty root URL of each kind: a local folder, a memory store, and a bucket on moto."""
    if request.param == "local":
        return str(tmp_path / "root")
    if request.param == "memory":
        return f"memory://t{uuid.uuid4().hex}"
    return request.getfixturevalue("s3_root")


@pytest.fixture(params=["unsharded", "sharded"])
def layout(request: pytest.FixtureRequest):
    """How a behaviour test's array stores its objects of shape ``chunks``: ``layout(chunks)`` gives the
    keywords of hd.array, one chunk per object, or one shard per object of inner chunks half as long on
    every even axis and 1 long on every other axis longer than 1 (the same object grid, so the same keys,
    graphs, tasks and locks; more inner chunk boundaries inside each object)."""
    if request.param == "unsharded":
        return lambda chunks: {"chunks": tuple(chunks)}
    return lambda chunks: {"chunks": tuple(c // 2 if c % 2 == 0 else min(c, 1) for c in chunks),
                           "shards": tuple(chunks)}
