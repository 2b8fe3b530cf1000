"""Sharded against unsharded arrays of 256 KiB chunks on moto S3, and concurrent partial-shard writers.

    python benchmarks/sharding.py [--chunks 64] [--per-shard 16] [--repeats 2]

Data: uint8 (N, 512, 512) random integers in [0, 32), chunks (1, 512, 512) = 256 KiB, shards of
--per-shard chunks, encoded bytes + zstd(0) + crc32c (hubdask's default) by every tool. For each tool
and layout: objects stored, requests the S3 server logged and MB/s (logical bytes, best of --repeats)
of a whole write and (after an untimed commit, at the commit id) a whole read (hubdask's disk cache
bypassed), and of small reads (one inner chunk
each, ``a[i, :64]`` for 8 rows spread over the array: requests per read and ms per read, best of
--repeats), then ratios against zarr-python with the same layout (ObjectStore, obstore). Then lost updates: one shard written by one task per inner
chunk at once (dask threads), zarr-python via dask.array.store (lock=False) against hubdask's a[i] = ... writes.
"""

from __future__ import annotations

import argparse
import time
import uuid

import numpy as np

from _common import MB, fmt, markdown_table, moto_s3, require_hubdask, write_results

FRAME = (512, 512)


def objects(server, bucket: str, prefix: str) -> int:
    resp = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    n = resp.get("KeyCount", 0)
    while resp.get("IsTruncated"):
        resp = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix,
                                               ContinuationToken=resp["NextContinuationToken"])
        n += resp.get("KeyCount", 0)
    return n


def timed(server, fn) -> tuple[float, int]:
    before = len(server.requests())
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    time.sleep(0.3)  # the access log is flushed line by line, a moment after the response
    return dt, len(server.requests()) - before


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--per-shard", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    hd = require_hubdask()
    import zarr
    from obstore.store import S3Store
    from zarr.storage import ObjectStore

    from hubdask import spec

    n, k = args.chunks, args.per_shard
    data = np.random.default_rng(0).integers(0, 32, (n, *FRAME), dtype=np.uint8)
    nbytes = data.nbytes
    picks = [int(i) for i in np.linspace(1, n - 2, 8)]
    version: dict = {}  # rows in different shards, one inner chunk each
    rows, results = [], {}
    with moto_s3() as s3:
        server, bucket = s3["server"], s3["bucket"]
        for layout, shards in (("unsharded", None), ("sharded", (k, *FRAME))):
            for tool in ("hubdask", "zarr-python"):
                w_best = r_best = s_best = None
                for rep in range(args.repeats):
                    prefix = f"{tool}-{layout}-{uuid.uuid4().hex[:8]}"
                    if tool == "hubdask":
                        root = f"s3://{bucket}/{prefix}"
                        a = hd.array(data.shape, "bench/sh", dtype="uint8", chunks=(1, *FRAME), shards=shards,
                                     storage=root)

                        def write(a=a):
                            a[...] = data

                        def read(root=root):
                            return np.asarray(hd.load(version["name"], storage=root, cache=False))

                        def small(root=root):
                            return [version["array"][i, :64].read() for i in picks]
                    else:
                        store = ObjectStore(S3Store(bucket, prefix=prefix, endpoint=s3["endpoint"],
                                                    region=s3["region"], aws_skip_signature=False,
                                                    client_options={"allow_http": True}))
                        z = zarr.create_array(store, shape=data.shape, chunks=(1, *FRAME), shards=shards,
                                              dtype="uint8", compressors=spec.compressors("zstd"), zarr_format=3)

                        def write(z=z):
                            z[...] = data

                        def read(z=z):
                            return z[...]

                        def small(z=z):
                            return [z[i, :64] for i in picks]
                    wt, wreq = timed(server, write)
                    if tool == "hubdask":  # reads are of the commit (a branch read also lists its refs)
                        version["name"] = f"bench/sh:{a.commit('bench')}"
                        version["array"] = hd.load(version["name"], storage=root, cache=False)
                    out = {}
                    rt, rreq = timed(server, lambda: out.setdefault("v", read()))
                    assert np.array_equal(out["v"], data), f"{tool} {layout}: read back differs"
                    st, sreq = timed(server, lambda: out.__setitem__("s", small()))
                    assert all(np.array_equal(v, data[i, :64]) for v, i in zip(out["s"], picks)), f"{tool} small"
                    stored = objects(server, bucket, prefix)
                    w_best = min(w_best or wt, wt)
                    r_best = min(r_best or rt, rt)
                    s_best = min(s_best or st, st)
                results[(tool, layout)] = dict(objects=stored, write_requests=wreq, read_requests=rreq,
                                               write_mbps=nbytes / w_best / MB, read_mbps=nbytes / r_best / MB,
                                               small_requests=sreq / len(picks), small_ms=1000 * s_best / len(picks))
        lost = lost_updates(hd, zarr, ObjectStore, S3Store, s3, spec, k)
    local = local_small_reads(hd, zarr, spec, data)
    for (tool, layout), r in results.items():
        peer = results[("zarr-python", layout)]
        rows.append([tool, layout, str(r["objects"]), str(r["write_requests"]), str(r["read_requests"]),
                     fmt(r["write_mbps"]), fmt(r["read_mbps"]),
                     fmt(r["write_mbps"] / peer["write_mbps"], ".2f"), fmt(r["read_mbps"] / peer["read_mbps"], ".2f"),
                     fmt(r["small_requests"]), fmt(r["small_ms"]), fmt(peer["small_ms"] / r["small_ms"], ".2f")])
    table = markdown_table(["tool", "layout", "objects", "write requests", "read requests", "write MB/s",
                            "read MB/s", "write x zarr", "read x zarr", "small read requests", "small read ms",
                            "small read x zarr"], rows)
    lost_table = markdown_table(["tool", "writers into one shard", "inner chunks lost"],
                                [[t, str(k), f"{v} of {k}"] for t, v in lost.items()])
    local_table = markdown_table(["tool (local folder, one shard of all chunks)", "small read ms", "x zarr"],
                                 [[t, fmt(v), fmt(local["zarr-python"] / v, ".2f")] for t, v in local.items()])
    text = (f"{n} chunks of 256 KiB ({nbytes / MB:.0f} MiB), shards of {k} chunks, moto S3\n\n{table}\n\n"
            f"{lost_table}\n\n{local_table}\n")
    print(text)
    write_results("sharding", {"results": {f"{t}/{l}": r for (t, l), r in results.items()}, "lost": lost,
                               "local_small_read_ms": local}, text)


def local_small_reads(hd, zarr, spec, data: np.ndarray, reads: int = 16) -> dict[str, float]:
    """ms per small read (``a[i, :64]``, one inner chunk) of a local array stored as one shard of every
    chunk, median of ``reads``: hubdask (index and inner chunk by pread) against zarr-python (LocalStore)."""
    import statistics
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        a = hd.array(data.shape, "bench/local", dtype="uint8", chunks=(1, *FRAME), shards=data.shape, storage=tmp)
        a[...] = data
        x = hd.load(f"bench/local:{a.commit('bench')}", storage=tmp)
        z = zarr.create_array(f"{tmp}/z.zarr", shape=data.shape, chunks=(1, *FRAME), shards=data.shape,
                              dtype="uint8", compressors=spec.compressors("zstd"), zarr_format=3)
        z[...] = data
        rows = np.random.default_rng(1).integers(0, len(data), reads)
        for tool, read in (("hubdask", lambda i: x[i, :64].read()), ("zarr-python", lambda i: z[i, :64])):
            times = []
            for i in rows:
                t0 = time.perf_counter()
                got = read(int(i))
                times.append(time.perf_counter() - t0)
                assert np.array_equal(got, data[i, :64]), tool
            out[tool] = 1000 * statistics.median(times)
    return out


def lost_updates(hd, zarr, ObjectStore, S3Store, s3, spec, k: int) -> dict[str, int]:
    """One shard of k inner chunks, one dask task per inner chunk, all at once: inner chunks left at fill."""
    import dask
    import dask.array as da

    ones = da.ones((k, 64, 64), dtype="uint8", chunks=(1, 64, 64))
    prefix = f"lost-{uuid.uuid4().hex[:8]}"
    store = ObjectStore(S3Store(s3["bucket"], prefix=prefix, endpoint=s3["endpoint"], region=s3["region"],
                                client_options={"allow_http": True}))
    z = zarr.create_array(store, shape=(k, 64, 64), chunks=(1, 64, 64), shards=(k, 64, 64), dtype="uint8",
                          compressors=spec.compressors("zstd"), zarr_format=3)
    with dask.config.set(scheduler="threads", num_workers=8):
        # da.store writes each dask block where it is, a partial shard each; (this dask's to_zarr rechunks
        # to whole shards first, so it is da.store, or any task writing z[i], that races)
        da.store(ones, z, lock=False)
    zarr_lost = int(sum(not z[i].any() for i in range(k)))
    root = f"s3://{s3['bucket']}/lost-hd-{uuid.uuid4().hex[:8]}"
    a = hd.array((k, 64, 64), "bench/lost", dtype="uint8", chunks=(1, 64, 64), shards=(k, 64, 64), storage=root)

    def put(i: int) -> None:
        a[i] = 1

    with dask.config.set(scheduler="threads", num_workers=8):
        dask.compute(*[dask.delayed(put)(i) for i in range(k)])
    got = hd.load("bench/lost", storage=root).read()
    return {"zarr-python + dask.array.store": zarr_lost, "hubdask": int(sum(not got[i].any() for i in range(k)))}


if __name__ == "__main__":
    main()
