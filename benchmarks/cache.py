"""The local chunk cache: a cold read from the S3 server, then warm reads, against a local root.

    python benchmarks/cache.py [--size-mb 256] [--repeats 3]

The same data (uint8 frames of random integers in [0, 32), chunks (16, 512, 512), zstd + crc32c) is
written once to a moto S3 server in its own process and once to a local folder, and committed (only
committed chunks are cached). Then, MB/s of logical bytes:

    s3 no cache   np.asarray(hd.load(name, cache=False)) from S3
    s3 cold       the cache emptied before each run: every chunk fetched from S3 and stored in the cache
    s3 warm       the cache full: every chunk served from local disk
    local root    the same array in a local folder (local roots are never cached)

each with ``hd.load`` in the timed call (which on S3 costs several metadata round trips that no cache
may serve: refs are mutable), then warm and local again reading arrays loaded once.

Goal: warm >= 0.9x local root. Results: printed, and written to benchmarks/results/cache.{json,md}.
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
    require_hubdask,
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="hubdask-bench-cache-"))
    os.environ["HUBDASK_CACHE"] = str(work / "cache")
    os.environ.setdefault("HUBDASK_PROGRESS", "off")
    hd = require_hubdask()
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
        with moto_s3("bench") as info:
            s3 = f"s3://{info['bucket']}/cache"
            a = hd.array(data.shape, NAME, dtype="uint8", chunks=CHUNKS, storage=s3)
            a[...] = data
            a.commit("data")

            def read(root, **kw):
                return lambda: np.asarray(hd.load(NAME, storage=root, **kw))

            results.append(measure("s3", "no cache (cache=False)", "read", nbytes, read(s3, cache=False),
                                   repeats=args.repeats, check=check))
            results.append(measure("s3", "cold (cache emptied)", "read", nbytes, read(s3), repeats=args.repeats,
                                   setup=hd.cache.clear, check=check))
            print(f"  cache after a cold read: {hd.cache.info()['bytes'] / MB:.1f} MiB in "
                  f"{hd.cache.info()['entries']} entries", flush=True)
            # warm and local interleaved, so machine noise hits both alike
            warm, loc = [], []
            for _ in range(args.repeats):
                warm.append(measure("s3", "warm (cache full)", "read", nbytes, read(s3), repeats=1, check=check,
                                    verbose=False))
                loc.append(measure("local", "local root", "read", nbytes, read(local), repeats=1, check=check,
                                   verbose=False))
            for group in (warm, loc):
                m = group[0]
                m.times = [t for g in group for t in g.times]
                m.status = "ok" if all(g.status == "ok" for g in group) else "error"
                m.note = "; ".join(g.note for g in group if g.note)
                print(f"  {m.backend:6} {m.tool:34} {m.op:5} {fmt(m.mbps):>9} MB/s   (runs s: "
                      f"{' '.join(f'{t:.2f}' for t in m.times)})", flush=True)
                results.append(m)
            # the same, reading arrays loaded once (the metadata round trips of hd.load left out)
            xs, xl = hd.load(NAME, storage=s3), hd.load(NAME, storage=local)
            warm, loc = [], []
            for _ in range(args.repeats):
                warm.append(measure("s3", "warm, array loaded once", "read", nbytes, lambda: np.asarray(xs),
                                    repeats=1, check=check, verbose=False))
                loc.append(measure("local", "local root, array loaded once", "read", nbytes, lambda: np.asarray(xl),
                                   repeats=1, check=check, verbose=False))
            for group in (warm, loc):
                m = group[0]
                m.times = [t for g in group for t in g.times]
                print(f"  {m.backend:6} {m.tool:34} {m.op:5} {fmt(m.mbps):>9} MB/s   (runs s: "
                      f"{' '.join(f'{t:.2f}' for t in m.times)})", flush=True)
                results.append(m)
            hits = hd.cache.info()
    finally:
        rmtree(work)

    by = {m.tool: m for m in results}
    ratio = (by["warm (cache full)"].mbps or 0) / (by["local root"].mbps or float("inf"))
    ratio_read = (by["warm, array loaded once"].mbps or 0) / (by["local root, array loaded once"].mbps or float("inf"))
    rows = [[m.backend, m.tool, fmt(m.mbps, missing=m.status)] for m in results]
    md = "\n".join([
        "# cache benchmark",
        "",
        f"{machine()['time']}, {machine()['cpus']} CPUs; uint8 {data.shape} ({nbytes / MB:.0f} MiB), chunks {CHUNKS}, "
        f"zstd + crc32c; S3 = moto server in its own process; best of {args.repeats}; MB/s of logical bytes.",
        "",
        markdown_table(["backend", "read", "MB/s"], rows),
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
        j, m = write_results("cache", {"results": [r.as_dict() for r in results], "warm_over_local": ratio,
                                       "warm_over_local_loaded_once": ratio_read}, md)
        print(f"\nwrote {j} and {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
