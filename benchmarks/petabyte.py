"""A petabyte-shaped array: time and peak memory of the README's first steps.

    python benchmarks/petabyte.py [--backend local|s3|all] [--peers | --no-peers]

Each tool runs in a fresh child process (so its peak RSS is its own: ``ru_maxrss``, the kernel's
high-water mark) doing, on a uint8 array of shape (10**10, 512, 512, 3) (~7.9 PB logical):

    create   hd.array(shape, name=..., dtype="uint8")            metadata only
    write    a[0] = img                                          one (512, 512, 3) image
    load     hd.load(name)                                       metadata only
    reduce   x[0:10, 100:200, 100:200].mean().compute()          touches 10 frames' chunks

and checks the mean. Peers do the same steps their way, with the chunk shape hubdask chose:
zarr-python (eager ``[...]`` then numpy mean), tensorstore (lazy index, read), and
``dask.array.from_zarr`` (whose chunks tuple grows with the array: expect it to hit the memory bound).
A child is stopped at --timeout seconds or --mem-limit-gb RSS and reported so, not as a crash.

Results: printed, and written to benchmarks/results/petabyte.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    MB,
    import_hubdask,
    machine,
    markdown_table,
    moto_s3,
    rmtree,
    run_child,
    short,
    versions,
    write_results,
)

SHAPE = (10**10, 512, 512, 3)
NAME = "bench/petabyte"
SEL = (slice(0, 10), slice(100, 200), slice(100, 200))
TOOLS = ("hubdask", "zarr-python", "tensorstore", "dask.from_zarr")
FALLBACK_CHUNKS = (1, 512, 512, 3)


# ---------------------------------------------------------------------------------------------------
# child side: one tool, its steps, one JSON line


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child(tool: str, root: str, chunks: tuple[int, ...] | None) -> dict:
    steps: list[dict] = []
    report = {"tool": tool, "steps": steps, "chunks": chunks, "error": ""}

    def step(name, fn):
        report["at"] = name
        print("AT " + name, flush=True)  # the parent names the step if it has to stop this process
        t0 = time.perf_counter()
        value = fn()
        record(name, time.perf_counter() - t0)
        return value

    def record(name, seconds):
        steps.append({"step": name, "seconds": seconds, "rss": _rss(), "peak_rss": _peak()})
        print("STEP " + json.dumps(steps[-1]), flush=True)

    try:
        np = step("import", lambda: _imports(tool))
        img = np.random.default_rng(0).integers(0, 256, size=SHAPE[1:], dtype=np.uint8)
        expected = img[SEL[1:]].astype(np.float64).sum() / (10 * 100 * 100 * 3)  # frames 1..9 are fill 0
        record("baseline", 0.0)
        got = {"hubdask": _hubdask, "zarr-python": _zarr, "tensorstore": _tensorstore,
               "dask.from_zarr": _dask}[tool](step, root, chunks, img, report)
        report["at"] = "check"
        if abs(float(got) - expected) > 1e-9 * max(1.0, abs(expected)):
            raise AssertionError(f"mean {float(got)!r} != expected {expected!r}")
    except Exception as exc:
        report["error"] = f"{report.get('at', '?')} step: {type(exc).__name__}: {short(exc, 300)}".rstrip(": ")
    return report


def _imports(tool: str):
    import numpy as np

    if tool == "hubdask":
        hd, why = import_hubdask(("array", "load"))
        if hd is None:
            raise ImportError(why)
    elif tool == "tensorstore":
        import tensorstore  # noqa: F401
    else:
        import zarr  # noqa: F401

        if tool == "dask.from_zarr":
            import dask.array  # noqa: F401
    return np


def _hubdask(step, root, chunks, img, report):
    import hubdask as hd

    a = step("create", lambda: hd.array(SHAPE, name=NAME, dtype="uint8", storage=root))
    report["chunks"] = [int(c) for c in a.chunks] if isinstance(a.chunks[0], int) else None
    step("write", lambda: a.__setitem__(0, img))
    b = step("load", lambda: hd.load(NAME, storage=root))
    return step("reduce", lambda: b[SEL].mean().compute())


def _zarr_array(path, chunks):
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return zarr.create_array(path, shape=SHAPE, dtype="uint8", chunks=chunks, fill_value=0,
                             compressors=[ZstdCodec(level=0), Crc32cCodec()])


def _zarr(step, root, chunks, img, report):
    import zarr

    a = step("create", lambda: _zarr_array(f"{root}/zarr", chunks))
    step("write", lambda: a.__setitem__(0, img))
    b = step("load", lambda: zarr.open_array(f"{root}/zarr", mode="r"))
    return step("reduce", lambda: b[SEL].mean())


def _dask(step, root, chunks, img, report):
    import dask.array as da

    a = step("create", lambda: _zarr_array(f"{root}/zarr-dask", chunks))
    step("write", lambda: a.__setitem__(0, img))
    b = step("load", lambda: da.from_zarr(f"{root}/zarr-dask"))
    return step("reduce", lambda: b[SEL].mean().compute())


def _tensorstore(step, root, chunks, img, report):
    import tensorstore as ts

    if root.startswith("s3://"):
        import os

        bucket, _, prefix = root[5:].partition("/")
        kv = {"driver": "s3", "bucket": bucket, "path": f"{prefix}/ts/", "endpoint": os.environ["AWS_ENDPOINT_URL"],
              "aws_region": os.environ.get("AWS_REGION", "us-east-1"), "aws_credentials": {"type": "environment"}}
    else:
        kv = {"driver": "file", "path": f"{root}/ts/"}
    meta = {"shape": list(SHAPE), "data_type": "uint8", "fill_value": 0,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "codecs": [{"name": "bytes"}, {"name": "zstd", "configuration": {"level": 0}}, {"name": "crc32c"}]}
    a = step("create", lambda: ts.open({"driver": "zarr3", "kvstore": kv, "metadata": meta}, create=True).result())
    step("write", lambda: a[0].write(img).result())
    b = step("load", lambda: ts.open({"driver": "zarr3", "kvstore": kv}, open=True, read=True).result())
    return step("reduce", lambda: b[SEL].read().result().mean())


# ---------------------------------------------------------------------------------------------------
# parent side


def run_tool(tool: str, root: str, chunks, timeout: float, mem_limit: int) -> dict:
    cmd = [sys.executable, __file__, "--child", tool, "--root", root]
    if chunks:
        cmd += ["--chunks", ",".join(map(str, chunks))]
    r = run_child(cmd, timeout=timeout, mem_limit=mem_limit)
    out = r.stdout.splitlines()
    lines = [ln for ln in out if ln.startswith("RESULT ")]
    rep = json.loads(lines[-1][7:]) if lines else {
        "tool": tool, "chunks": chunks, "error": "",
        "steps": [json.loads(ln[5:]) for ln in out if ln.startswith("STEP ")],  # what it finished
    }
    at = [ln[3:] for ln in out if ln.startswith("AT ")][-1:]
    if r.killed:
        rep["error"] = f"{at[0]} step: {r.killed}" if at else r.killed
    elif not lines:
        tail = r.stderr.strip().splitlines()[-1:] or [f"exit code {r.returncode}"]
        rep["error"] = f"child failed: {short(tail[0], 200)}"
    rep["wall_seconds"] = r.seconds
    rep["sampled_peak_rss"] = r.peak_rss
    return rep


def show(rep: dict, backend: str) -> None:
    for s in rep["steps"]:
        print(f"  {backend:6} {rep['tool']:15} {s['step']:9} {s['seconds']:8.3f} s   rss {s['rss'] / MB:7.1f} MiB"
              f"   peak {s['peak_rss'] / MB:7.1f} MiB", flush=True)
    if rep["error"]:
        print(f"  {backend:6} {rep['tool']:15} n/a: {rep['error']}", flush=True)


def report(reports: list[dict], meta: dict) -> str:
    header = ["backend", "tool", "create s", "write s", "load s", "reduce s", "total s", "peak RSS MiB",
              "peak - baseline MiB", "status"]
    rows = []
    for rep in reports:
        by = {s["step"]: s for s in rep["steps"]}
        cells = [rep["backend"], rep["tool"]]
        for name in ("create", "write", "load", "reduce"):
            cells.append(f"{by[name]['seconds']:.3f}" if name in by else "—")
        work = [by[n]["seconds"] for n in ("create", "write", "load", "reduce") if n in by]
        cells.append(f"{sum(work):.3f}" if len(work) == 4 else "—")
        peak = max([s["peak_rss"] for s in rep["steps"]] + [rep.get("sampled_peak_rss", 0)])
        cells.append(f"{peak / MB:.0f}" if peak else "—")
        base = by.get("baseline", {}).get("rss")
        cells.append(f"{(peak - base) / MB:.0f}" if base and peak and len(work) == 4 else "—")
        cells.append("ok" if not rep["error"] else "n/a: " + rep["error"])
        rows.append(cells)
    return "\n".join([
        "# petabyte benchmark",
        "",
        f"{meta['machine']['time']}, {meta['machine']['cpus']} CPUs (load average "
        f"{meta['machine']['loadavg_1m_at_start']} at start), Python {meta['machine']['python']}; "
        f"uint8 {SHAPE} (~{meta['logical_pb']:.1f} PB logical), one (512, 512, 3) image written at [0], "
        f"then x[0:10, 100:200, 100:200].mean(); each tool in a fresh process; chunks {meta['chunks']}. "
        "Peak RSS: the child's ru_maxrss (or the parent's sampling, if higher or the child was stopped); "
        "baseline = RSS after imports.",
        "",
        markdown_table(header, rows),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
    ])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=["local", "s3", "all"], default="local")
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                   help="also run zarr-python, tensorstore and dask.from_zarr (default: on)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per tool (default 120)")
    p.add_argument("--mem-limit-gb", type=float, default=4.0, help="RSS bound per tool (default 4)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--child", choices=TOOLS, help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--chunks", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        chunks = tuple(int(c) for c in args.chunks.split(",")) if args.chunks else FALLBACK_CHUNKS
        print("RESULT " + json.dumps(child(args.child, args.root, chunks)), flush=True)
        return 0

    import os

    os.environ.setdefault("HUBDASK_PROGRESS", "off")
    work = Path(tempfile.mkdtemp(prefix="hubdask-petabyte-", dir=args.workdir))
    os.environ["HUBDASK_CACHE"] = str(work / "cache")
    mem_limit = int(args.mem_limit_gb * 2**30)
    tools = TOOLS if args.peers else TOOLS[:1]
    reports: list[dict] = []
    chunks = None

    def run_all(backend: str, root: str) -> None:
        nonlocal chunks
        for tool in tools:
            rep = run_tool(tool, root, chunks if tool != "hubdask" else None, args.timeout, mem_limit)
            rep["backend"] = backend
            if tool == "hubdask" and rep.get("chunks") and not rep["error"]:
                chunks = tuple(rep["chunks"])  # peers use the chunk shape hubdask chose
            show(rep, backend)
            reports.append(rep)

    try:
        if args.backend in ("local", "all"):
            run_all("local", str(work / "root"))
        if args.backend in ("s3", "all"):
            with moto_s3("bench") as info:
                run_all("s3", f"s3://{info['bucket']}/pb")
    finally:
        rmtree(work)

    meta = {
        "shape": SHAPE,
        "logical_pb": SHAPE[0] * SHAPE[1] * SHAPE[2] * SHAPE[3] / 1e15,
        "chunks": chunks or f"{FALLBACK_CHUNKS} (hubdask did not report one)",
        "machine": machine(),
        "versions": versions("numpy", "zarr", "dask", "tensorstore", "psutil"),
        "argv": sys.argv,
    }
    md = report(reports, meta)
    print()
    print(md)
    if not args.no_save:
        j, m = write_results("petabyte", {"meta": meta, "reports": reports}, md)
        print(f"\nwrote {j} and {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
