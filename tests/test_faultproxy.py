"""The fault proxy itself, driven by plain s3fs (and raw HTTP) against moto's server."""

from __future__ import annotations

import http.client
import time
import uuid

import aiobotocore.session
import numpy as np
import pytest
import s3fs

from support.faultproxy import FaultProxy, Faults
from support.s3server import ACCESS_KEY, SECRET_KEY, MotoServer

MiB = 2**20
_SESSION = aiobotocore.session.AioSession()  # shared: loads botocore's models once


def make_fs(endpoint: str, retries: int = 1) -> s3fs.S3FileSystem:
    """A fresh s3fs on `endpoint`: botocore makes one attempt, s3fs `retries` (short backoff)."""
    fs = s3fs.S3FileSystem(
        endpoint_url=endpoint,
        key=ACCESS_KEY,
        secret=SECRET_KEY,
        skip_instance_cache=True,
        session=_SESSION,
        config_kwargs={"retries": {"total_max_attempts": 1, "mode": "standard"}},
    )
    fs.retries = retries
    return fs


@pytest.fixture
def bucket(moto_server: MotoServer) -> str:
    """A new, empty bucket."""
    name = f"faultproxy-{uuid.uuid4().hex[:12]}"
    moto_server.make_bucket(name)
    return name


@pytest.fixture
def direct(moto_server: MotoServer) -> s3fs.S3FileSystem:
    """An s3fs that reaches moto without the proxy: the ground truth."""
    return make_fs(moto_server.endpoint)


def payload(n: int, seed: int = 0) -> bytes:
    """`n` random bytes."""
    return np.random.default_rng(seed).bytes(n)


def test_round_trip_without_faults(fault_proxy: FaultProxy, direct: s3fs.S3FileSystem, bucket: str) -> None:
    fs = make_fs(fault_proxy.endpoint)
    small, big = payload(1000, 1), payload(6 * MiB, 2)
    fs.pipe_file(f"{bucket}/small", small)
    with fs.open(f"{bucket}/big", "wb", block_size=5 * MiB) as f:  # multipart upload
        f.write(big)

    assert fs.cat_file(f"{bucket}/small") == small
    assert fs.cat_file(f"{bucket}/big") == big
    assert fs.cat_file(f"{bucket}/big", start=12345, end=3 * MiB) == big[12345 : 3 * MiB]
    assert sorted(fs.ls(bucket, refresh=True)) == [f"{bucket}/big", f"{bucket}/small"]
    assert direct.cat_file(f"{bucket}/big") == big

    counts = fault_proxy.counters
    assert counts["requests"] == len(fault_proxy.events) >= 7
    assert counts["errors"] == counts["resets"] == counts["truncations"] == counts["delayed"] == 0
    assert counts["bytes_up"] > len(small) + len(big)
    assert counts["bytes_down"] > len(small) + len(big) + 3 * MiB - 12345
    assert counts["connections"] < counts["requests"]  # clients keep connections alive


def test_every_503_fails_the_client_and_never_reaches_the_server(
    moto_server: MotoServer, fault_proxy: FaultProxy, direct: s3fs.S3FileSystem, bucket: str
) -> None:
    direct.pipe_file(f"{bucket}/there", b"data")
    fault_proxy.set(error_rate=1.0)
    fs = make_fs(fault_proxy.endpoint)

    with pytest.raises(OSError):
        fs.pipe_file(f"{bucket}/new", b"never stored")
    with pytest.raises(OSError):
        fs.cat_file(f"{bucket}/there")

    counts = fault_proxy.counters
    assert counts["errors"] == counts["requests"] >= 2
    assert not direct.exists(f"{bucket}/new")
    assert not [r for r in moto_server.requests() if r.method == "PUT" and r.path == f"/{bucket}/new"]


def test_503_is_a_proper_s3_error_that_s3fs_retries(
    moto_server: MotoServer, fault_proxy: FaultProxy, direct: s3fs.S3FileSystem, bucket: str
) -> None:
    # A 503 to HEAD has no body to say SlowDown, so s3fs (rightly) leaves its retry to botocore,
    # which is off here: only GET and PUT are refused.
    fault_proxy.set(error_rate=0.4, match=r"^(GET|PUT) ")
    fs = make_fs(fault_proxy.endpoint, retries=20)
    blobs = {f"{bucket}/k{i}": payload(1000 + i, i) for i in range(10)}
    for path, data in blobs.items():
        fs.pipe_file(path, data)
    for path, data in blobs.items():
        assert fs.cat_file(path) == data

    counts = fault_proxy.counters
    assert counts["errors"] > 0
    reached = [r for r in moto_server.requests() if r.path.startswith(f"/{bucket}/")]
    assert len(reached) == counts["requests"] - counts["errors"]  # refused ones never reach moto
    assert direct.cat_file(f"{bucket}/k9") == blobs[f"{bucket}/k9"]


def test_latency_is_added_per_request(
    fault_proxy: FaultProxy, direct: s3fs.S3FileSystem, bucket: str
) -> None:
    direct.pipe_file(f"{bucket}/obj", b"x")
    fs = make_fs(fault_proxy.endpoint)
    fs.cat_file(f"{bucket}/obj")  # open the connection outside the timing

    fault_proxy.set(latency=0.05)
    start = time.perf_counter()
    fs.cat_file(f"{bucket}/obj")
    assert time.perf_counter() - start >= 0.05

    fault_proxy.reset_counters()
    start = time.perf_counter()
    for _ in range(3):
        fs.cat_file(f"{bucket}/obj")
    requests = fault_proxy.counters["requests"]
    assert time.perf_counter() - start >= 0.05 * requests
    assert fault_proxy.counters["delayed"] == requests >= 3

    fault_proxy.set(latency=0.05, jitter=0.02)
    start = time.perf_counter()
    fs.cat_file(f"{bucket}/obj")
    assert time.perf_counter() - start >= 0.03


def test_bandwidth_cap(fault_proxy: FaultProxy, direct: s3fs.S3FileSystem, bucket: str) -> None:
    data = payload(MiB)
    direct.pipe_file(f"{bucket}/obj", data)
    fault_proxy.set(bandwidth=4 * MiB)
    start = time.perf_counter()
    assert make_fs(fault_proxy.endpoint).cat_file(f"{bucket}/obj") == data
    assert time.perf_counter() - start >= 0.24


@pytest.mark.parametrize("fault", ["reset_rate", "truncate_rate"])
def test_broken_responses_fail_the_request(
    fault: str, fault_proxy: FaultProxy, direct: s3fs.S3FileSystem, bucket: str
) -> None:
    direct.pipe_file(f"{bucket}/obj", payload(MiB))
    fault_proxy.set(**{fault: 1.0, "reset_phase": "response"})
    with pytest.raises(Exception):
        make_fs(fault_proxy.endpoint).cat_file(f"{bucket}/obj")
    counter = "resets" if fault == "reset_rate" else "truncations"
    assert fault_proxy.counters[counter] == fault_proxy.counters["requests"] >= 1


def test_reset_during_upload_never_stores_the_object(
    fault_proxy: FaultProxy, direct: s3fs.S3FileSystem, bucket: str
) -> None:
    fault_proxy.set(reset_rate=1.0, reset_phase="request")
    with pytest.raises(Exception):
        make_fs(fault_proxy.endpoint).pipe_file(f"{bucket}/obj", payload(MiB))
    assert fault_proxy.counters["resets"] >= 1
    assert not direct.exists(f"{bucket}/obj")


def test_reset_of_the_response_keeps_the_write_the_server_did(
    fault_proxy: FaultProxy, direct: s3fs.S3FileSystem, bucket: str
) -> None:
    fault_proxy.set(reset_phase="response")
    fault_proxy.inject("reset", "reset")  # aiohttp itself resends an idempotent request once
    with pytest.raises(Exception):
        make_fs(fault_proxy.endpoint).pipe_file(f"{bucket}/obj", b"stored anyway")
    assert [e.fault for e in fault_proxy.events] == ["reset", "reset"]
    assert direct.cat_file(f"{bucket}/obj") == b"stored anyway"


def test_clients_with_retries_get_exact_data_through_every_fault(
    fault_proxy: FaultProxy, direct: s3fs.S3FileSystem, bucket: str
) -> None:
    fault_proxy.set(error_rate=0.1, reset_rate=0.15, truncate_rate=0.15, match=r"^(GET|PUT) ")
    fs = make_fs(fault_proxy.endpoint, retries=20)
    blobs = {f"{bucket}/k{i}": payload(50_000 * (i + 1), i) for i in range(8)}
    for path, data in blobs.items():
        fs.pipe_file(path, data)
    for path, data in blobs.items():
        assert fs.cat_file(path) == data
        assert direct.cat_file(path) == data
    counts = fault_proxy.counters
    assert counts["errors"] > 0 and counts["resets"] > 0 and counts["truncations"] > 0


def test_match_limits_faults_to_matching_requests(
    fault_proxy: FaultProxy, direct: s3fs.S3FileSystem, bucket: str
) -> None:
    direct.pipe_file(f"{bucket}/obj", b"readable")
    fault_proxy.set(error_rate=1.0, match=r"^PUT ")
    fs = make_fs(fault_proxy.endpoint)
    assert fs.cat_file(f"{bucket}/obj") == b"readable"
    with pytest.raises(OSError):
        fs.pipe_file(f"{bucket}/obj", b"overwritten")
    assert direct.cat_file(f"{bucket}/obj") == b"readable"
    assert {e.method for e in fault_proxy.events if e.fault == "error"} == {"PUT"}


def raw_statuses(proxy: FaultProxy, n: int) -> list[int]:
    """Send `n` GETs of a missing bucket through `proxy` (404 unless refused with 503)."""
    statuses = []
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
    for _ in range(n):
        conn.request("GET", "/faultproxy-no-such-bucket")
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
        if response.will_close:
            conn.close()
            conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
    conn.close()
    return statuses


def test_counters_and_events_are_exact_and_seeded(moto_server: MotoServer) -> None:
    with FaultProxy(moto_server.endpoint, seed=7, error_rate=0.5) as proxy:
        statuses = raw_statuses(proxy, 40)
        counts, events = proxy.counters, proxy.events
        proxy.reset_counters()
        assert proxy.counters["requests"] == 0 and proxy.events == []
    assert counts["requests"] == len(events) == 40
    assert counts["errors"] == statuses.count(503) == sum(e.fault == "error" for e in events)
    assert 0 < statuses.count(503) < 40 and statuses.count(404) + statuses.count(503) == 40

    with FaultProxy(moto_server.endpoint, seed=7, error_rate=0.5) as again:
        assert raw_statuses(again, 40) == statuses  # same seed, same faults


def test_injected_faults_come_first_and_in_order(fault_proxy: FaultProxy) -> None:
    fault_proxy.inject("error", "ok", "truncate", "error")
    assert raw_statuses(fault_proxy, 2) == [503, 404]
    conn = http.client.HTTPConnection(fault_proxy.host, fault_proxy.port, timeout=10)
    conn.request("GET", "/faultproxy-no-such-bucket")
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.getresponse().read()
    conn.close()
    assert raw_statuses(fault_proxy, 2) == [503, 404]
    assert [e.fault for e in fault_proxy.events] == ["error", "ok", "truncate", "error", "ok"]
    with pytest.raises(ValueError):
        fault_proxy.inject("explode")  # type: ignore[arg-type]


def test_settings_are_validated_and_changed_at_runtime(fault_proxy: FaultProxy) -> None:
    with pytest.raises(ValueError):
        Faults(error_rate=0.7, reset_rate=0.5)
    with pytest.raises(ValueError):
        fault_proxy.set(latency=-1)
    assert fault_proxy.set(error_rate=1.0).error_rate == 1.0
    assert raw_statuses(fault_proxy, 2) == [503, 503]
    fault_proxy.clear()
    assert raw_statuses(fault_proxy, 2) == [404, 404]
