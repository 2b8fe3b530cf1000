"""A version read by other zarr tools (issue 14): through ``hubdask serve`` and through a plain-zarr
export, against hubdask reading it directly; export throughput against zarr's own copy of the data.

    python benchmarks/export_serve.py [--mb 64] [--repeats 3]

All on a local root (the server runs in its own process, as ``hubdask serve`` does). Prints MB/s of
the logical (uncompressed) bytes and ratios against ``hubdask direct`` and ``zarr.from_array``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from _common import MB, REPO, check_equal, fmt, markdown_table, measure, not_available, require_hubdask, write_results


def start_server(name: str, root: str) -> tuple[subprocess.Popen, str]:
    """``hubdask serve NAME --port 0`` in its own process; (process, URL)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "hubdask.cli", "--storage", root, "serve", name, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if " at " not in line:
        proc.kill()
        raise RuntimeError(f"hubdask serve did not start: {line!r} {proc.stderr.read()[-500:]}")
    return proc, line.split(" at ", 1)[1].split()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=64, help="array size in MiB (float32)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    hd = require_hubdask(("array", "load", "export"))
    import zarr

    side = 256
    n = max(8, args.mb * MB // (side * side * 4))
    shape, chunks = (n, side, side), (8, side, side)
    rng = np.random.default_rng(0)
    data = (rng.standard_normal(shape, dtype="float32") * 10).round(1)
    nbytes = data.nbytes
    tmp = tempfile.mkdtemp(prefix="hubdask-bench-export-")
    root = os.path.join(tmp, "root")
    a = hd.array(shape, "bench/a", dtype="float32", chunks=chunks, storage=root, dims=("t", "y", "x"))
    hd.store(data, a, progress=False)
    a.commit("data")
    a.tag("v1")
    print(f"array {shape} float32, chunks {chunks}: {nbytes / MB:.0f} MiB logical", flush=True)
    check = check_equal(data)
    rows: list[list[str]] = []
    figures: dict[str, float | None] = {}

    def record(label: str, m) -> None:
        figures[label] = m.mbps
        rows.append([label, fmt(m.mbps)])

    print("read a tag:", flush=True)
    record("hubdask direct", measure("local", "hubdask direct", "read", nbytes,
                                     lambda: hd.load("bench/a:v1", storage=root).read(), repeats=args.repeats, check=check))
    export_dir = os.path.join(tmp, "export.zarr")
    hd.export("bench/a:v1", export_dir, storage=root, progress=False)
    record("zarr-python on the export", measure("local", "zarr-python on the export", "read", nbytes,
                                                lambda: zarr.open_array(export_dir, mode="r")[:],
                                                repeats=args.repeats, check=check))
    try:
        import tensorstore as ts
    except ImportError:
        ts = None
    if ts is not None:
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": export_dir}}
        record("tensorstore on the export", measure("local", "tensorstore on the export", "read", nbytes,
                                                    lambda: ts.open(spec).result().read().result(),
                                                    repeats=args.repeats, check=check))
    proc, url = start_server("bench/a:v1", root)
    try:
        if ts is not None:
            spec = {"driver": "zarr3", "kvstore": {"driver": "http", "base_url": url},
                    "context": {"cache_pool": {"total_bytes_limit": 0}}}
            record("tensorstore via hubdask serve", measure("local", "tensorstore via hubdask serve", "read", nbytes,
                                                            lambda: ts.open(spec).result().read().result(),
                                                            repeats=args.repeats, check=check))
        else:
            rows.append(["tensorstore via hubdask serve", not_available("local", "tensorstore", "read", nbytes,
                                                                        "pip install tensorstore").status])
        from zarr.storage import FsspecStore

        record("zarr-python via hubdask serve", measure(
            "local", "zarr-python via hubdask serve", "read", nbytes,
            lambda: zarr.open_array(FsspecStore.from_url(url, read_only=True), mode="r")[:],
            repeats=args.repeats, check=check))
    finally:
        proc.terminate()
        proc.wait(10)

    print("export:", flush=True)
    counter = iter(range(10**6))

    def fresh_target() -> str:
        return os.path.join(tmp, f"out-{next(counter)}.zarr")

    targets: list[str] = []
    m_export = measure("local", "hd.export", "write", nbytes,
                       lambda: hd.export("bench/a:v1", targets[-1], storage=root, progress=False),
                       repeats=args.repeats, setup=lambda: targets.append(fresh_target()))
    m_restart = measure("local", "hd.export again (all equal)", "write", nbytes,
                        lambda: hd.export("bench/a:v1", targets[-1], storage=root, progress=False), repeats=args.repeats)
    src = zarr.open_array(export_dir, mode="r")
    m_zarr = measure("local", "zarr.from_array (zarr's copy)", "write", nbytes,
                     lambda: zarr.from_array(targets[-1], data=src, zarr_format=3),
                     repeats=args.repeats, setup=lambda: targets.append(fresh_target()))
    import shutil

    m_raw = measure("local", "raw file copy (shutil.copytree)", "write", nbytes,
                    lambda: shutil.copytree(export_dir, targets[-1]), repeats=args.repeats,
                    setup=lambda: targets.append(fresh_target()))
    for label, m in (("hd.export", m_export), ("hd.export again (all equal)", m_restart),
                     ("zarr.from_array (zarr's copy)", m_zarr), ("raw file copy (shutil.copytree)", m_raw)):
        record(label, m)

    direct = figures.get("hubdask direct")
    peer = figures.get("zarr.from_array (zarr's copy)")
    table_rows = []
    for label, mbps in rows:
        v = figures.get(label)
        base = peer if label.startswith(("hd.export", "zarr.from_array", "raw file")) else direct
        ratio = f"{v / base:.2f}×" if v and base else "n/a"
        table_rows.append([label, mbps, ratio])
    table = markdown_table(["tool", "MB/s", "ratio (reads: vs hubdask direct; export: vs zarr.from_array)"],
                           table_rows)
    print(table)
    write_results("export_serve", {"shape": shape, "chunks": chunks, "figures": figures,
                                   "when": time.strftime("%Y-%m-%d %H:%M:%S")},
                  f"# export and serve ({nbytes / MB:.0f} MiB float32, local root)\n\n{table}\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
