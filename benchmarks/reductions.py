"""Whole-array reductions in bounded waves (hubdask.compute) against dask.array.

    python benchmarks/reductions.py [--dense-chunks 100000] [--skip-petabyte] [--skip-dense]

1. petabyte: uint8 (10**10, 512, 512, 3) (~7.9 PB logical) with 100 written chunks (one random image
   in each), on a local root: time and peak RSS of an exact ``x.sum().compute()``, checked against the
   sum of the images. dask.array cannot even build this graph (10**9 chunks).
2. dense: uint8 (N, 64, 64), chunks (1, 64, 64), every chunk written (N = --dense-chunks, 10**5 by
   default): ``x.sum()`` (waves) vs ``x.to_dask().sum()`` (dask.array on the same stored data, one task
   per chunk) vs ``dask.array.from_zarr(copy).sum()`` (a plain zarr copy with the same chunks and
   codecs). Goal: hubdask >= 1.0x dask.array.

Results: printed, and written to benchmarks/results/reductions.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import MB, import_hubdask, machine, markdown_table, rmtree, versions, write_results


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeats: int = 1):
    best, value = None, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best, value


def petabyte(hd, root: str) -> list[dict]:
    a = hd.array((10**10, 512, 512, 3), "bench/pb", dtype="uint8", storage=root)
    c = a.chunks[0]
    rng = np.random.default_rng(0)
    expected = 0
    t0 = time.perf_counter()
    for j in sorted(rng.choice(10**10 // c, 100, replace=False)):
        img = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
        a[int(j) * c] = img
        expected += int(img.sum(dtype=np.uint64))
    write_s = time.perf_counter() - t0
    x = hd.load("bench/pb", storage=root)
    rss0 = _peak_mb()
    sec, total = timed(lambda: x.sum().compute())
    assert int(total) == expected, (total, expected)
    sec_mean, mean = timed(lambda: x.mean().compute())
    rows = [{"case": "petabyte", "tool": "hubdask x.sum() (waves)", "seconds": sec, "note":
             f"exact: {int(total)}; chunks {a.chunks}; 100 written chunks (writing them took {write_s:.1f} s); "
             f"peak RSS {_peak_mb():.0f} MiB (before the sum {rss0:.0f})"},
            {"case": "petabyte", "tool": "hubdask x.mean() (waves)", "seconds": sec_mean, "note": f"{mean!r}"}]
    try:
        x.to_dask()
        rows.append({"case": "petabyte", "tool": "dask.array (x.to_dask().sum())", "seconds": None, "note": "built?"})
    except ValueError as exc:
        rows.append({"case": "petabyte", "tool": "dask.array (x.to_dask().sum())", "seconds": None,
                     "note": f"n/a: {str(exc)[:110]}"})
    return rows


def dense(hd, root: str, work: Path, n: int, repeats: int) -> list[dict]:
    import dask.array as da
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    data = np.random.default_rng(1).integers(0, 32, (n, 64, 64), dtype=np.uint8)
    expected = int(data.sum(dtype=np.uint64))
    a = hd.array(data.shape, "bench/dense", dtype="uint8", chunks=(1, 64, 64), storage=root)
    w_hd, _ = timed(lambda: a.__setitem__(Ellipsis, data))
    a.commit("data")
    z = zarr.create_array(str(work / "dense.zarr"), shape=data.shape, chunks=(1, 64, 64), dtype="uint8", fill_value=0,
                          compressors=[ZstdCodec(level=0), Crc32cCodec()])
    w_z, _ = timed(lambda: z.__setitem__(Ellipsis, data))
    print(f"  dense: {n} chunks written: hubdask {w_hd:.1f} s, zarr-python {w_z:.1f} s", flush=True)
    x = hd.load("bench/dense", storage=root)
    rows = []
    for tool, fn in (
        ("hubdask x.sum() (waves)", lambda: x.sum().compute()),
        ("dask.array on hubdask (x.to_dask().sum())", lambda: x.to_dask().sum().compute()),
        ("dask.array.from_zarr(copy).sum()", lambda: da.from_zarr(str(work / "dense.zarr")).sum().compute()),
    ):
        sec, total = timed(fn, repeats)
        assert int(total) == expected, (tool, total, expected)
        rows.append({"case": f"dense {n} chunks", "tool": tool, "seconds": sec,
                     "note": f"{data.nbytes / MB / sec:.0f} MB/s"})
        print(f"  {tool:45} {sec:8.2f} s", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dense-chunks", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-petabyte", action="store_true")
    p.add_argument("--skip-dense", action="store_true")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("HUBDASK_PROGRESS", "off")
    hd, why = import_hubdask(("array", "load", "map_blocks"))
    if hd is None:
        print(f"hubdask unavailable: {why}")
        return 1
    work = Path(tempfile.mkdtemp(prefix="hubdask-bench-red-"))
    rows: list[dict] = []
    try:
        if not args.skip_petabyte:
            rows += petabyte(hd, str(work / "pb"))
            print(f"  petabyte sum: {rows[0]['seconds']:.2f} s ({rows[0]['note']})", flush=True)
        if not args.skip_dense:
            rows += dense(hd, str(work / "dense"), work, args.dense_chunks, args.repeats)
    finally:
        rmtree(work)
    table = [[r["case"], r["tool"], "n/a" if r["seconds"] is None else f"{r['seconds']:.2f}", r["note"]] for r in rows]
    lines = ["# reductions benchmark", "",
             f"{machine()['time']}, {machine()['cpus']} CPUs; local root; best of {args.repeats} (dense).", "",
             markdown_table(["case", "tool", "seconds", "note"], table)]
    dense_rows = {r["tool"]: r["seconds"] for r in rows if r["case"].startswith("dense")}
    if dense_rows:
        hd_s = dense_rows["hubdask x.sum() (waves)"]
        lines += ["", "hubdask / dask.array speed: " + ", ".join(
            f"{s / hd_s:.2f}x vs {tool}" for tool, s in dense_rows.items() if not tool.startswith("hubdask"))]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions("numpy", "zarr", "dask").items())]
    md = "\n".join(lines)
    print()
    print(md)
    if not args.no_save:
        j, m = write_results("reductions", {"rows": rows, "argv": sys.argv}, md)
        print(f"\nwrote {j} and {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
