"""A real S3 endpoint for tests: moto's server in its own process, reached over HTTP."""

from __future__ import annotations

import ctypes
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, Sequence

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REQUEST_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3})')
_PR_SET_PDEATHSIG = 1


class LoggedRequest(NamedTuple):
    """One request line of the server's access log."""

    method: str
    path: str
    status: int


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment variables that point boto/s3fs and obstore clients at `endpoint`."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ALLOW_HTTP": "true",
    }


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent thread dies (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now on `host` (on loopback when `host` is not ours)."""
    for addr in (host, "127.0.0.1"):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((addr, 0))
                return int(sock.getsockname()[1])
        except OSError:
            continue
    raise OSError(f"no free port on {host}")


class MotoServer:
    """moto's S3 server as a subprocess (`moto_server -H HOST -p PORT`).

    `prefix` is prepended to the command, e.g. ``["ip", "netns", "exec", "ns1"]`` to run the
    server inside a network namespace. Its request log (werkzeug access lines such as
    ``"GET /bucket/key HTTP/1.1" 200``) goes to `log_path`. With `die_with_parent` the server
    gets SIGTERM when the thread that started it exits, so a killed test run leaks no server.
    `wait_for` is how `start` knows the server is up: it answers HTTP here, or (for a server this
    network namespace cannot reach) its log says "Running on". Without `log_dir` the log lives in a
    temporary folder that `stop` removes.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        prefix: Sequence[str] = (),
        log_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 30.0,
        die_with_parent: bool = True,
        wait_for: Literal["http", "log"] = "http",
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.prefix = list(prefix)
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self.wait_for = wait_for
        self._own_log_dir = log_dir is None
        log_root = Path(tempfile.mkdtemp(prefix="moto-")) if log_dir is None else Path(log_dir)
        log_root.mkdir(parents=True, exist_ok=True)
        self.log_path: Path = log_root / f"moto-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the server (None before start)."""
        return self._proc.pid if self._proc else None

    def command(self) -> list[str]:
        """The command line that starts the server."""
        return [*self.prefix, sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]

    def start(self) -> MotoServer:
        """Start the server and wait until it is up (see `wait_for`)."""
        if self._proc is not None:
            return self
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._proc.returncode}:\n{self.log_tail()}")
            if self._is_up():
                return
            time.sleep(0.05)
        raise TimeoutError(f"moto server at {self.endpoint} did not start:\n{self.log_tail()}")

    def _is_up(self) -> bool:
        if self.wait_for == "log":
            return "Running on" in self.log_tail()
        try:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=1.0)
            conn.request("GET", "/moto-api/data.json")
            conn.getresponse().read()
            conn.close()
            return True
        except OSError:
            return False

    def log_tail(self, n: int = 40) -> str:
        """The last `n` lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_lines(self) -> list[str]:
        """Every line of the server's log so far, without colour codes."""
        return _ANSI.sub("", self.log_path.read_text(errors="replace")).splitlines()

    def requests(self) -> list[LoggedRequest]:
        """Every request the server has logged so far (method, path, status)."""
        found = (_REQUEST_LINE.search(line) for line in self.log_lines())
        return [LoggedRequest(m["method"], m["path"], int(m["status"])) for m in found if m]

    def env(self) -> dict[str, str]:
        """Environment variables a client process needs to reach this server."""
        return s3_env(self.endpoint)

    def client(self) -> Any:
        """A boto3 S3 client for this server (made once)."""
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                region_name=REGION,
            )
        return self._client

    def make_bucket(self, name: str) -> None:
        """Create bucket `name` (no error if it already exists)."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def reset(self) -> None:
        """Drop every bucket and object (moto's ``POST /moto-api/reset``)."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after `timeout`)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._own_log_dir:
            shutil.rmtree(self.log_path.parent, ignore_errors=True)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._proc and self._proc.poll() is None else "stopped"
        return f"MotoServer({self.endpoint}, {state})"
