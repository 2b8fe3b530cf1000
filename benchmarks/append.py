"""Append throughput: 1, 2 and 4 concurrent appender processes into one hubdask array, against one appender.

    python benchmarks/append.py [--batches 40] [--rows 16,64] [--repeat 3] [--backends local,moto]

Each appender is its own process appending --batches batches of --rows rows (1 KiB per row, float32 x 256;
chunks of 64 rows). Batches of 16 rows share edge chunks with other appenders' and read-modify-write them
under the chunk's lock (appenders take turns there); batches of 64 rows fill whole chunks, and only the
reservation of rows is serialized. The timed span runs from a common start signal to the last appender's last append;
rows/s are summed over appenders. Every run checks the result: shape is the sum, every appender's
regions hold its rows. Ratios compare runs of this run only (the machine is shared and noisy: medians
of --repeat runs). Peer: zarr-python's own ``Array.append`` by one process (not safe for concurrent
appenders, so it has no concurrent figure).

Results: printed, and written to benchmarks/results/append.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, moto_s3, rmtree, write_results  # noqa: E402

WIDTH, CHUNK = 256, 64

CHILD = """
import json, os, sys, time
import numpy as np
import hubdask as hd
root, name, owner, batches, rows, go = sys.argv[1:7]
owner, batches, rows = int(owner), int(batches), int(rows)
a = hd.load(name, storage=root)
block = np.empty((rows, %d), "float32")
open(go + f".ready{owner}", "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
t0 = time.time()
regions = []
for b in range(batches):
    block[:] = owner * 100000 + b
    r = a.append(block)[0]
    regions.append([r.start, r.stop, b])
print(json.dumps({"t0": t0, "t1": time.time(), "regions": regions}))
""" % WIDTH

ZARR_CHILD = """
import json, sys, time
import numpy as np, zarr
url, batches, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
arr = zarr.open_array(url, mode="r+")
block = np.ones((rows, %d), "float32")
t0 = time.time()
for _ in range(batches):
    arr.append(block)
print(json.dumps({"t0": t0, "t1": time.time()}))
""" % WIDTH


def _env() -> dict:
    here = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}


def hubdask_run(root: str, appenders: int, batches: int, rows: int) -> float:
    """Rows per second of ``appenders`` concurrent appender processes (checked exactly)."""
    import numpy as np

    import hubdask as hd

    name = f"bench/append-{uuid.uuid4().hex[:8]}"
    hd.array((0, WIDTH), name, dtype="float32", chunks=(CHUNK, WIDTH), storage=root)
    go = os.path.join(tempfile.mkdtemp(prefix="hubdask-append-"), "go")
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD), root, name, str(o), str(batches),
                               str(rows), go], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for o in range(appenders)]
    while not all(os.path.exists(go + f".ready{o}") for o in range(appenders)):
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.01)
    open(go, "w").close()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise RuntimeError(f"appender failed: {err[-2000:]}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    rmtree(os.path.dirname(go))
    a = hd.load(name, storage=root)
    total = appenders * batches * rows
    assert a.shape == (total, WIDTH), (a.shape, total)
    values = np.asarray(a[:, 0])
    for o, res in enumerate(outs):
        for s, e, b in res["regions"]:
            assert (values[s:e] == o * 100000 + b).all(), "an appended region lost rows"
    hd.delete(name, storage=root)
    return total / (max(r["t1"] for r in outs) - min(r["t0"] for r in outs))


def zarr_run(url: str, batches: int, rows: int, storage_options: dict | None = None) -> float:
    import zarr

    zarr.create_array(url, shape=(0, WIDTH), chunks=(CHUNK, WIDTH), dtype="float32", overwrite=True,
                      storage_options=storage_options)
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(ZARR_CHILD), url, str(batches), str(rows)],
                       env=_env(), capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    res = json.loads(p.stdout.strip().splitlines()[-1])
    return batches * rows / (res["t1"] - res["t0"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--rows", default="16,64", help="rows per batch, comma-separated sizes to measure")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backends", default="local,moto")
    args = ap.parse_args()
    results: dict = {"machine": machine(), "args": vars(args), "backends": {}}
    table = []
    for backend in args.backends.split(","):
        tmp = tempfile.mkdtemp(prefix="hubdask-append-root-")
        ctx = moto_s3() if backend == "moto" else None
        info = ctx.__enter__() if ctx else None
        try:
            root = f"s3://{info['bucket']}/append" if info else tmp
            for rows in (int(r) for r in args.rows.split(",")):
                rates: dict[str, list[float]] = {}
                for _ in range(args.repeat):
                    for n in (1, 2, 4):
                        rates.setdefault(f"hubdask x{n}", []).append(hubdask_run(root, n, args.batches, rows))
                    url = f"s3://{info['bucket']}/zarr-{uuid.uuid4().hex[:6]}" if info else os.path.join(tmp, "zarr")
                    try:
                        rates.setdefault("zarr x1", []).append(zarr_run(url, args.batches, rows))
                    except Exception as exc:  # the peer missing or failing must not hide hubdask's figures
                        print(f"{backend}: zarr peer failed: {exc!s:.200}", flush=True)
                med = {k: statistics.median(v) for k, v in rates.items()}
                one = med["hubdask x1"]
                results["backends"][f"{backend}, {rows} rows"] = {
                    "runs": rates, "median_rows_per_s": med, "ratio_vs_one_appender": {k: v / one for k, v in med.items()}}
                for k, v in med.items():
                    table.append([backend, str(rows), k, f"{v:,.0f}", f"{v * WIDTH * 4 / 2**20:.2f}", f"{v / one:.2f}",
                                  " ".join(f"{x:,.0f}" for x in rates[k])])
                    print(f"{backend:6} {rows:3} rows {k:11} {v:10,.0f} rows/s  x{v / one:.2f} vs one appender  "
                          f"runs: {[round(x) for x in rates[k]]}", flush=True)
        finally:
            if ctx:
                ctx.__exit__(None, None, None)
            rmtree(tmp)
    md = ("# Append throughput (benchmarks/append.py)\n\n"
          f"{args.batches} batches of 1 KiB rows per appender ({args.rows} rows a batch), chunks of {CHUNK} rows; "
          f"medians of {args.repeat} runs.\n\n"
          + markdown_table(["backend", "rows a batch", "appenders", "rows/s", "MiB/s", "vs one appender", "runs"], table))
    write_results("append", results, md)


if __name__ == "__main__":
    main()
