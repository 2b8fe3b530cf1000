"""The local chunk cache: a cold read from the S3 server, then warm reads, against a local root.

    python benchmarks/cache.py [--size-mb 256] [--repeats 3] [--latency-ms 20] [--chunk-mb 4]

The same data (uint8 frames of random integers in [0, 32), chunks (16, 512, 512) unless --chunk-mb,
zstd + crc32c) is
written once to a moto S3 server in its own process and once to a local folder, and committed (only
committed chunks are cached). Then, MB/s of logical bytes:

    s3 no cache   np.asarray(hd.load(name, cache=False)) from S3
    s3 cold       the cache emptied before each run: every chunk fetched from S3 and stored in the cache
    s3 cold+flush the same, timed until every entry is on disk (hd.cache.flush())
    s3 warm       the cache full: every chunk served from local disk
    local root    the same array in a local folder (local roots are never cached)

each with ``hd.load`` in the timed call (which on S3 costs several metadata round trips that no cache
may serve: refs are mutable), then warm and local again reading arrays loaded once.

The three cold reads run interleaved (one of each in turn), each after ``hd.cache.clear()`` (which
waits for the cache writer), and so do warm and local. With ``--latency-ms`` every S3 request goes
through the fault proxy adding that much (what a real object store costs).

Goals: cold with the cache on >= 0.95x off (cache writes off the read's critical path); warm >= 0.9x
local root. Results: printed, and written to benchmarks/results/cache.{json,md} (cache-20ms.* etc.
with --latency-ms).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import (
    MB,
    check_equal,
    fmt,
    interleaved,
    require_hubdask,
    round_ratio,
    machine,
    markdown_table,
    measure,
    moto_s3,
    rmtree,
    versions,
    write_results,
)

NAME = "bench/cache"
CHUNKS = (16, 512, 512)
NOCACHE, COLD, COLD_FLUSHED = "no cache (cache=False)", "cold (cache emptied)", "cold, until cached (+ flush)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latency-ms", type=float, default=0, help="added to every S3 request (the fault proxy)")
    p.add_argument("--chunk-mb", type=int, default=4, help="chunk size in MiB (frames of 512x512 uint8)")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="hubdask-bench-cache-"))
    os.environ["HUBDASK_CACHE"] = str(work / "cache")
    os.environ.setdefault("HUBDASK_PROGRESS", "off")
    hd = require_hubdask()
    global CHUNKS
    CHUNKS = (max(1, args.chunk_mb * MB // (512 * 512)), 512, 512)
    frames = max(CHUNKS[0], args.size_mb * MB // (512 * 512) // CHUNKS[0] * CHUNKS[0])
    data = np.random.default_rng(0).integers(0, 32, (frames, 512, 512), dtype=np.uint8)
    nbytes, check = data.nbytes, check_equal(data)
    print(f"data uint8 {data.shape} ({nbytes / MB:.0f} MiB), chunks {CHUNKS}; best of {args.repeats}", flush=True)
    results = []
    try:
        local = str(work / "local")
        a = hd.array(data.shape, NAME, dtype="uint8", chunks=CHUNKS, storage=local)
        a[...] = data
        a.commit("data")
        with moto_s3("bench", args.latency_ms) as info:
            s3 = f"s3://{info['bucket']}/cache"
            a = hd.array(data.shape, NAME, dtype="uint8", chunks=CHUNKS, storage=s3)
            a[...] = data
            a.commit("data")

            def read(root, **kw):
                return lambda: np.asarray(hd.load(NAME, storage=root, **kw))

            def read_flush() -> np.ndarray:
                got = read(s3)()
                hd.cache.flush()
                return got

            # cold with the cache on and off, interleaved; each run starts with the cache emptied and its
            # writer idle, so no run pays for the entries of the one before
            results += interleaved([
                dict(backend="s3", tool=NOCACHE, op="read", nbytes=nbytes, run=read(s3, cache=False),
                     setup=hd.cache.clear, check=check),
                dict(backend="s3", tool=COLD, op="read", nbytes=nbytes, run=read(s3), setup=hd.cache.clear,
                     check=check),
                dict(backend="s3", tool=COLD_FLUSHED, op="read", nbytes=nbytes, run=read_flush,
                     setup=hd.cache.clear, check=check)], args.repeats)
            print(f"  cache after a cold read: {hd.cache.info()['bytes'] / MB:.1f} MiB in "
                  f"{hd.cache.info()['entries']} entries", flush=True)
            # warm and local interleaved, so machine noise hits both alike
            results += interleaved([dict(backend="s3", tool="warm (cache full)", op="read", nbytes=nbytes,
                                         run=read(s3), check=check),
                                    dict(backend="local", tool="local root", op="read", nbytes=nbytes,
                                         run=read(local), check=check)], args.repeats)
            # the same, reading arrays loaded once (the metadata round trips of hd.load left out)
            xs, xl = hd.load(NAME, storage=s3), hd.load(NAME, storage=local)
            results += interleaved([dict(backend="s3", tool="warm, array loaded once", op="read", nbytes=nbytes,
                                         run=lambda: np.asarray(xs), check=check),
                                    dict(backend="local", tool="local root, array loaded once", op="read",
                                         nbytes=nbytes, run=lambda: np.asarray(xl), check=check)], args.repeats)
            hits = hd.cache.info()
    finally:
        rmtree(work)

    by = {m.tool: m for m in results}
    ratio = (by["warm (cache full)"].mbps or 0) / (by["local root"].mbps or float("inf"))
    cold_ratio = (by[COLD].mbps or 0) / (by[NOCACHE].mbps or float("inf"))
    flushed_ratio = (by[COLD_FLUSHED].mbps or 0) / (by[NOCACHE].mbps or float("inf"))
    cold_median, flushed_median = round_ratio(by[COLD], by[NOCACHE]), round_ratio(by[COLD_FLUSHED], by[NOCACHE])
    ratio_read = (by["warm, array loaded once"].mbps or 0) / (by["local root, array loaded once"].mbps or float("inf"))
    rows = [[m.backend, m.tool, fmt(m.mbps, missing=m.status)] for m in results]
    md = "\n".join([
        "# cache benchmark",
        "",
        f"{machine()['time']}, {machine()['cpus']} CPUs; uint8 {data.shape} ({nbytes / MB:.0f} MiB), chunks {CHUNKS}, "
        f"zstd + crc32c; S3 = moto server in its own process"
        + (f", +{args.latency_ms:g} ms per request (fault proxy)" if args.latency_ms else "")
        + f"; best of {args.repeats}, runs interleaved; MB/s of logical bytes.",
        "",
        markdown_table(["backend", "read", "MB/s"], rows),
        "",
        f"cold with the cache on / off = **{cold_ratio:.2f}x** best over best, {fmt(cold_median, '.2f')}x the "
        f"median of the rounds' ratios (goal >= 0.95x: cache writes off the critical path); counting until "
        f"every entry is on disk: {flushed_ratio:.2f}x, {fmt(flushed_median, '.2f')}x.",
        "",
        f"warm / local root = **{ratio:.2f}x** with hd.load each time, **{ratio_read:.2f}x** reading arrays loaded "
        f"once (goal >= 0.9x). Cache counters at the end: hits {hits['hits']}, "
        f"misses {hits['misses']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions("numpy", "zarr", "obstore", "moto").items()),
    ])
    print()
    print(md)
    if not args.no_save:
        stem = "cache" + (f"-{args.latency_ms:g}ms" if args.latency_ms else "")
        j, m = write_results(stem, {"results": [r.as_dict() for r in results], "warm_over_local": ratio,
                                       "cold_cache_on_over_off": cold_ratio, "cold_flushed_over_off": flushed_ratio,
                                       "cold_on_over_off_round_median": cold_median,
                                       "cold_flushed_over_off_round_median": flushed_median,
                                       "warm_over_local_loaded_once": ratio_read}, md)
        print(f"\nwrote {j} and {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
