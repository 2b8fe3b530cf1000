"""What chunk locks cost: partial-chunk writes per second with and without locks, per-acquire latency,
and the lock state the scheduler keeps.

    python benchmarks/locks.py [--tasks 32] [--writes 20] [--names 2000]

All on LocalClusters of worker processes (2 threads each) over a local folder root. Figures are measured
in this run; ratios compare runs of this run only.

1. Partial-chunk writes/s, no contention: each task rewrites rows of its own chunk (16 KiB) --writes
   times. Locks on (distributed.Lock through the scheduler) vs HUBDASK_LOCKS=off, with 1 and 2 workers;
   and in one process without a cluster (thread + file lock vs off).
2. Contended: every task writes its rows into ONE shared chunk (serialized by the lock), locks on; and
   the same with locks off, counting the rows lost (the hazard the locks remove).
3. Per-acquire latency (acquire + release of the lock of a different chunk each time, inside a worker
   task): hubdask's cached stripe lock, a fresh ``distributed.Lock`` per acquire (a lock object per
   chunk, as naive code does), and the local thread + file lock.
4. Scheduler state after --names distinct chunk locks: one distributed.Lock per chunk name vs hubdask's
   stripes (lock names the scheduler keeps, approximate bytes, lock objects alive in the worker).

Results: printed, and written to benchmarks/results/locks.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import tracemalloc

import numpy as np

from _common import fmt, require_hubdask, machine, markdown_table, rmtree, versions, write_results

COLS = 256
ROWS_PER_CHUNK = 8


def _writer(root: str, name: str, task: int, writes: int, setting: str, shared: bool) -> int:
    """``writes`` partial-chunk writes of one row: in the task's own chunk, or its row of the shared chunk."""
    import hubdask as hd

    os.environ["HUBDASK_LOCKS"] = setting
    a = hd.load(name, storage=root)
    for k in range(writes):
        row = task if shared else task * ROWS_PER_CHUNK + k % ROWS_PER_CHUNK
        a[row] = np.full(COLS, task + 1, dtype="int64")
    return writes


def _rate(client, root: str, tasks: int, writes: int, setting: str, shared: bool,
          repeats: int) -> tuple[float, int]:
    """(best partial-chunk writes per second of ``repeats`` runs, most rows lost in a run) on ``client``'s
    cluster, or in this process on 2 threads when ``client`` is None."""
    import hubdask as hd

    best, lost = 0.0, 0
    for _ in range(repeats):
        name = f"bench/locks{time.time_ns()}"
        if shared:
            hd.array((tasks, COLS), name, dtype="int64", chunks=(tasks, COLS), storage=root)
        else:
            hd.array((tasks * ROWS_PER_CHUNK, COLS), name, dtype="int64", chunks=(ROWS_PER_CHUNK, COLS),
                     storage=root)
        t0 = time.perf_counter()
        if client is None:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(2) as pool:
                done = sum(pool.map(lambda i: _writer(root, name, i, writes, setting, shared), range(tasks)))
        else:
            futures = [client.submit(_writer, root, name, i, writes, setting, shared, pure=False)
                       for i in range(tasks)]
            done = sum(client.gather(futures))
        best = max(best, done / (time.perf_counter() - t0))
        os.environ.pop("HUBDASK_LOCKS", None)
        if client is not None:
            client.run(lambda: os.environ.pop("HUBDASK_LOCKS", None))
        if shared:
            got = np.asarray(hd.load(name, storage=root))
            lost = max(lost, sum(int((got[r] != r + 1).any()) for r in range(tasks)))
    return best, lost


def _latency(n: int) -> dict[str, float]:
    """Median microseconds per acquire+release, inside a worker task."""
    import distributed

    from hubdask import locks

    out = {}

    def timed(fn) -> float:
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1e6

    counter = iter(range(10**9))
    chunks = [f"bench-latency-{i}" for i in range(64)]
    for c in chunks:  # warm: the stripe lock objects exist, as they do after a job's first writes
        with locks.chunk_locks([c], "distributed"):
            pass

    def striped():  # a different chunk each time, as when writing many chunks
        with locks.chunk_locks([chunks[next(counter) % len(chunks)]], "distributed"):
            pass

    def fresh():
        lk = distributed.Lock(f"bench-fresh-{next(counter)}")
        lk.acquire()
        lk.release()

    def local():
        with locks.chunk_locks(["bench-latency"], "local"):
            pass

    out["hubdask stripe lock (distributed)"] = timed(striped)
    out["fresh distributed.Lock per acquire"] = timed(fresh)
    out["hubdask local lock (thread + file)"] = timed(local)
    return out


def _lock_state(dask_scheduler) -> dict:
    ext = dask_scheduler.extensions["semaphores"]
    return {"names": len(ext.max_leases),
            "hubdask": sum(1 for n in ext.max_leases if str(n).startswith("hubdask-lock-"))}


def _raw_locks(n: int) -> int:
    """One distributed.Lock per chunk name; returns the Lock objects still alive in this worker."""
    import gc

    import distributed

    for i in range(n):
        lk = distributed.Lock(f"bench-raw-{i}")
        lk.acquire()
        lk.release()
    del lk
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, distributed.Lock))


def _striped_locks(n: int, stripes: int) -> int:
    """hubdask's chunk locks for n chunk names; returns the stripe lock objects this worker keeps."""
    from hubdask import locks

    before = sum(len(v) for v in locks._DIST.values())
    saved = os.environ.get("HUBDASK_LOCK_STRIPES")
    os.environ["HUBDASK_LOCK_STRIPES"] = str(stripes)
    try:
        for i in range(n):
            with locks.chunk_locks([f"bench-chunk-{i}"], "distributed"):
                pass
    finally:
        if saved is None:
            os.environ.pop("HUBDASK_LOCK_STRIPES", None)
        else:
            os.environ["HUBDASK_LOCK_STRIPES"] = saved
    return sum(len(v) for v in locks._DIST.values()) - before


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=32)
    p.add_argument("--writes", type=int, default=20)
    p.add_argument("--names", type=int, default=2000)
    p.add_argument("--stripes", type=int, default=256, help="stripes for part 4 (fewer than --names)")
    p.add_argument("--latency-n", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    hd = require_hubdask()
    import distributed

    work = tempfile.mkdtemp(prefix="hubdask-bench-locks-")
    os.environ["HUBDASK_CACHE"] = os.path.join(work, "cache")
    root = os.path.join(work, "root")
    res: dict = {"rates": {}, "contended": {}, "latency_us": {}, "state": {}}
    try:
        print("1. partial-chunk writes/s, each task its own chunk")
        for setting in ("auto", "off"):
            r, _ = _rate(None, root, args.tasks, args.writes, setting, False, args.repeats)
            res["rates"][f"in-process 2 threads, locks {'on' if setting == 'auto' else 'off'}"] = r
        tracemalloc.start()  # the LocalCluster's scheduler lives in this process (part 4)
        for workers in (1, 2):
            with distributed.LocalCluster(n_workers=workers, threads_per_worker=2, processes=True,
                                          dashboard_address=":0") as lc, distributed.Client(lc) as client:
                for setting in ("auto", "off"):
                    r, _ = _rate(client, root, args.tasks, args.writes, setting, False, args.repeats)
                    res["rates"][f"{workers} worker(s), locks {'on' if setting == 'auto' else 'off'}"] = r
                if workers == 2:
                    print("2. contended: one shared chunk")
                    for setting in ("auto", "off"):
                        rate, _ = _rate(client, root, args.tasks, args.writes, setting, True, args.repeats)
                        # rows lost: one write per task (a later rewrite of a row would repair its loss)
                        _, lost = _rate(client, root, args.tasks, 1, setting, True, args.repeats)
                        res["contended"][f"locks {'on' if setting == 'auto' else 'off'}"] = {
                            "writes_per_s": rate, "rows_lost": lost, "rows": args.tasks}
                    print("3. per-acquire latency")
                    res["latency_us"] = client.submit(_latency, args.latency_n, pure=False).result()
                    print("4. scheduler lock state")
                    base = client.run_on_scheduler(_lock_state)
                    m0 = tracemalloc.get_traced_memory()[0]
                    alive_raw = client.submit(_raw_locks, args.names, pure=False).result()
                    m1 = tracemalloc.get_traced_memory()[0]
                    mid = client.run_on_scheduler(_lock_state)
                    kept = client.submit(_striped_locks, args.names, args.stripes, pure=False).result()
                    m2 = tracemalloc.get_traced_memory()[0]
                    end = client.run_on_scheduler(_lock_state)
                    res["state"] = {
                        "names": args.names,
                        "one lock per chunk": {"scheduler_names_added": mid["names"] - base["names"],
                                               "approx_bytes_added": m1 - m0, "lock_objects_alive_in_worker": alive_raw},
                        "hubdask stripes": {"scheduler_names_added": end["names"] - mid["names"],
                                            "approx_bytes_added": m2 - m1,
                                            "lock_objects_alive_in_worker": kept, "stripes": args.stripes},
                    }
        tracemalloc.stop()
    finally:
        rmtree(work)

    rates = res["rates"]
    rows = []
    for where in ("in-process 2 threads", "1 worker(s)", "2 worker(s)"):
        on, off = rates[f"{where}, locks on"], rates[f"{where}, locks off"]
        rows.append([where, fmt(on, ".0f"), fmt(off, ".0f"), fmt(on / off, ".2f") + "x"])
    md = ["# Chunk locks", "", f"{args.tasks} tasks x {args.writes} partial-chunk writes (16 KiB chunks), "
          "local folder root, 2 threads per worker", "", "## Partial-chunk writes/s, no contention", "",
          markdown_table(["where", "locks on", "locks off", "on / off"], rows), "",
          "## One shared chunk (each task writes its row of it; rows lost: most in a run of 1 write per task)", ""]
    crow = [[k, fmt(v["writes_per_s"], ".0f"), f"{v['rows_lost']} of {v['rows']}"] for k, v in res["contended"].items()]
    md += [markdown_table(["", "writes/s", "rows lost"], crow), "", "## Per acquire + release (median, in a worker)", ""]
    md += [markdown_table(["lock", "µs"], [[k, fmt(v, ".0f")] for k, v in res["latency_us"].items()]), ""]
    st = res["state"]
    md += [f"## Scheduler state after {st['names']} distinct chunk locks ({st['hubdask stripes']['stripes']} stripes)", "",
           markdown_table(["", "lock names kept by the scheduler", "approx. bytes", "Lock objects alive in the worker"],
                          [[k, str(v["scheduler_names_added"]), f"{v['approx_bytes_added']:,}",
                            str(v["lock_objects_alive_in_worker"])]
                           for k, v in st.items() if isinstance(v, dict)])]
    md = "\n".join(md)
    print("\n" + md)
    meta = {"machine": machine(), "versions": versions("hubdask", "dask", "distributed", "zarr"), "args": vars(args)}
    j, m = write_results("locks", {"meta": meta, "results": res}, md)
    print(f"\nwritten: {j} {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
