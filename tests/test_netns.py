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

import numpy as np
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


BUCKET_READY = """
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
"""  # the clients' first lines after their arguments: the S3 server answers, the bucket exists

CLIENT = """
import json, sys, time, urllib.request
import numpy as np
import hubdask as hd
from distributed import Client

endpoint, scheduler, root = sys.argv[1:4]
""" + BUCKET_READY + """

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


APPENDER = """
import json, sys, time, urllib.request
import numpy as np
import hubdask as hd

endpoint, root, first, batches, rows = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
deadline = time.monotonic() + 120
while True:  # the dataset is made by the client on another host
    try:
        a = hd.load("lab/grow", storage=root)
        break
    except Exception:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
regions = []
for b in range(first, first + batches):
    region = a.append(np.full((rows, 4), b, dtype="int64"))
    regions.append([region[0].start, region[0].stop])
print("RESULT " + json.dumps(regions), flush=True)
"""

APPEND_CLIENT = """
import json, sys, time, urllib.request
import numpy as np
import hubdask as hd
from distributed import Client

endpoint, scheduler, root, batches, rows = sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:6])
""" + BUCKET_READY + """
hd.array((0, 4), "lab/grow", dtype="int64", chunks=(8, 4), storage=root)

def append(b):  # on a worker: coordinated through the scheduler's locks
    region = hd.load("lab/grow", storage=root).append(np.full((rows, 4), b, dtype="int64"))
    return b, [region[0].start, region[0].stop]

with Client(scheduler, timeout="60s") as client:
    client.wait_for_workers(2, timeout=120)
    workers = sorted(client.scheduler_info()["workers"])
    futures = [client.submit(append, 1000 + i, workers=[workers[i % 2]], allow_other_workers=False, pure=False)
               for i in range(batches)]
    done = dict(client.gather(futures))
print("RESULT " + json.dumps({str(b): r for b, r in done.items()}), flush=True)
"""


def test_appenders_on_four_hosts_each_land_in_their_own_region(hosts, tmp_path):
    """Appenders on four simulated hosts at once into one S3 array: dask tasks on two worker hosts
    (coordinated by the scheduler host's locks) and plain processes on two more hosts with no scheduler
    (the conditional writes of the array's metadata alone). Every batch lands exactly once, in the region
    its append returned, none overlaps, and the final length is the sum."""
    moto = NamespacedMoto(host=hosts.addr("s3"), port=S3_PORT, prefix=["ip", "netns", "exec", hosts.ns["s3"]],
                          log_dir=tmp_path)
    moto.start()
    rows, batches = 3, 8  # 3 rows into chunks of 8: most appends fill a partial last chunk
    try:
        env = {**os.environ, **s3_env(moto.endpoint), "PYTHONUNBUFFERED": "1"}
        env.pop("HUBDASK_LOCKS", None)
        scheduler = f"tcp://{hosts.addr('sch')}:{SCHEDULER_PORT}"
        dask_cli = [sys.executable, "-m", "dask"]
        hosts.run("sch", [*dask_cli, "scheduler", "--host", hosts.addr("sch"), "--port", str(SCHEDULER_PORT),
                          "--no-dashboard"], str(tmp_path / "scheduler.log"), {**env, "HUBDASK_CACHE": str(tmp_path / "c0")})
        for w in ("w1", "w2"):
            hosts.run(w, [*dask_cli, "worker", scheduler, "--host", hosts.addr(w), "--nthreads", "2",
                          "--no-dashboard", "--name", w], str(tmp_path / f"{w}.log"),
                      {**env, "HUBDASK_CACHE": str(tmp_path / f"cache-{w}")})
        client = hosts.run("cl", [sys.executable, "-c", textwrap.dedent(APPEND_CLIENT), moto.endpoint, scheduler,
                                  "s3://hub/data", str(batches), str(rows)], str(tmp_path / "client.log"),
                           {**env, "HUBDASK_CACHE": str(tmp_path / "cache-cl")})
        plain = {host: hosts.run(host, [sys.executable, "-c", textwrap.dedent(APPENDER), moto.endpoint, "s3://hub/data",
                                        str(first), str(batches), str(rows)], str(tmp_path / f"app-{host}.log"),
                                 {**env, "HUBDASK_CACHE": str(tmp_path / f"cache-{host}")})
                 for host, first in (("s3", 2000), ("sch", 3000))}  # hosts without a dask client
        for proc in (client, *plain.values()):
            try:
                proc.wait(timeout=240)
            except subprocess.TimeoutExpired:
                pass
        names = ["client", *(f"app-{h}" for h in plain)]
        logs = {n: (tmp_path / f"{n}.log").read_text(errors="replace")[-3000:] for n in names}
        results = {n: [line for line in logs[n].splitlines() if line.startswith("RESULT ")] for n in names}
        assert all(results.values()) and client.returncode == 0, f"an appender failed:\n{json.dumps(logs, indent=1)}"
        regions = {int(b): r for b, r in json.loads(results["client"][-1][len("RESULT "):]).items()}
        for host, first in (("s3", 2000), ("sch", 3000)):
            got = json.loads(results[f"app-{host}"][-1][len("RESULT "):])
            regions.update({first + i: r for i, r in enumerate(got)})
        assert len(regions) == 3 * batches
        spans = sorted(regions.values())
        assert spans == [[i * rows, (i + 1) * rows] for i in range(3 * batches)], sorted(regions.items(), key=lambda kv: kv[1])  # no overlap, no hole
        check = subprocess.run(["ip", "netns", "exec", hosts.ns["cl"], sys.executable, "-c", textwrap.dedent("""
            import json, sys, numpy as np, hubdask as hd
            print(json.dumps(np.asarray(hd.load("lab/grow", storage=sys.argv[1])).tolist()))
            """), "s3://hub/data"], capture_output=True, text=True, timeout=120,
            env={**env, "HUBDASK_CACHE": str(tmp_path / "cache-check")})
        assert check.returncode == 0, check.stderr[-3000:]
        got = np.asarray(json.loads(check.stdout.strip().splitlines()[-1]))
        assert got.shape == (3 * batches * rows, 4)
        for b, (start, stop) in regions.items():
            assert (got[start:stop] == b).all(), (b, start, stop, got[start:stop])
    finally:
        moto.stop()
