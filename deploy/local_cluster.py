"""The compose layout on this machine, without containers: moto's S3 server instead of MinIO, a
``dask scheduler`` and two ``dask worker`` processes, all with the settings of ``hubdask.env`` (or
``hubdask.env.example``) except the endpoint. Runs a job that writes a hub array through the workers
(``hd.store``, then concurrent partial-chunk writes under distributed locks), reads it back and checks
every value, commits, and tears everything down. Exit status 0 when every check held.

    python deploy/local_cluster.py [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments and blank lines skipped), as docker compose's env_file reads them."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Started processes (each in its own session), stopped in reverse order: TERM, then KILL."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.procs = logs, []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.procs.append((name, proc))
        print(f"started {name} (pid {proc.pid})", flush=True)
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            print(f"stopped {name} (pid {proc.pid})", flush=True)


def wait_http(url: str, procs: Processes, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        procs.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer in {timeout:.0f}s")
            time.sleep(0.2)


def job(address: str, env: dict[str, str]) -> None:
    """Write, read and check a hub array through the cluster (runs in this process as the client)."""
    os.environ.update(env)
    import dask.array as da
    import numpy as np
    from distributed import Client, get_task_stream

    import hubdask as hd

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(2, timeout=120)
        workers = sorted(client.scheduler_info()["workers"])
        print(f"cluster: {len(workers)} workers {workers}", flush=True)
        name = "deploy/check"
        if name in hd.ls("deploy"):
            hd.delete(name)
        shape, chunks = (16, 96, 96), (4, 48, 48)
        expected = (np.arange(np.prod(shape), dtype=np.int64).reshape(shape) % 251).astype(np.uint8)
        x = (da.arange(np.prod(shape), chunks=4096, dtype=np.int64).reshape(shape) % 251).astype(np.uint8)
        with get_task_stream(client) as ts:
            hd.store(x.rechunk((8, 32, 32)), name, chunks=chunks, progress=False)
        writers = {t["worker"] for t in ts.data}
        assert len(writers) == 2, f"expected both workers to write, got {writers}"
        print(f"hd.store: {np.prod([-(-s // c) for s, c in zip(shape, chunks)])} chunks written by "
              f"{len(writers)} workers to {env['HUBDASK_ROOT']}/{name}", flush=True)

        def write_row(i: int) -> int:  # every task writes one row of the same chunks: locks serialize them
            import hubdask as hd

            hd.load("deploy/check")[15, i] = 255 - i
            return i

        rows = list(range(0, 96, 4))
        client.gather(client.map(write_row, rows))
        for i in rows:
            expected[15, i] = 255 - i

        b = hd.load(name)
        total = int(b.to_dask().astype("int64").sum().compute())
        assert total == int(expected.sum(dtype=np.int64)), (total, int(expected.sum(dtype=np.int64)))
        assert np.array_equal(np.asarray(b), expected)
        print(f"read back: sum {total} on the workers and every value in the client match", flush=True)
        cid = b.commit("written by the local cluster")
        assert hd.load(f"{name}:{cid}").log()[0].message == "written by the local cluster"
        print(f"committed {cid}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env-file", type=Path, help="default: deploy/hubdask.env, else deploy/hubdask.env.example")
    p.add_argument("--keep-logs", type=Path, help="write the processes' logs here (default: a temp dir)")
    args = p.parse_args(argv)
    env_file = args.env_file or next(f for f in (HERE / "hubdask.env", HERE / "hubdask.env.example") if f.exists())
    settings = read_env_file(env_file)
    logs = args.keep_logs or Path(tempfile.mkdtemp(prefix="hubdask-local-cluster-"))
    logs.mkdir(parents=True, exist_ok=True)
    s3_port, sched_port, dash_port = free_port(), free_port(), free_port()
    endpoint = f"http://127.0.0.1:{s3_port}"
    env = {**os.environ, **settings, "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true",
           "HUBDASK_CACHE": str(logs / "cache"), "PYTHONUNBUFFERED": "1"}
    env.pop("HUBDASK_S3_CLIENT", None)
    print(f"settings from {env_file.name}; logs in {logs}", flush=True)
    procs = Processes(logs)
    dask_cmd = [sys.executable, "-m", "dask"]  # the `dask` command of this interpreter
    try:
        procs.start("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], env)
        wait_http(f"{endpoint}/moto-api/data.json", procs)
        import s3fs

        s3fs.S3FileSystem(endpoint_url=endpoint, key=env["AWS_ACCESS_KEY_ID"],
                          secret=env["AWS_SECRET_ACCESS_KEY"]).mkdir(settings.get("HUBDASK_BUCKET", "hub"))
        address = f"tcp://127.0.0.1:{sched_port}"
        procs.start("scheduler", [*dask_cmd, "scheduler", "--host", "127.0.0.1", "--port", str(sched_port),
                                  "--dashboard-address", f"127.0.0.1:{dash_port}"], env)
        wait_http(f"http://127.0.0.1:{dash_port}/health", procs)
        for k in (1, 2):
            procs.start(f"worker-{k}", [*dask_cmd, "worker", address, "--name", f"worker-{k}", "--nthreads", "2",
                                         "--host", "127.0.0.1", "--no-dashboard", "--memory-limit", "1GiB"], env)
        job(address, {k: v for k, v in env.items() if k.startswith(("AWS_", "HUBDASK_"))})
        procs.check_alive()
        print("local cluster check: OK", flush=True)
        return 0
    except Exception as exc:
        print(f"local cluster check FAILED: {type(exc).__name__}: {exc} (logs in {logs})", file=sys.stderr, flush=True)
        return 1
    finally:
        procs.stop()


if __name__ == "__main__":
    sys.exit(main())
