"""Simulated hosts: Linux network namespaces joined by a bridge, one process group per host.

    s3   10.200.N.1   moto_server (S3 over HTTP)
    sch  10.200.N.2   dask scheduler
    w1   10.200.N.3   dask worker
    w2   10.200.N.4   dask worker
    cl   10.200.N.5   the client: creates an array on s3://, has the workers write partial chunks

The bridge lives in a namespace of its own, so nothing is added to the machine's own network: every
10.200.N.y address exists only inside namespaces this test creates, and all of them (with every process
in them) are removed afterwards, also on failure. Needs root and ``ip netns``; skips otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from support.s3server import MotoServer, s3_env

pytestmark = pytest.mark.slow

HOSTS = {"s3": 1, "sch": 2, "w1": 3, "w2": 4, "cl": 5}
SCHEDULER_PORT = 8786
S3_PORT = 5000


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _namespaces_unavailable() -> str:
    """Why this machine cannot run the test, or '' if it can."""
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "the `ip` tool (iproute2) is not installed"
    probe = f"hdprobe{uuid.uuid4().hex[:6]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is not allowed here: {made.stderr.strip()}"
    try:
        bridge = _ip("-n", probe, "link", "add", "br0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"cannot create a bridge inside a namespace: {bridge.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return ""


class Hosts:
    """The namespaces, their links and the processes started in them; ``close`` removes everything."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.subnet = 10 + int(tag, 16) % 240  # any value works: the addresses never leave our namespaces
        self.ns = {h: f"hd{tag}-{h}" for h in HOSTS}
        self.switch = f"hd{tag}-sw"
        self.procs: list[subprocess.Popen] = []

    def addr(self, host: str) -> str:
        return f"10.200.{self.subnet}.{HOSTS[host]}"

    def build(self) -> None:
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for host, i in HOSTS.items():
            ns = self.ns[host]
            _ip("netns", "add", ns)
            _ip("-n", self.switch, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(host)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def run(self, host: str, cmd: list[str], log: str, env: dict[str, str]) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns[host], *cmd], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            _stop(proc)
        for ns in [*self.ns.values(), self.switch]:
            for pid in _ip("netns", "pids", ns, check=False).stdout.split():  # anything still inside
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", ns, check=False)


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            continue


class NamespacedMoto(MotoServer):
    """moto_server inside a namespace: this (root) namespace cannot reach it, so readiness is read from
    its log (werkzeug's "Running on" line) and the client in the namespace waits for it to answer."""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._proc.returncode}:\n{self.log_tail()}")
            if "Running on" in self.log_tail():
                return
            time.sleep(0.1)
        raise TimeoutError(f"moto server at {self.endpoint} did not start:\n{self.log_tail()}")


CLIENT = """
import json, sys, time, urllib.request
import numpy as np
import hubdask as hd
from distributed import Client

endpoint, scheduler, root = sys.argv[1:4]
deadline = time.monotonic() + 60
while True:  # the S3 server is on another host: wait until it answers
    try:
        urllib.request.urlopen(endpoint + "/moto-api/data.json", timeout=2).read()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
import boto3
boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="hub")

rows, cols = 64, 512
a = hd.array((rows, cols), "lab/shared", dtype="int64", chunks=(16, cols), storage=root)

def write(i):
    hd.load("lab/shared", storage=root)[i] = np.full(cols, i + 1, dtype="int64")  # a partial chunk
    return i

def lock_names(dask_scheduler):
    return sum(1 for n in dask_scheduler.extensions["semaphores"].max_leases if n.startswith("hubdask-lock-"))

with Client(scheduler, timeout="60s") as client:
    client.wait_for_workers(2, timeout=120)
    workers = sorted(client.scheduler_info()["workers"])
    futures = [client.submit(write, i, workers=[workers[i % 2]], allow_other_workers=False, pure=False)
               for i in range(rows)]
    assert sorted(client.gather(futures)) == list(range(rows))
    got = np.asarray(hd.load("lab/shared", storage=root))
    lost = [i for i in range(rows) if (got[i] != i + 1).any()]
    print("RESULT " + json.dumps({"lost": lost, "workers": workers,
                                  "lock_names": client.run_on_scheduler(lock_names)}), flush=True)
"""


@pytest.fixture
def hosts():
    why = _namespaces_unavailable()
    if why:
        pytest.skip(f"simulated hosts unavailable: {why}")
    h = Hosts()
    try:
        h.build()
        yield h
    finally:
        h.close()


def test_workers_on_two_hosts_write_partial_chunks_to_s3_without_loss(hosts, tmp_path):
    moto = NamespacedMoto(host=hosts.addr("s3"), port=S3_PORT, prefix=["ip", "netns", "exec", hosts.ns["s3"]],
                          log_dir=tmp_path)
    moto.start()  # stops the server itself if it fails to start
    try:
        env = {**os.environ, **s3_env(moto.endpoint), "PYTHONUNBUFFERED": "1",
               "HUBDASK_CACHE": str(tmp_path / "cache")}
        env.pop("HUBDASK_LOCKS", None)
        scheduler = f"tcp://{hosts.addr('sch')}:{SCHEDULER_PORT}"
        dask_cli = [sys.executable, "-m", "dask"]
        hosts.run("sch", [*dask_cli, "scheduler", "--host", hosts.addr("sch"), "--port", str(SCHEDULER_PORT),
                          "--no-dashboard"], str(tmp_path / "scheduler.log"), env)
        for w in ("w1", "w2"):
            hosts.run(w, [*dask_cli, "worker", scheduler, "--host", hosts.addr(w), "--nthreads", "2",
                          "--no-dashboard", "--name", w], str(tmp_path / f"{w}.log"), env)
        client = hosts.run("cl", [sys.executable, "-c", textwrap.dedent(CLIENT), moto.endpoint, scheduler,
                                  "s3://hub/data"], str(tmp_path / "client.log"), env)
        try:
            client.wait(timeout=180)
        except subprocess.TimeoutExpired:
            pass
        logs = {name: (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:]
                for name in ("client", "scheduler", "w1", "w2")}
        result = [line for line in logs["client"].splitlines() if line.startswith("RESULT ")]
        assert client.returncode == 0 and result, f"client failed:\n{json.dumps(logs, indent=1)}"
        outcome = json.loads(result[-1][len("RESULT "):])
        assert outcome["lost"] == []
        assert outcome["lock_names"] > 0  # the workers' chunk locks went through the scheduler host
        assert sorted(w.split("//")[1].split(":")[0] for w in outcome["workers"]) == [hosts.addr("w1"),
                                                                                     hosts.addr("w2")]
        # the S3 server saw chunk writes from both worker hosts
        puts = [line for line in moto.log_lines() if '"PUT /hub/data/lab/shared/' in line and '/nodes/' in line]
        writers = {line.split()[0] for line in puts}
        print("chunk PUTs per host:", {w: sum(line.startswith(w + " ") for line in puts) for w in sorted(writers)})
        assert {hosts.addr("w1"), hosts.addr("w2")} <= writers, writers
    finally:
        moto.stop()
