"""Shared benchmark helpers: timing, the guarded hubdask import, the moto S3 server, result tables.

One mechanism for every benchmark script in this folder; nothing here is part of the hubdask package.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPO = HERE.parent
MB = 2**20


# ---------------------------------------------------------------------------------------------------
# hubdask, guarded: the benchmarks run (and report n/a) before the package exists or while it is broken


HUBDASK_API = ("array", "load", "store")


def import_hubdask(needs: tuple[str, ...] = HUBDASK_API) -> tuple[Any, str]:
    """(module, "") if ``import hubdask`` works and has the public names ``needs``, else
    (None, one-line reason)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        import hubdask  # noqa: PLC0415
    except Exception as exc:  # anything: a half-written package must not stop the peers' figures
        return None, f"import hubdask failed: {type(exc).__name__}: {short(exc)}"
    missing = [n for n in needs if not hasattr(hubdask, n)]
    if missing:
        return None, f"hubdask has no {', '.join(missing)} yet"
    return hubdask, ""


def require_hubdask(needs: tuple[str, ...] = HUBDASK_API) -> Any:
    """The hubdask module, or exit with the reason (for benchmarks that measure nothing without it)."""
    hd, why = import_hubdask(needs)
    if hd is None:
        raise SystemExit(f"hubdask unavailable: {why}")
    return hd


def short(exc: BaseException | str, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------------
# timing


@dataclass
class Measure:
    """One (backend, tool, op) figure. ``status`` is "ok", "n/a" or "error"; ``note`` says why."""

    backend: str
    tool: str
    op: str  # "write" | "read"
    nbytes: int  # logical (uncompressed) bytes moved per run
    status: str = "ok"
    note: str = ""
    times: list[float] = field(default_factory=list)

    @property
    def best(self) -> float | None:
        return min(self.times) if self.times else None

    @property
    def mbps(self) -> float | None:
        return self.nbytes / self.best / MB if self.status == "ok" and self.best else None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["best_s"] = self.best
        d["mb_per_s"] = self.mbps
        return d


def measure(
    backend: str,
    tool: str,
    op: str,
    nbytes: int,
    run: Callable[[], Any],
    *,
    repeats: int = 3,
    setup: Callable[[], Any] | None = None,
    check: Callable[[Any], None] | None = None,
    verbose: bool = True,
) -> Measure:
    """Best of ``repeats`` timed calls of ``run`` (``setup`` runs untimed before each; ``check`` runs
    untimed on the last result). Any exception becomes an "error" Measure rather than a crash."""
    m = Measure(backend, tool, op, nbytes)
    try:
        result = None
        for _ in range(repeats):
            if setup is not None:
                setup()
            result = None
            gc.collect()
            t0 = time.perf_counter()
            result = run()
            m.times.append(time.perf_counter() - t0)
        if check is not None:
            check(result)
        del result
    except Exception as exc:
        m.status, m.note = "error", f"{type(exc).__name__}: {short(exc)}"
        if os.environ.get("BENCH_TRACEBACK"):
            traceback.print_exc()
    if verbose:
        if m.status == "ok":
            runs = " ".join(f"{t:.2f}" for t in m.times)
            print(f"  {backend:6} {tool:34} {op:5} {m.mbps:9.1f} MB/s   (runs s: {runs})", flush=True)
        else:
            print(f"  {backend:6} {tool:34} {op:5} {m.status}: {m.note}", flush=True)
    return m


def interleaved(specs: list[dict], repeats: int = 3, verbose: bool = True) -> list[Measure]:
    """``measure(**spec)`` for each spec, one run of each in turn, ``repeats`` rounds: figures to be
    compared with each other (a ratio) see the same machine noise. One merged Measure per spec."""
    rounds = [[measure(**spec, repeats=1, verbose=False) for spec in specs] for _ in range(repeats)]
    merged = []
    for i in range(len(specs)):
        group = [r[i] for r in rounds]
        m = group[0]
        m.times = [t for g in group for t in g.times]
        bad = [g for g in group if g.status != "ok"]
        if bad:
            m.status, m.note = bad[0].status, bad[0].note
        if verbose:
            if m.status == "ok":
                print(f"  {m.backend:6} {m.tool:34} {m.op:5} {m.mbps:9.1f} MB/s   (runs s: "
                      f"{' '.join(f'{t:.2f}' for t in m.times)})", flush=True)
            else:
                print(f"  {m.backend:6} {m.tool:34} {m.op:5} {m.status}: {m.note}", flush=True)
        merged.append(m)
    return merged


def round_ratio(a: Measure, b: Measure) -> float | None:
    """How much faster ``a`` ran than ``b`` (> 1: faster), the median over the rounds of ``interleaved``
    (each round's two runs saw about the same machine load)."""
    import statistics  # noqa: PLC0415

    pairs = [tb / ta for ta, tb in zip(a.times, b.times) if ta > 0]
    return statistics.median(pairs) if a.status == b.status == "ok" and pairs else None


def not_available(backend: str, tool: str, op: str, nbytes: int, why: str, verbose: bool = True) -> Measure:
    m = Measure(backend, tool, op, nbytes, status="n/a", note=why)
    if verbose:
        print(f"  {backend:6} {tool:34} {op:5} n/a: {why}", flush=True)
    return m


def check_equal(expected) -> Callable[[Any], None]:
    import numpy as np  # noqa: PLC0415

    def check(result) -> None:
        got = np.asarray(result)
        if got.shape != expected.shape or not np.array_equal(got, expected):
            raise AssertionError(f"read back differs from written data (shape {got.shape})")

    return check


def rmtree(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# moto S3 server in its own process, reached over HTTP like AWS: the tests' own helper, reused


def _s3server_module():
    """tests/support/s3server.py, loaded by path (a top-level ``tests`` package elsewhere cannot shadow it)."""
    import importlib.util  # noqa: PLC0415

    path = REPO / "tests" / "support" / "s3server.py"
    spec = importlib.util.spec_from_file_location("_hubdask_bench_s3server", path)
    if spec is None or not path.exists():
        raise RuntimeError(f"{path} not found: it starts the moto server")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def moto_s3(bucket: str = "bench", latency_ms: float = 0) -> Iterator[dict]:
    """moto_server in a separate process (tests/support/s3server.py's MotoServer), the standard AWS env
    vars (AWS_ENDPOINT_URL, keys, region, AWS_ALLOW_HTTP) pointed at it for the duration, ``bucket``
    created; yields {"endpoint", "bucket", "region"}. With ``latency_ms`` every client goes through the
    tests' fault proxy (tests/support/faultproxy.py, its own process) adding that much per request, what
    a real object store costs. Stops both and restores the env after."""
    s3server = _s3server_module()
    logs = tempfile.mkdtemp(prefix="hubdask-bench-moto-")
    server = s3server.MotoServer(log_dir=logs)
    env = server.env()
    saved = {k: os.environ.get(k) for k in env}
    proxy = None
    try:
        server.start()
        server.make_bucket(bucket)
        endpoint = server.endpoint
        if latency_ms:
            proxy = subprocess.Popen([sys.executable, "-m", "tests.support.faultproxy", "--upstream", endpoint,
                                      "--latency", str(latency_ms / 1000)], cwd=REPO, stdout=subprocess.PIPE, text=True)
            endpoint = proxy.stdout.readline().strip()
            if not endpoint.startswith("http://"):
                raise RuntimeError(f"the latency proxy did not start (it printed {endpoint!r})")
            env = s3server.s3_env(endpoint)
        os.environ.update(env)
        yield {"endpoint": endpoint, "bucket": bucket, "region": env["AWS_REGION"], "server": server,
               "latency_ms": latency_ms}
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        rmtree(logs)


# ---------------------------------------------------------------------------------------------------
# environment description and result files


def versions(*distributions: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    out = {}
    for name in distributions:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),  # other work on the machine skews figures
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def fmt(x: float | None, spec: str = ".1f", missing: str = "n/a") -> str:
    return missing if x is None else format(x, spec)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *map(line, rows)])


def write_results(stem: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """Write ``results/<stem>.json`` and ``results/<stem>.md`` (overwriting the previous run)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    jpath, mpath = RESULTS / f"{stem}.json", RESULTS / f"{stem}.md"
    jpath.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    mpath.write_text(markdown.rstrip() + "\n")
    return jpath, mpath


# ---------------------------------------------------------------------------------------------------
# a measured child process: wall time, sampled peak RSS, a memory bound and a time bound


@dataclass
class ChildRun:
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int  # bytes, sampled by the parent (the child's own ru_maxrss is exact; prefer it)
    killed: str = ""  # why the parent stopped it, if it did


def run_child(cmd: list[str], *, timeout: float, mem_limit: int, poll: float = 0.05) -> ChildRun:
    """Run ``cmd``; stop it (by its pid) when it passes ``timeout`` seconds or ``mem_limit`` bytes RSS."""
    import psutil  # noqa: PLC0415

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        ps, peak, killed = psutil.Process(proc.pid), 0, ""
        while proc.poll() is None:
            try:
                peak = max(peak, ps.memory_info().rss)
            except psutil.Error:
                pass
            elapsed = time.perf_counter() - t0
            if peak > mem_limit:
                killed = f"stopped at {peak / MB:.0f} MiB RSS (limit {mem_limit / MB:.0f} MiB) after {elapsed:.1f} s"
            elif elapsed > timeout:
                killed = f"stopped after {timeout:.0f} s (time limit)"
            if killed:
                proc.kill()
                proc.wait()
                break
            time.sleep(poll)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return ChildRun(proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                        seconds, peak, killed)
