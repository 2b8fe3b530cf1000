"""The write/commit protocol's costs, against icechunk in the same run.

    python benchmarks/protocol.py                      # all three parts, moto S3 and a local folder
    python benchmarks/protocol.py commit --chunks 64 1024 10000
    python benchmarks/protocol.py heads --commits 1 100 1000 10000
    python benchmarks/protocol.py writes --updates 200

- commit: a commit of N changed (1, 64, 64) uint8 chunks, hubdask vs icechunk (same server, same
  chunks), median of 3; the goal is <= 2x icechunk at 1,024 chunks and flat (within 2x) from 64 to 10,000.
- heads: hd.load and a branch's head resolution after 1 ... 10,000 commits on moto (flat is the goal); the
  history is made by real commits on a local folder and uploaded to moto as it is (committing 10,000
  times on moto itself takes longer than the benchmark is worth).
- writes: partial-chunk updates per second from 1 and 2 processes into one chunk, with chunk locks
  (file locks on this machine) and without (only the versions' exclusive create fences them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

import numpy as np

from _common import REPO, fmt, machine, markdown_table, moto_s3, require_hubdask, versions, write_results

hd = require_hubdask()


def _median(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        times.append(fn())
    return statistics.median(times)


# --- commit ----------------------------------------------------------------------------------------


def hubdask_commit(root: str, n: int) -> float:
    name = f"bench/commit{uuid.uuid4().hex[:8]}"
    a = hd.array((n, 64, 64), name=name, dtype="uint8", chunks=(1, 64, 64), storage=root)
    data = np.random.default_rng(0).integers(0, 255, (n, 64, 64), dtype="uint8")

    def once() -> float:
        a[:] = data
        data[:, 0, 0] += 1
        t = time.perf_counter()
        a.commit("bench")
        return time.perf_counter() - t

    return _median(once)


def icechunk_commit(s3: dict | None, local: str | None, n: int) -> float | None:
    try:
        import icechunk
        import zarr
    except ImportError:
        return None
    if s3 is not None:
        storage = icechunk.s3_storage(bucket=s3["bucket"], prefix=f"ice{uuid.uuid4().hex[:8]}",
                                      endpoint_url=s3["endpoint"], allow_http=True, region=s3["region"],
                                      access_key_id="testing", secret_access_key="testing", force_path_style=True)
    else:
        storage = icechunk.local_filesystem_storage(os.path.join(local, f"ice{uuid.uuid4().hex[:8]}"))
    repo = icechunk.Repository.create(storage)
    session = repo.writable_session("main")
    arr = zarr.create_array(session.store, name="a", shape=(n, 64, 64), chunks=(1, 64, 64), dtype="uint8")
    session.commit("create")
    data = np.random.default_rng(0).integers(0, 255, (n, 64, 64), dtype="uint8")

    def once() -> float:
        session = repo.writable_session("main")
        arr = zarr.open_array(session.store, path="a")
        arr[:] = data
        data[:, 0, 0] += 1
        t = time.perf_counter()
        session.commit("bench")
        return time.perf_counter() - t

    return _median(once)


def bench_commit(chunk_counts: list[int]) -> tuple[list[list[str]], list[dict]]:
    rows, raw = [], []
    with tempfile.TemporaryDirectory() as tmp, moto_s3() as s3:
        for where in ("moto S3", "local"):
            for n in chunk_counts:
                root = f"s3://{s3['bucket']}/hub{uuid.uuid4().hex[:6]}" if where == "moto S3" else os.path.join(tmp, "hub")
                ours = hubdask_commit(root, n)
                theirs = icechunk_commit(s3 if where == "moto S3" else None, tmp, n)
                raw.append({"where": where, "chunks": n, "hubdask_s": ours, "icechunk_s": theirs})
                rows.append([where, str(n), fmt(ours * 1e3), fmt(theirs * 1e3 if theirs else None),
                             fmt(ours / theirs if theirs else None, ".2f") + "x"])
                print(rows[-1], flush=True)
    return rows, raw


# --- heads -----------------------------------------------------------------------------------------


def bench_heads(commit_counts: list[int]) -> tuple[list[list[str]], list[dict]]:
    """The history is made by real commits on a local root (fast), then each measured length is uploaded
    as it is to its own moto prefix (every object: claims, records, nodes), where it is resolved."""
    from hubdask.storage import open_root
    from hubdask.versioning import refs

    rows, raw = [], []
    with tempfile.TemporaryDirectory() as tmp, moto_s3() as s3:
        local = os.path.join(tmp, "heads")
        a = hd.array((4,), name="bench/heads", dtype="int64", storage=local)
        done = total = 0
        for target in sorted(commit_counts):
            t = time.perf_counter()
            while done < target:
                a[0] = done
                a.commit(f"c{done}")
                done += 1
            built = time.perf_counter() - t
            root = f"s3://{s3['bucket']}/heads{target}"
            t = time.perf_counter()
            objects = _upload(local, open_root(root))
            uploaded = time.perf_counter() - t
            r = open_root(root)
            assert hd.load("bench/heads", storage=root).read()[0] == target - 1
            load = min(_time(lambda: hd.load("bench/heads", storage=root)) for _ in range(7))
            head = min(_time(lambda: refs.read_head(r, "bench/heads", "main")) for _ in range(7))
            listed = len(r.list_prefix("bench/heads/@hub/refs/heads/main/"))
            # the control: a LIST of an empty prefix, whose cost on moto grows with the bucket (it scans every key)
            empty = min(_time(lambda: r.list_prefix("bench/nothing/")) for _ in range(7))
            raw.append({"commits": target, "load_ms": load * 1e3, "head_ms": head * 1e3, "head_objects": listed,
                        "objects": objects, "bucket_objects": total + objects, "empty_list_ms": empty * 1e3,
                        "build_s": built, "upload_s": uploaded})
            total += objects
            rows.append([str(target), fmt(load * 1e3, ".2f"), fmt(head * 1e3, ".2f"), str(listed), str(total),
                         fmt(empty * 1e3, ".2f")])
            print(rows[-1], f"(built in {built:.0f} s, uploaded in {uploaded:.0f} s)", flush=True)
    return rows, raw


def _upload(local: str, root) -> int:
    """Put every object of the local root ``local`` under ``root`` (temp files of writes in flight aside)."""
    import asyncio

    from hubdask.storage import sync
    from hubdask.versioning import layout

    files = [os.path.relpath(os.path.join(d, f), local) for d, _, names in os.walk(local) for f in names]
    files = [f for f in files if not layout.is_temp(f)]

    async def run() -> None:
        gate = asyncio.Semaphore(64)

        async def one(rel: str) -> None:
            with open(os.path.join(local, rel), "rb") as fh:
                data = fh.read()
            async with gate:
                await root.put_async(rel.replace(os.sep, "/"), data)

        await asyncio.gather(*(one(f) for f in files))

    sync(run())
    return len(files)


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --- writes ----------------------------------------------------------------------------------------


WRITER = """
import os, sys, time, hubdask as hd
root, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
a = hd.load("bench/rmw", storage=root)
t = time.perf_counter()
for i in range(lo, hi):
    a[i % 64, i // 64] = i
print(time.perf_counter() - t)
"""


def bench_writes(updates: int) -> tuple[list[list[str]], list[dict]]:
    rows, raw = [], []
    with tempfile.TemporaryDirectory() as tmp, moto_s3() as s3:
        env0 = {**os.environ, "PYTHONPATH": str(REPO)}  # with moto's AWS_* variables
        for where in ("moto S3", "local"):
            rates = {}
            for workers in (1, 2):
                for mode in ("local", "off"):
                    root = f"s3://{s3['bucket']}/w{uuid.uuid4().hex[:6]}" if where == "moto S3" else os.path.join(tmp, uuid.uuid4().hex)
                    hd.array((64, 1024), name="bench/rmw", dtype="int64", chunks=(64, 1024), storage=root)
                    env = {**env0, "HUBDASK_LOCKS": mode, "HUBDASK_CACHE": os.path.join(tmp, "cache")}
                    per = updates // workers
                    t = time.perf_counter()
                    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), root, str(k * per),
                                               str((k + 1) * per)], env=env, stdout=subprocess.PIPE, text=True)
                             for k in range(workers)]
                    for p in procs:
                        if p.wait() != 0:
                            raise SystemExit(f"a writer failed ({where}, {workers} processes, locks {mode})")
                    wall = time.perf_counter() - t
                    got = np.asarray(hd.load("bench/rmw", storage=root).read())
                    lost = sum(1 for i in range(per * workers) if got[i % 64, i // 64] != i)
                    rate = per * workers / wall
                    rates[(workers, mode)] = rate
                    raw.append({"where": where, "workers": workers, "locks": mode, "updates_per_s": rate, "lost": lost})
                    print(where, workers, mode, f"{rate:.1f}/s lost={lost}", flush=True)
            for workers in (1, 2):
                locked, unlocked = rates[(workers, "local")], rates[(workers, "off")]
                rows.append([where, str(workers), fmt(locked), fmt(unlocked), fmt(locked / unlocked, ".2f") + "x"])
    return rows, raw


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("part", nargs="*", default=["commit", "heads", "writes"], choices=["commit", "heads", "writes"])
    p.add_argument("--chunks", type=int, nargs="+", default=[64, 1024, 10000])
    p.add_argument("--commits", type=int, nargs="+", default=[1, 100, 1000, 10000])
    p.add_argument("--updates", type=int, default=200)
    args = p.parse_args()
    md = [f"# Write/commit protocol ({machine()['time']}, load {machine()['loadavg_1m_at_start']})", ""]
    payload = {"machine": machine(), "versions": versions("hubdask", "icechunk", "zarr", "moto")}
    if "commit" in args.part:
        rows, payload["commit"] = bench_commit(args.chunks)
        md += ["## Commit of N changed chunks (ms, median of 3)", "",
               markdown_table(["root", "chunks", "hubdask", "icechunk", "hubdask / icechunk"], rows), ""]
    if "heads" in args.part:
        rows, payload["heads"] = bench_heads(args.commits)
        md += ["## Branch resolution vs history length (moto, ms, min of 7)", "",
               markdown_table(["commits", "hd.load", "read_head", "objects in the branch folder", "objects in the bucket",
                               "LIST of an empty prefix"], rows), ""]
    if "writes" in args.part:
        rows, payload["writes"] = bench_writes(args.updates)
        md += ["## Partial-chunk updates per second into one chunk", "",
               markdown_table(["root", "processes", "locked", "unlocked (fence only)", "locked / unlocked"], rows), ""]
    print("\n".join(md))
    write_results("protocol", payload, "\n".join(md))


if __name__ == "__main__":
    main()
