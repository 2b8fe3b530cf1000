"""Versioning costs (issue 3): read at history depth 0 vs 20, commit time vs array size, storage growth.

    python benchmarks/versioning.py [--backend local|s3|all]

Prints MB/s and the ratio depth-20/depth-0, commit seconds for 1e4..1e10-row arrays with one chunk
changed, and the bytes stored after N one-element commits against one chunk's size.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import uuid

import numpy as np

from _common import MB, require_hubdask, markdown_table, measure, moto_s3, write_results


def depth_read(hd, root: str, repeats: int) -> list[list[str]]:
    shape, chunks = (512, 512, 512), (16, 512, 512)
    data = np.random.default_rng(0).integers(0, 32, size=shape, dtype="uint8")
    fresh = hd.array(shape, name="bench/fresh", dtype="uint8", chunks=chunks, storage=root)
    fresh[:] = data
    c0 = fresh.commit("all")
    deep = hd.array(shape, name="bench/deep", dtype="uint8", chunks=chunks, storage=root)
    deep[:] = data
    for i in range(20):  # 20 commits, each touching a different chunk
        deep[i * 16, 0, 0] = data[i * 16, 0, 0]
        deep[i * 16 + 1] = data[i * 16 + 1]
        c20 = deep.commit(f"c{i}")
    rows = []
    res = {}
    for label, name, cid in (("depth 0", "bench/fresh", c0), ("depth 20", "bench/deep", c20)):
        def run(name=name, cid=cid):
            return hd.load(f"{name}:{cid}", storage=root).read()
        m = measure("", label, "read", data.nbytes, run, repeats=repeats)
        res[label] = m.mbps
        rows.append([label, f"{m.mbps:.0f}"])
    rows.append(["ratio depth20/depth0", f"{res['depth 20'] / res['depth 0']:.2f}"])
    return rows


def commit_cost(hd, root: str) -> list[list[str]]:
    rows = []
    for exp in (4, 6, 8, 10):
        n = 10**exp
        a = hd.array((n, 64), name=f"bench/rows{exp}", dtype="uint8", chunks=(1024, 64), storage=root)
        a[n // 2] = 7
        t0 = time.perf_counter()
        a.commit("one chunk")
        rows.append([f"1e{exp} rows", f"{(time.perf_counter() - t0) * 1000:.1f} ms"])
    return rows


def storage_growth(hd, root: str, n: int = 20) -> list[list[str]]:
    from hubdask.storage import open_root

    r = open_root(root)
    size = lambda: sum(len(r.get(k) or b"") for k in r.list_prefix("bench/grow/"))  # noqa: E731
    a = hd.array((256, 256, 64), name="bench/grow", dtype="float32", chunks=(32, 256, 64), storage=root)
    a[:] = np.random.default_rng(1).random((256, 256, 64), dtype="float32")
    a.commit("full")
    hd.gc("bench/grow", storage=root, dry_run=False, grace=0)
    start = size()
    chunk = len(r.get(next(k for k in r.list_prefix("bench/grow/nodes/") if k.endswith("c/0/0/0"))))
    for i in range(n):
        a[(i * 13) % 256, 5, 5] = -float(i)
        a.commit(f"one element {i}")
    raw = size() - start
    hd.gc("bench/grow", storage=root, dry_run=False, grace=0)  # reclaim the old working copies
    grown = size() - start
    return [["one chunk (compressed)", f"{chunk / MB:.2f} MiB"],
            [f"after {n} one-element commits, before gc", f"{raw / MB:.2f} MiB ({raw / n / chunk:.2f} chunks/commit)"],
            ["after hd.gc (working copies reclaimed)", f"{grown / MB:.2f} MiB ({grown / n / chunk:.2f} chunks/commit)"]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backend", choices=["local", "s3", "all"], default="all")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    hd = require_hubdask()
    md = []
    backends = ["local", "s3"] if args.backend == "all" else [args.backend]
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp, (moto_s3() if backend == "s3" else contextlib.nullcontext({})) as env:
            root = f"{tmp}/root" if backend == "local" else f"s3://{env['bucket']}/v{uuid.uuid4().hex[:6]}"
            print(f"== {backend}")
            for title, fn in (("read at depth", lambda: depth_read(hd, root, args.repeats)),
                              ("commit time, one chunk changed", lambda: commit_cost(hd, root)),
                              ("storage growth", lambda: storage_growth(hd, root))):
                rows = fn()
                table = markdown_table([title, backend], rows)
                print(table)
                md.append(table)
    write_results("versioning", {"tables": md}, "\n\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
