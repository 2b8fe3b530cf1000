"""``hd.store`` of a misaligned dask array on a cluster, against dask's own ways of writing zarr.

    python benchmarks/store.py [--size-mb N] [--workers 2] [--repeats 5]

Source: a float32 (n, 2048) dask array of random numbers whose blocks (1000, 1000) cut the storage
chunks (512, 512) (1 MiB) everywhere. Target encoding for every tool: zarr v3 + zstd(level=0) + crc32c,
in a local folder. The cluster is a LocalCluster of --workers worker processes x 1 thread, shared by all
tools. Figures are the best of --repeats runs (a fresh target each run; the tools take turns
run by run, so the shared machine's load swings hit all alike), in MB/s of array bytes; each
result is read back and compared with the source once (untimed).

Tools:
  hd.store                     aligns blocks to storage chunks: one writer per chunk, no lock
  dask.array.to_zarr           rechunks to chunk multiples itself, no lock (the peer to match or beat)
  da.store(lock=True)          writes the misaligned blocks under dask's lock, which on a distributed
                               cluster is one distributed.Lock for the whole array: every write serialized
  da.store(lock=False)         the misaligned blocks without a lock: fast, but blocks sharing a storage
                               chunk overwrite each other (the "exact result" column shows it)

Results: printed, and written to benchmarks/results/store.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import MB, fmt, require_hubdask, machine, markdown_table, rmtree, short, versions, write_results

CHUNKS = (512, 512)
BLOCKS = (1000, 1000)
COLS = 2048


def _codecs():
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return dict(compressors=(ZstdCodec(level=0), Crc32cCodec()))


def _zarr_target(path: Path, shape, dtype):
    import zarr

    return zarr.create_array(str(path), shape=shape, chunks=CHUNKS, dtype=dtype, fill_value=0, zarr_format=3,
                             **_codecs())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    hd = require_hubdask()
    import dask.array as da
    import distributed
    import zarr

    rows = max(CHUNKS[0], args.size_mb * MB // (COLS * 4))
    shape = (rows, COLS)
    nbytes = rows * COLS * 4
    data = np.random.default_rng(0).random(shape, dtype="float32")
    work = Path(tempfile.mkdtemp(prefix="hubdask-bench-store-"))
    results: dict[str, dict] = {}
    print(f"store {shape} float32 ({nbytes / MB:.0f} MB), blocks {BLOCKS} over chunks {CHUNKS}, "
          f"{args.workers} worker processes x 1 thread")
    try:
        with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as lc, distributed.Client(lc) as client:
            source = client.persist(da.from_array(data, chunks=BLOCKS))  # in worker memory: time the writes
            distributed.wait(source)

            def hd_store(dest: Path):
                target = hd.array(shape, "bench/store", dtype="float32", chunks=CHUNKS, storage=str(dest))
                hd.store(source, target, progress=False)
                return lambda: np.asarray(hd.load("bench/store", storage=str(dest)))

            def to_zarr(dest: Path):
                z = _zarr_target(dest, shape, "float32")
                da.to_zarr(source, z)
                return lambda: zarr.open_array(str(dest), mode="r")[...]

            def store_lock(dest: Path, lock):
                z = _zarr_target(dest, shape, "float32")
                da.store(source, z, lock=lock)
                return lambda: zarr.open_array(str(dest), mode="r")[...]

            tools = {
                "hd.store": hd_store,
                "dask.array.to_zarr": to_zarr,
                "da.store(lock=True)": lambda d: store_lock(d, True),
                "da.store(lock=False)": lambda d: store_lock(d, False),
            }
            # round-robin over the tools, so that the shared machine's load swings hit every tool alike
            for name in tools:
                results[name] = {"times": [], "correct": None, "note": ""}
            for r in range(args.repeats):
                for name, run in tools.items():
                    res = results[name]
                    if res["note"]:
                        continue
                    dest = work / f"{name}-{r}".replace(" ", "_")
                    try:
                        t0 = time.perf_counter()
                        read_back = run(dest)
                        res["times"].append(time.perf_counter() - t0)
                        if res["correct"] is None:
                            res["correct"] = bool(np.array_equal(read_back(), data))
                    except Exception as exc:
                        res["note"] = f"{type(exc).__name__}: {short(exc)}"
                    rmtree(dest)
            for name, res in results.items():
                best = min(res["times"]) if res["times"] else None
                res.update(best_s=best, mb_per_s=nbytes / best / MB if best else None)
                print(f"  {name:24} {fmt(res['mb_per_s']):>8} MB/s  correct={res['correct']}  "
                      f"runs s: {' '.join(f'{t:.2f}' for t in res['times'])} {res['note']}", flush=True)
    finally:
        rmtree(work)

    base = results["hd.store"]["mb_per_s"]
    rows_md = []
    for name, r in results.items():
        ratio = base / r["mb_per_s"] if base and r["mb_per_s"] else None
        rows_md.append([name, fmt(r["mb_per_s"]), fmt(ratio, ".2f") + "x" if ratio else "n/a",
                        {True: "yes", False: "NO (lost writes)", None: "n/a"}[r["correct"]], r["note"]])
    md = (f"# hd.store of a misaligned dask array\n\n{shape} float32, blocks {BLOCKS}, chunks {CHUNKS}, "
          f"{args.workers} worker processes, local folder, best of {args.repeats}\n\n"
          + markdown_table(["tool", "MB/s", "hd.store speed vs this", "exact result", "note"], rows_md))
    print("\n" + md)
    meta = {"machine": machine(), "versions": versions("hubdask", "dask", "distributed", "zarr", "numpy"),
            "shape": shape, "blocks": BLOCKS, "chunks": CHUNKS, "workers": args.workers}
    j, m = write_results("store", {"meta": meta, "results": results}, md)
    print(f"\nwritten: {j} {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
