"""Download parallelism: read throughput from the S3 server vs threads x processes x chunk size.

    python benchmarks/parallelism.py [--size-mb 128] [--threads 1,2,4,8,16,32] [--processes 1,2]
                                     [--chunk-mb 1,4,16]

The seed project's chart, reproduced on moto's S3 server in its own process. For each chunk size an
array of uint8 frames (random integers in [0, 32), zstd + crc32c) is written and committed; then each
of P processes reads its share of the frames (``np.asarray(view)``, ``cache=False``) with T GETs in
flight (``HUBDASK_READ_CONCURRENCY=T``; decoding uses the process's ``HUBDASK_THREADS`` threads, one per
CPU). Throughput = logical bytes / wall time from the first request to the last process done; best
of --repeats. Worker processes are started (spawned) and warmed up before any timing.

Results: printed, and written to benchmarks/results/parallelism.{json,md,png}.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import MB, RESULTS, require_hubdask, machine, markdown_table, moto_s3, rmtree, versions, write_results

FRAME = (512, 512)


def _worker_init(env: dict) -> None:
    os.environ.update(env)


def _read_share(root: str, name: str, lo: int, hi: int, concurrency: int) -> int:
    os.environ["HUBDASK_READ_CONCURRENCY"] = str(concurrency)
    import hubdask as hd

    x = hd.load(name, storage=root, cache=False)
    return int(np.asarray(x[lo:hi]).nbytes)


def _warm(root: str, name: str) -> int:
    import hubdask as hd

    return len(hd.load(name, storage=root, cache=False))


def run(args) -> tuple[list[dict], dict]:
    hd = require_hubdask()
    threads = [int(t) for t in args.threads.split(",")]
    procs = [int(p) for p in args.processes.split(",")]
    chunk_mbs = [float(c) for c in args.chunk_mb.split(",")]
    rows: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="hubdask-bench-par-"))
    os.environ["HUBDASK_CACHE"] = str(work / "cache")
    os.environ.setdefault("HUBDASK_PROGRESS", "off")
    try:
        with moto_s3("bench") as info:
            root = f"s3://{info['bucket']}/par"
            env = {k: os.environ[k] for k in os.environ if k.startswith(("AWS_", "HUBDASK_"))}
            frames_total = int(args.size_mb * MB // (FRAME[0] * FRAME[1]))
            datasets = {}
            for cmb in chunk_mbs:
                per_chunk = max(1, int(cmb * MB // (FRAME[0] * FRAME[1])))
                frames = max(per_chunk, frames_total // per_chunk * per_chunk)
                data = np.random.default_rng(0).integers(0, 32, (frames, *FRAME), dtype=np.uint8)
                name = f"bench/par{per_chunk}"
                a = hd.array(data.shape, name, dtype="uint8", chunks=(per_chunk, *FRAME), storage=root)
                a[...] = data
                a.commit("data")
                datasets[cmb] = (name, frames, per_chunk, data.nbytes)
                print(f"chunk {cmb:g} MiB: {frames} frames in {frames // per_chunk} chunks written", flush=True)
            ctx = mp.get_context("spawn")
            for p in procs:
                with cf.ProcessPoolExecutor(p, mp_context=ctx, initializer=_worker_init, initargs=(env,)) as pool:
                    for name, *_ in datasets.values():
                        list(pool.map(_warm, [root] * p, [name] * p))
                    for cmb, (name, frames, per_chunk, nbytes) in datasets.items():
                        nchunks = frames // per_chunk
                        bounds = [(i * nchunks // p * per_chunk, (i + 1) * nchunks // p * per_chunk) for i in range(p)]
                        for t in threads:
                            best = None
                            for _ in range(args.repeats):
                                t0 = time.perf_counter()
                                futs = [pool.submit(_read_share, root, name, lo, hi, t) for lo, hi in bounds]
                                got = sum(f.result() for f in futs)
                                dt = time.perf_counter() - t0
                                assert got == nbytes, (got, nbytes)
                                best = dt if best is None else min(best, dt)
                            mbps = nbytes / best / MB
                            rows.append({"chunk_mb": cmb, "processes": p, "threads": t, "seconds": best,
                                         "mb_per_s": mbps})
                            print(f"  chunk {cmb:5g} MiB  processes {p}  threads {t:3}  {mbps:8.1f} MB/s", flush=True)
    finally:
        rmtree(work)
    meta = {"size_mb": args.size_mb, "repeats": args.repeats, "machine": machine(),
            "versions": versions("numpy", "zarr", "obstore", "moto"), "argv": sys.argv}
    return rows, meta


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chunk_mbs = sorted({r["chunk_mb"] for r in rows})
    procs = sorted({r["processes"] for r in rows})
    fig, axes = plt.subplots(1, len(chunk_mbs), figsize=(4.2 * len(chunk_mbs), 3.6), sharey=True, squeeze=False)
    for ax, cmb in zip(axes[0], chunk_mbs):
        for p in procs:
            pts = sorted((r["threads"], r["mb_per_s"]) for r in rows if r["chunk_mb"] == cmb and r["processes"] == p)
            ax.plot([t for t, _ in pts], [m for _, m in pts], marker="o", label=f"{p} process{'es' if p > 1 else ''}")
        ax.set_xscale("log", base=2)
        ax.set_title(f"chunk {cmb:g} MiB")
        ax.set_xlabel("GETs in flight per process")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MB/s (logical)")
    axes[0][-1].legend()
    fig.suptitle("hubdask download parallelism, moto S3 server in its own process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=float, default=128)
    p.add_argument("--threads", default="1,2,4,8,16,32")
    p.add_argument("--processes", default="1,2")
    p.add_argument("--chunk-mb", default="1,4,16")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    rows, meta = run(args)
    table = [[f"{r['chunk_mb']:g}", r["processes"], r["threads"], f"{r['mb_per_s']:.1f}"] for r in rows]
    best = max(rows, key=lambda r: r["mb_per_s"])
    md = "\n".join([
        "# download parallelism",
        "",
        f"{meta['machine']['time']}, {meta['machine']['cpus']} CPUs; {args.size_mb:g} MiB per chunk size, moto S3 "
        f"server in its own process; best of {args.repeats}. threads = GETs in flight per process "
        "(HUBDASK_READ_CONCURRENCY); decoding uses one thread per CPU in each process.",
        "",
        markdown_table(["chunk MiB", "processes", "threads", "MB/s"], table),
        "",
        f"Best: {best['mb_per_s']:.1f} MB/s with chunk {best['chunk_mb']:g} MiB, {best['processes']} process(es), "
        f"{best['threads']} GETs in flight. Plot: parallelism.png.",
    ])
    print()
    print(md)
    if not args.no_save:
        j, m = write_results("parallelism", {"meta": meta, "rows": rows}, md)
        plot(rows, RESULTS / "parallelism.png")
        print(f"\nwrote {j}, {m} and {RESULTS / 'parallelism.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
