"""The dask path against the direct path on the same data: what going through a dask graph costs.

    python benchmarks/dask_path.py [--size-mb 64] [--repeats 3] [--s3] [--distributed] [--local-only]

Reads: ``x.to_dask().compute()`` (one dask task per storage chunk, threaded scheduler) against
``np.asarray(x)`` (the chunk engine directly: concurrent fetches, threaded decode into the output).
Writes: ``hd.store(dask_array, x)`` (one task per storage chunk) against ``x[...] = ndarray``.
With ``--distributed`` the dask path runs on a LocalCluster (2 worker processes x 1 thread, the
machine's cores) instead of the threaded scheduler. On a remote root the dask path reads groups of
chunks per task and writes ~16 MiB per task (hubdask.daskgraph, hubdask.write).
Data: float32 (n, 1024) random numbers, storage chunks (256, 1024) (1 MiB), zstd(level=0) + crc32c; a
local folder root, and with ``--s3`` a bucket on moto's S3 server (a separate process over HTTP). Figures:
the median of --repeats rounds (the four operations interleaved in each round, so machine noise hits
them alike), MB/s of array bytes, and the ratio dask path / direct path (1.0 = no cost; above 1 the dask
path is faster). Each result is checked against the data once (untimed). Results: printed, and
written to benchmarks/results/dask_path.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import statistics
import time
import uuid

import numpy as np

from _common import MB, fmt, machine, markdown_table, moto_s3, require_hubdask, rmtree, versions, write_results

COLS = 1024
CHUNK_ROWS = 256


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_root(hd, root: str, size_mb: int, repeats: int) -> dict:
    import dask.array as da

    rows = max(CHUNK_ROWS, size_mb * MB // (COLS * 4))
    data = np.random.default_rng(0).random((rows, COLS), dtype=np.float32)
    nbytes = data.nbytes
    name = f"bench/dask-path-{uuid.uuid4().hex[:8]}"
    x = hd.array(data.shape, name=name, dtype="float32", chunks=(CHUNK_ROWS, COLS), storage=root)
    source = da.from_array(data, chunks=(CHUNK_ROWS, COLS))

    def direct_write() -> None:
        x[...] = data

    def dask_write() -> None:
        hd.store(source, x, progress=False)

    direct_write()
    dask_write()  # warm-up round (and the data the reads check)
    assert np.array_equal(np.asarray(x), data)
    y = hd.load(name, storage=root)
    assert np.array_equal(y.to_dask().compute(), data)
    ops = {"write direct": direct_write, "write dask": dask_write,
           "read direct": lambda: np.asarray(y), "read dask": lambda: y.to_dask().compute()}
    times: dict[str, list[float]] = {k: [] for k in ops}
    for _ in range(repeats):
        for k, fn in ops.items():
            times[k].append(timed(fn))
            if k == "write dask":
                y = hd.load(name, storage=root)  # the reads see the last write's state
    hd.delete(name, storage=root)
    return {k: nbytes / MB / statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--s3", action="store_true", help="also on a moto S3 server (a separate process)")
    p.add_argument("--s3-only", action="store_true", help="only on moto S3")
    p.add_argument("--distributed", action="store_true", help="the dask path on a LocalCluster, not threads")
    args = p.parse_args(argv)
    hd = require_hubdask(("array", "load", "store", "delete"))

    results = {}
    with contextlib.ExitStack() as stack:
        if args.s3 or args.s3_only:
            s3 = stack.enter_context(moto_s3("dask-path"))  # before the cluster: its workers inherit the env
        if args.distributed:
            import distributed

            cluster = stack.enter_context(distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                                                   processes=True, dashboard_address=":0"))
            stack.enter_context(distributed.Client(cluster))
        if not args.s3_only:
            local = tempfile.mkdtemp(prefix="hubdask-bench-dask-path-")
            try:
                results["local"] = run_root(hd, local, args.size_mb, args.repeats)
            finally:
                rmtree(local)
        if args.s3 or args.s3_only:
            results["moto S3"] = run_root(hd, f"s3://{s3['bucket']}/root", args.size_mb, args.repeats)

    rows = []
    for where, r in results.items():
        rows.append([where, "read", fmt(r["read direct"]), fmt(r["read dask"]), fmt(r["read dask"] / r["read direct"], ".2f")])
        rows.append([where, "write", fmt(r["write direct"]), fmt(r["write dask"]),
                     fmt(r["write dask"] / r["write direct"], ".2f")])
    scheduler = "distributed (2 workers x 1 thread)" if args.distributed else "threaded"
    title = (f"{args.size_mb} MiB float32, chunks ({CHUNK_ROWS}, {COLS}), {scheduler} dask path, median of "
             f"{args.repeats}; MB/s")
    table = markdown_table(["root", "op", "direct (np.asarray / a[...]=)", "dask (to_dask().compute() / hd.store)",
                            "dask / direct"], rows)
    print(title)
    print(table)
    write_results("dask_path_distributed" if args.distributed else "dask_path", {"args": vars(args), "machine": machine(), "versions": versions("dask", "zarr"),
                                "mb_per_s": results}, f"# dask path vs direct path\n\n{title}\n\n{table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
