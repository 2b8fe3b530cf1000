"""The long torture run on demand: random concurrent operations with faults, then the history check.

    python benchmarks/torture.py --minutes 5                 # local root, then moto S3 through the fault proxy
    python benchmarks/torture.py --minutes 2 --roots s3 --scheduler   # workers as clients of one dask scheduler
    HUBDASK_TORTURE_MINUTES=10 python benchmarks/torture.py  # the same variable the pytest run reads

Prints, per run, the operations (by kind and outcome), the faults injected and the anomalies found by
invariant (see tests/torture.py), and writes benchmarks/results/torture-ROOTS[-scheduler].{json,md}. Not a speed benchmark:
the figures are counts. The engine and the checker live in tests/torture.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import machine, markdown_table, moto_s3, require_hubdask, rmtree, write_results  # noqa: E402


@contextlib.contextmanager
def s3_through_proxy():
    """moto's server and a fault proxy in front of it; AWS_* point at the proxy. Yields (root, proxy)."""
    from support.faultproxy import FaultProxy
    from support.s3server import s3_env

    with moto_s3("torture") as s3, FaultProxy(s3["endpoint"], seed=0) as proxy:
        saved = dict(os.environ)
        os.environ.update(s3_env(proxy.endpoint))
        try:
            yield "s3://torture/root", proxy
        finally:
            os.environ.clear()
            os.environ.update(saved)


def one_run(kind: str, args: argparse.Namespace, seconds: float) -> dict:
    import torture

    work = Path(tempfile.mkdtemp(prefix=f"hubdask-torture-{kind}-"))
    os.environ["HUBDASK_CACHE"] = str(work / "cache")
    faults = (("kill", "stop") + (("longstop",) if not args.no_long_stops else ()) + (("proxy",) if kind == "s3" else ())
              + (("kill_dask",) if args.scheduler else ()))
    try:
        with (s3_through_proxy() if kind == "s3" else contextlib.nullcontext((str(work / "root"), None))) as (root, proxy):
            cfg = torture.Config(root=root, workers=args.workers, seconds=seconds, seed=args.seed,
                                 faults=faults, fault_interval=args.fault_interval, scheduler=args.scheduler,
                                 separate_caches=kind == "s3" and not args.shared_cache,
                                 late_landing=2.0 if kind == "s3" else 1.0, recreate=not args.no_recreate)
            print(f"\n== {kind}: {args.workers} workers, {seconds:.0f} s, faults {', '.join(faults)}"
                  f"{', one dask scheduler' if args.scheduler else ''} (run folder {work})", flush=True)
            started = time.monotonic()
            report = torture.run(cfg, work / "run", proxy=proxy)
            took = time.monotonic() - started
    finally:
        if not args.keep:
            rmtree(work)
    return dict(root=kind, seconds=round(took, 1), operations=sum(report.ops.values()), ops=dict(report.ops),
                faults=dict(report.faults), anomalies=dict(report.counts), events=dict(report.events), checked=dict(report.checked),
                errors=report.errors,
                examples=[str(a) for a in report.anomalies[:20]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("HUBDASK_TORTURE_MINUTES") or 1),
                        help="length of each run (default: HUBDASK_TORTURE_MINUTES or 1)")
    parser.add_argument("--roots", default="local,s3", help="comma-separated: local, s3")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 10000)
    parser.add_argument("--fault-interval", type=float, default=3.0, help="mean seconds between faults")
    parser.add_argument("--scheduler", action="store_true", help="workers are clients of one dask scheduler")
    parser.add_argument("--shared-cache", action="store_true", help="on S3 too, one HUBDASK_CACHE for all workers")
    parser.add_argument("--keep", action="store_true", help="keep the run folders (histories, snapshots, report)")
    parser.add_argument("--no-recreate", action="store_true",
                        help="never delete and re-create the shared branch while the others write and commit to it")
    parser.add_argument("--no-long-stops", action="store_true",
                        help="no SIGSTOP of 15-30 s (those let a busy branch's claim log be trimmed under a stale committer)")
    args = parser.parse_args()
    require_hubdask()
    runs = [one_run(kind, args, args.minutes * 60) for kind in args.roots.split(",")]
    rows = [[r["root"], f"{r['seconds']:.0f}", str(r["operations"]), str(sum(r["faults"].values())),
             ", ".join(f"{k} {v}" for k, v in sorted(r["faults"].items())) or "-",
             str(sum(r["anomalies"].values())),
             ", ".join(f"{k} {v} in {r['events'][k]}" for k, v in sorted(r["anomalies"].items())) or "-"]
            for r in runs]
    table = markdown_table(["root", "s", "operations", "faults", "by kind", "anomalies",
                            "by invariant (elements or refs in reads/commits/refs)"], rows)
    print("\n" + table)
    meta = dict(machine=machine(), workers=args.workers, seed=args.seed, scheduler=args.scheduler,
                minutes=args.minutes, recreate=not args.no_recreate, long_stops=not args.no_long_stops)
    stem = ("torture-" + "-".join(args.roots.split(",")) + ("-scheduler" if args.scheduler else "")
            + f"-seed{args.seed}")
    write_results(stem, dict(meta=meta, runs=runs),
                  f"# Torture run\n\n`python benchmarks/torture.py --minutes {args.minutes:g} --roots {args.roots}"
                  f"{' --scheduler' if args.scheduler else ''}{' --no-recreate' if args.no_recreate else ''}"
                  f"{' --no-long-stops' if args.no_long_stops else ''} --seed {args.seed}` ({meta['machine']['time']})\n\n"
                  + table + "\n")


if __name__ == "__main__":
    main()
