"""A randomized concurrent-history checker for hubdask (a Jepsen-style torture test), on the public API only.

Three parts, usable on their own:

* **workers** (`worker_main`, one OS process each, started by `run` as ``python torture.py worker ...``)
  perform random operations on one root: partial- and whole-chunk writes (``a[sel] = v``), reads, commits,
  tags, private branches (create, write, commit, merge into ``main``, delete) and ``hd.gc(dry_run=False)``,
  against one or more datasets. Each operation is a line in the worker's JSON-lines history, written and
  flushed before it starts (invoke time) and after it ends (return time, result or exception), with
  ``time.monotonic()`` (system-wide on Linux). Every write stores one value, unique per (worker, op):
  ``uid * 1_000_000 + seq``. A commit id that returned is read back at once and saved (``.npy``).
* **the controller** (`run`) starts the workers, injects faults at random moments (SIGKILL of a worker,
  which is then replaced by a new one; SIGSTOP then SIGCONT a few seconds later, or past the lock lease
  when the workers share a dask scheduler; fault-proxy episodes of 503s, resets, truncations and delays
  on S3), stops everything, and runs the checker.
* **the checker** (`check`) compares storage against the history. Each array element is a register: a
  value read at ``[r0, r1]`` (the final read: after everything stopped) must be the value of a write W
  that covers the element, was invoked before ``r1``, and is not *dominated*: no write Y that returned
  (certainly applied) and covers the element was invoked after W ended and returned before ``r0``. A write
  that raised or whose process died may or may not have landed (it ends when it raised, or shortly after
  its process was killed) but never dominates. The initial value (fill, or a branch's base commit) is
  allowed only while no write returned. Merges are writes into ``main`` of the elements their branch's
  commit changed against its base. Also: every commit id that returned is readable at the end and equal
  to what was read right after it returned, and consistent with the writes at its own window; every
  branch and tag is readable; tags still name their commit; a merge commit holds what it merged.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np

VALUE_BASE = 1_000_000  # value = uid * VALUE_BASE + seq
WRITES = ("partial", "whole", "bwrite", "store", "swrite")  # operations that write one value into a box
ABSENT = -1  # an element beyond the shape read (no write stores a negative value)
INVARIANTS = (
    "branch-final",       # an element of a branch read at the end holds a value no allowed write produced
    "read",               # a read during the run saw such a value
    "commit-snapshot",    # a commit (read right after it returned) is inconsistent with the writes at its window
    "commit-changed",     # a commit read at the end differs from what it was when it returned
    "commit-unreadable",  # a commit id that returned cannot be read at the end
    "merge-content",      # a merge commit lacks an element its branch changed
    "ref-missing",        # a branch created (never deleted) or a tag is gone
    "ref-unreadable",     # a listed branch or tag cannot be read
    "tag-moved",          # a tag names another commit than the one it was made at
    "shape",              # a read, commit or branch has a shape no resize or append that may have landed made
)


# --- configuration -------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetSpec:
    """One int64 array under test; the first ``hot`` chunks (C order) get most writes (contention).

    ``shards``: stored sharded (zarr's sharding codec; ``chunks`` are the inner chunks). ``grow``: the
    array changes shape (``append`` and ``resize`` along axis 0, on ``main``): it starts with ``grow``
    rows, which the other writes stay in, and ``shape`` is its capacity (no private or shared branches
    on it). ``boost``: multipliers of the operation weights on this dataset (a commit-heavy one makes
    a branch's claim log long enough to be trimmed)."""

    name: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    hot: int = 2
    shards: tuple[int, ...] | None = None
    grow: int = 0
    boost: tuple[tuple[str, float], ...] = ()

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(-(-s // c) for s, c in zip(self.write_shape, self.chunks))

    @property
    def write_shape(self) -> tuple[int, ...]:
        """The shape at creation, which every write but an append stays in."""
        return (self.grow,) + self.shape[1:] if self.grow else self.shape

    @staticmethod
    def from_dict(d: dict) -> DatasetSpec:
        return DatasetSpec(d["name"], tuple(d["shape"]), tuple(d["chunks"]), d["hot"],
                           tuple(d["shards"]) if d.get("shards") else None, d.get("grow", 0),
                           tuple((k, float(m)) for k, m in d.get("boost", ())))


@dataclass(frozen=True)
class Config:
    """What one torture run does. ``weights`` maps operation kinds to relative frequencies."""

    root: str
    datasets: tuple[DatasetSpec, ...] = (
        DatasetSpec("torture/grid", (64, 64), (16, 16)),
        DatasetSpec("torture/line", (256,), (32,), boost=(("commit", 6.0), ("scommit", 3.0))),
        DatasetSpec("torture/shard", (32, 32), (4, 8), shards=(16, 16)),
        DatasetSpec("torture/grow", (128, 6), (8, 3), grow=24))
    workers: int = 3
    seconds: float = 20.0
    seed: int = 0
    fault_interval: float = 3.0          # mean seconds between two faults (exponential)
    faults: tuple[str, ...] = ("kill", "stop")  # and "proxy" (needs a proxy), "kill_dask" (needs
    # ``scheduler``: SIGKILL of a dask worker process, which its nanny restarts), all chosen evenly
    stop_hold: tuple[float, float] = (1.0, 4.0)  # SIGSTOP this long (seconds, uniform)
    long_stop_hold: tuple[float, float] = (15.0, 30.0)  # "longstop": long enough for the others to move a
    # busy branch past a claim-log trim (refs.TRIM_EVERY heads) while the stopped one holds a stale head
    proxy_hold: tuple[float, float] = (1.0, 3.0)  # one proxy episode lasts this long
    gc_graces: tuple[float, ...] = (0.5, 2.0, 10.0)
    separate_caches: bool = False        # each worker its own HUBDASK_CACHE (as on separate machines)
    scheduler: bool = False              # workers are clients of one dask scheduler: distributed locks
    lease_timeout: float = 2.0           # distributed lock lease (with ``scheduler``)
    dask_workers: int = 1                # with ``scheduler``: worker processes that run ``hd.store`` tasks
    late_landing: float = 1.0            # a killed worker's write may still land this long after the kill
    drain: float = 10.0                  # at the end, wait this long for workers to finish their op
    weights: tuple[tuple[str, float], ...] = (
        ("partial", 30), ("whole", 14), ("read", 6), ("commit", 7), ("tag", 3), ("branch", 3),
        ("bwrite", 14), ("bcommit", 5), ("merge", 5), ("delete_branch", 2), ("gc", 2), ("store", 6),
        ("append", 8), ("resize", 3), ("swrite", 8), ("scommit", 3), ("recreate", 1.5))
    shared: str = "shared"               # a branch of every fixed-shape dataset that all workers write and
    # commit to (``swrite``, ``scommit``); made with the datasets
    recreate: bool = True                # ``recreate``: delete the shared branch and make it again under
    # the same name (from main) while the others still write and commit to it through their handles
    env: tuple[tuple[str, str], ...] = ()  # extra environment of the workers
    sabotage: int = 0                    # tests of the checker: workers silently drop every Nth write

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @staticmethod
    def from_json(text: str) -> Config:
        raw = json.loads(text)
        raw["datasets"] = tuple(DatasetSpec.from_dict(d) for d in raw["datasets"])
        for key in ("faults", "stop_hold", "long_stop_hold", "proxy_hold", "gc_graces"):
            raw[key] = tuple(raw[key])
        raw["weights"] = tuple((k, float(w)) for k, w in raw["weights"])
        raw["env"] = tuple((k, v) for k, v in raw["env"])
        return Config(**raw)


# --- the worker process ----------------------------------------------------------------------------

def digest(data: np.ndarray) -> str:
    """A digest of an array's values (C order bytes, dtype and shape)."""
    data = np.ascontiguousarray(data)
    return hashlib.sha256(f"{data.dtype}{data.shape}".encode() + data.tobytes()).hexdigest()[:32]


class Worker:
    """One worker: a sequential loop of random operations, each recorded before and after it runs."""

    def __init__(self, cfg: Config, uid: int, out: Path) -> None:
        import hubdask as hd

        self.hd, self.cfg, self.uid, self.out = hd, cfg, uid, out
        self.rng = random.Random(cfg.seed * 7919 + uid)
        self.log = open(out / f"history-{uid}.jsonl", "a", buffering=1)
        self.snaps = out / "snapshots"
        self.seq = 0
        self.handles: dict[str, Any] = {}
        self.own: dict[str, dict] = {}  # ds -> {"name", "array", "base", "commit", "writes"}
        self.shared: dict[str, Any] = {}  # ds -> a handle of the shared branch (often stale)
        self.kinds = {spec.name: [k for k, _ in cfg.weights if allowed(cfg, spec, k)] for spec in cfg.datasets}
        self.weights = {spec.name: [w * dict(spec.boost).get(k, 1.0) for k, w in cfg.weights if allowed(cfg, spec, k)]
                        for spec in cfg.datasets}

    # .. recording
    def record(self, **fields: Any) -> None:
        self.log.write(json.dumps(fields, default=str) + "\n")
        self.log.flush()

    def save(self, data: np.ndarray) -> tuple[str, str]:
        name = f"u{self.uid}-s{self.seq}.npy"
        np.save(self.snaps / name, data)
        return name, digest(data)

    # .. helpers
    def handle(self, ds: str) -> Any:
        if ds not in self.handles or self.rng.random() < 0.2:  # sometimes a fresh view, often a stale one
            self.handles[ds] = self.hd.load(ds, storage=self.cfg.root)
        return self.handles[ds]

    def shared_handle(self, ds: str) -> Any:
        if ds not in self.shared or self.rng.random() < 0.2:
            self.shared[ds] = self.hd.load(f"{ds}:{self.cfg.shared}", storage=self.cfg.root)
        return self.shared[ds]

    def selection(self, spec: DatasetSpec, whole: bool) -> list[list[int]]:
        """A box: inside one or two chunks (partial), or one or two whole chunks; hot chunks preferred."""
        grid = spec.grid
        if self.rng.random() < 0.7:
            flat = self.rng.randrange(min(spec.hot, math.prod(grid)))
        else:
            flat = self.rng.randrange(math.prod(grid))
        cidx = np.unravel_index(flat, grid)
        box = []
        for axis, (s, c, i) in enumerate(zip(spec.write_shape, spec.chunks, cidx)):
            lo = int(i) * c
            if whole:
                hi = min(s, lo + c * (2 if axis == len(grid) - 1 and self.rng.random() < 0.3 else 1))
            else:
                lo += self.rng.randrange(c)
                hi = min(s, lo + self.rng.randrange(1, c + 1 if self.rng.random() < 0.3 else c - (lo % c) + 1))
            box.append([lo, max(hi, lo + 1)])
        if not whole and all((lo % c == 0) and (hi % c == 0 or hi == s)
                             for (lo, hi), c, s in zip(box, spec.chunks, spec.write_shape)):
            lo, hi = box[0]
            box[0] = [lo, hi - 1] if hi - lo > 1 else [lo, lo + 1]
            if box[0][1] - box[0][0] == spec.chunks[0]:
                box[0][0] += 1
        return box

    def region(self, spec: DatasetSpec) -> list[list[int]]:
        """A box with edges anywhere, up to about 2.5 chunks per axis (for ``hd.store``)."""
        box = []
        for s, c in zip(spec.write_shape, spec.chunks):
            lo = self.rng.randrange(0, s - 1) if self.rng.random() < 0.5 else self.rng.randrange(0, min(s, 2 * c))
            box.append([lo, min(s, lo + self.rng.randrange(1, int(2.5 * c) + 1))])
        return box

    def choose(self) -> tuple[str, DatasetSpec]:
        spec = self.rng.choice(self.cfg.datasets)
        while True:
            kind = self.rng.choices(self.kinds[spec.name], self.weights[spec.name])[0]
            own = self.own.get(spec.name)
            live = own is not None and not own["merged"]
            if kind in ("bwrite", "bcommit") and not live or kind == "delete_branch" and own is None:
                continue
            if kind == "merge" and not (live and own["commit"] is not None and own["writes"]):
                continue
            if kind == "branch" and live:
                continue
            return kind, spec

    # .. the loop
    def run(self, stop: Path, max_ops: int | None = None) -> None:
        while not stop.exists() and (max_ops is None or self.seq < max_ops):
            self.seq += 1
            kind, spec = self.choose()
            self.one(kind, spec)

    def one(self, kind: str, spec: DatasetSpec) -> None:
        ds, seq = spec.name, self.seq
        base = dict(uid=self.uid, seq=seq, kind=kind, ds=ds)
        args: dict[str, Any] = {}
        ref = "main"
        own = self.own.get(ds)
        if kind in ("partial", "whole", "bwrite", "swrite"):
            whole = kind == "whole" or (kind in ("bwrite", "swrite") and self.rng.random() < 0.4)
            args = dict(sel=self.selection(spec, whole), value=self.uid * VALUE_BASE + seq, whole=whole)
            if kind == "bwrite":
                ref = own["name"]
            elif kind == "swrite":
                ref = self.cfg.shared
        elif kind == "scommit":
            args, ref = dict(branch=self.cfg.shared), self.cfg.shared
        elif kind == "recreate":
            args = dict(branch=self.cfg.shared)
        elif kind == "append":
            args = dict(rows=self.rng.randint(1, GROW_STEP), value=self.uid * VALUE_BASE + seq)
        elif kind == "resize":
            args = dict(rows=self.rng.randint(spec.grow, grow_limit(spec)))
        elif kind == "store":
            args = dict(sel=self.region(spec), value=self.uid * VALUE_BASE + seq)
        elif kind in ("bcommit", "delete_branch"):
            args = dict(branch=own["name"])
            ref = own["name"] if kind == "bcommit" else "main"
        elif kind == "merge":
            args = dict(branch=own["name"], theirs=own["commit"], base=own["base"],
                        strategy=self.rng.choice([None, "theirs"]))
        elif kind == "branch":
            args = dict(branch=f"w{self.uid}b{seq}")
        elif kind == "tag":
            args = dict(tag=f"t{self.uid}x{seq}")
        elif kind == "gc":
            args = dict(grace=self.rng.choice(self.cfg.gc_graces))
        elif kind == "read" and own is not None and self.rng.random() < 0.3:
            ref = own["name"]
        elif kind == "read" and not spec.grow and self.rng.random() < 0.2:
            ref = self.cfg.shared
        self.record(**base, ref=ref, args=args, t0=time.monotonic())
        try:
            result = self.perform(kind, ds, ref, args)
        except Exception as exc:  # an exception is a result too: the checker decides
            t1 = time.monotonic()
            self.record(uid=self.uid, seq=seq, t1=t1, status="error", error_type=type(exc).__name__,
                        error=str(exc).splitlines()[0][:400] if str(exc) else "")
            self.after_error(kind, ds, exc)
            return
        t1 = time.monotonic()
        out = result if not isinstance(result, np.ndarray) else None
        self.record(uid=self.uid, seq=seq, t1=t1, status="ok", result=out)
        if isinstance(result, np.ndarray):
            name, dig = self.save(result)
            self.record(uid=self.uid, seq=seq, snapshot=name, digest=dig)
        self.after_ok(kind, ds, args, result)

    def perform(self, kind: str, ds: str, ref: str, args: dict) -> Any:
        hd = self.hd
        if kind in ("partial", "whole"):
            a = self.handle(ds)
            a[tuple(slice(lo, hi) for lo, hi in args["sel"])] = np.int64(args["value"])
            return None
        if kind == "store":  # tasks on the dask cluster's workers: one per storage chunk
            import dask.array as da

            shape = tuple(hi - lo for lo, hi in args["sel"])
            spec = next(s for s in self.cfg.datasets if s.name == ds)
            src = da.full(shape, args["value"], dtype="int64", chunks=tuple(max(1, c // 2) for c in spec.chunks))
            hd.store(src, ds, region=tuple(slice(lo, hi) for lo, hi in args["sel"]), storage=self.cfg.root)
            return None
        if kind in ("bwrite", "swrite"):
            a = self.own[ds]["array"] if kind == "bwrite" else self.shared_handle(ds)
            a[tuple(slice(lo, hi) for lo, hi in args["sel"])] = np.int64(args["value"])
            return None
        if kind == "read":
            a = (self.handle(ds) if ref == "main" else self.shared_handle(ds) if ref == self.cfg.shared
                 else self.own[ds]["array"])
            return np.asarray(a)
        if kind == "scommit":
            return {"cid": self.shared_handle(ds).commit(f"u{self.uid} s{self.seq}")}
        if kind == "recreate":  # delete the shared branch (if it is there) and make it again from main
            a = self.handle(ds)
            try:
                a.delete_branch(args["branch"])
            except hd.NotFoundError:
                pass
            cid = a.commit(f"u{self.uid} s{self.seq}")  # main's commit: the new branch's base, for certain
            self.shared[ds] = hd.load(f"{ds}:{cid}", storage=self.cfg.root).branch(args["branch"])
            return {"cid": cid}
        if kind in ("append", "resize"):
            a = self.handles[ds] = hd.load(ds, storage=self.cfg.root)  # the current shape decides
            rows, rest = args["rows"], a.shape[1:]
            if kind == "append":
                if a.shape[0] + rows > grow_limit(next(s for s in self.cfg.datasets if s.name == ds)):
                    raise Skipped(f"{a.shape[0]} rows: no room to append {rows}")
                region = a.append(np.full((rows, *rest), args["value"], dtype=np.int64))
                return {"rows": [region[0].start, region[0].stop]}
            a.resize((rows, *rest))
            return {"rows": rows}
        if kind == "commit":
            return {"cid": self.handle(ds).commit(f"u{self.uid} s{self.seq}")}
        if kind == "bcommit":
            return {"cid": self.own[ds]["array"].commit(f"u{self.uid} s{self.seq}")}
        if kind == "tag":
            return {"cid": self.handle(ds).tag(args["tag"])}
        if kind == "branch":
            b = self.handle(ds).branch(args["branch"])
            self.own[ds] = {"name": args["branch"], "array": b, "base": b.commit_id, "commit": None, "writes": 0,
                            "merged": False}
            return {"cid": b.commit_id}
        if kind == "merge":
            return {"cid": self.handle(ds).merge(args["branch"], strategy=args["strategy"])}
        if kind == "delete_branch":
            self.handle(ds).delete_branch(args["branch"])
            return None
        if kind == "gc":
            return {"unreachable": len(hd.gc(ds, dry_run=False, grace=args["grace"], storage=self.cfg.root))}
        raise ValueError(f"unknown operation {kind!r}")

    def snapshot_commit(self, ds: str, cid: str) -> None:
        """Read a commit that just returned, by id, and record its values (three tries: faults happen)."""
        for attempt in range(3):
            try:
                data = np.asarray(self.hd.load(f"{ds}:{cid}", storage=self.cfg.root))
            except Exception as exc:
                if attempt == 2:
                    self.record(uid=self.uid, seq=self.seq, snapshot_error=f"{type(exc).__name__}: {exc}"[:400])
                    return
                time.sleep(0.2)
                continue
            name, dig = self.save(data)
            self.record(uid=self.uid, seq=self.seq, snapshot=name, digest=dig, cid=cid)
            return

    def after_ok(self, kind: str, ds: str, args: dict, result: Any) -> None:
        if isinstance(result, dict) and "cid" in result and result["cid"]:
            self.snapshot_commit(ds, result["cid"])
        own = self.own.get(ds)
        if kind == "bwrite":
            own["writes"] += 1
        elif kind == "bcommit":
            own["commit"] = result["cid"]
        elif kind == "merge":
            own["merged"] = True  # a branch is merged at most once; then deleted, or left for a new one
        elif kind == "delete_branch":
            self.own.pop(ds, None)

    def after_error(self, kind: str, ds: str, exc: Exception) -> None:
        if kind in ("swrite", "scommit", "recreate") or kind == "read" and ds in self.shared:
            if self.rng.random() < 0.5:  # else keep the stale handle: the next op uses it again
                self.shared.pop(ds, None)
        own = self.own.get(ds)
        if kind == "bcommit" and own is not None:
            own["commit"] = None  # its last commit is uncertain now: no merge until the next one returns
        elif kind == "merge" and own is not None:
            own["merged"] = True  # it may have been applied
        elif kind == "delete_branch":
            self.own.pop(ds, None)
        self.handles.pop(ds, None)


GROW_STEP = 6  # an append adds 1 to GROW_STEP rows


def grow_limit(spec: DatasetSpec) -> int:
    """Appends stop at this many rows (concurrent appenders may pass it, never the capacity)."""
    return spec.shape[0] - 8 * GROW_STEP


class Skipped(Exception):
    """An operation the worker decided not to do after it was recorded (no effect on storage)."""


FIXED_ONLY = {"branch", "bwrite", "bcommit", "merge", "delete_branch", "swrite", "scommit", "recreate"}


def allowed(cfg: Config, spec: DatasetSpec, kind: str) -> bool:
    """Whether the workers do ``kind`` on ``spec``: branches only where the shape is fixed, appends and
    resizes only where it is not, ``store`` only with a scheduler, ``recreate`` only if asked."""
    if kind in FIXED_ONLY and spec.grow or kind in ("append", "resize") and not spec.grow:
        return False
    return (kind != "store" or cfg.scheduler) and (kind != "recreate" or cfg.recreate)


def _sabotage(every: int) -> None:
    """Break the write path on purpose (to prove the checker catches it): every Nth ``a[sel] = v``
    returns without writing anything."""
    import hubdask as hd

    original, calls = hd.Array.__setitem__, [0]

    def dropping(self: Any, index: Any, value: Any) -> None:
        calls[0] += 1
        if calls[0] % every:
            original(self, index, value)

    hd.Array.__setitem__ = dropping


def worker_main(config_path: str, uid: int, out_dir: str) -> None:
    """Entry point of a worker process: environment first (before hubdask is imported), then the loop."""
    cfg = Config.from_json(Path(config_path).read_text())
    out = Path(out_dir)
    for key, value in cfg.env:
        os.environ[key] = value
    if cfg.separate_caches:
        os.environ["HUBDASK_CACHE"] = str(out / "caches" / f"u{uid}")
    if cfg.sabotage:
        _sabotage(cfg.sabotage)
    client = None
    if cfg.scheduler:
        import distributed

        client = distributed.Client(os.environ["TORTURE_SCHEDULER"], timeout="30s")
    try:
        Worker(cfg, uid, out).run(out / "STOP")
    finally:
        if client is not None:
            client.close()


# --- the history ---------------------------------------------------------------------------------

@dataclass
class Op:
    """One operation of the history, with what the checker derives from it."""

    uid: int
    seq: int
    kind: str
    ds: str
    ref: str
    args: dict
    t0: float
    t1: float | None = None            # None: never returned (its process died)
    status: str = "unknown"            # ok, error, unknown
    result: Any = None
    error: str = ""
    error_type: str = ""
    snapshot: np.ndarray | None = None  # a read's data, or the commit read right after it returned
    digest: str | None = None
    killed_at: float | None = None

    @property
    def label(self) -> str:
        return f"u{self.uid}/s{self.seq} {self.kind}"

    def end(self, late: float) -> float:
        """The latest moment this op's effects may land: its return, or shortly after its process died."""
        if self.t1 is not None:
            return self.t1
        return (self.killed_at + late) if self.killed_at is not None else math.inf

    def describe(self) -> dict:
        d = dict(op=self.label, ref=self.ref, t0=round(self.t0, 3),
                 t1=None if self.t1 is None else round(self.t1, 3), status=self.status)
        if self.args:
            d["args"] = self.args
        if self.error:
            d["error"] = f"{self.error_type}: {self.error}"
        if self.killed_at is not None and self.t1 is None:
            d["killed_at"] = round(self.killed_at, 3)
        return d


@dataclass
class History:
    ops: list[Op]
    faults: list[dict] = field(default_factory=list)
    t_end: float = math.inf            # every worker had stopped by then


def load_history(out: Path) -> History:
    """Read every worker's JSON lines, the controller's fault log and the saved snapshots."""
    ops: dict[tuple[int, int], Op] = {}
    for path in sorted(out.glob("history-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by SIGKILL
                continue
            key = (rec["uid"], rec["seq"])
            if "t0" in rec:
                ops[key] = Op(rec["uid"], rec["seq"], rec["kind"], rec["ds"], rec["ref"], rec["args"], rec["t0"])
            elif key in ops and "t1" in rec:
                op = ops[key]
                op.t1, op.status = rec["t1"], rec["status"]
                op.result, op.error, op.error_type = rec.get("result"), rec.get("error", ""), rec.get("error_type", "")
            elif key in ops and "snapshot" in rec:
                ops[key].snapshot = np.load(out / "snapshots" / rec["snapshot"])
                ops[key].digest = rec["digest"]
    faults, t_end = [], math.inf
    flog = out / "faults.jsonl"
    if flog.exists():
        for line in flog.read_text().splitlines():
            rec = json.loads(line)
            if rec["fault"] == "end":
                t_end = rec["t"]
            else:
                faults.append(rec)
    kills = {f["uid"]: f["t"] for f in faults if f["fault"] == "kill"}
    for op in ops.values():
        if op.t1 is None:
            op.killed_at = kills.get(op.uid)
    return History(sorted(ops.values(), key=lambda o: o.t0), faults, t_end)


# --- the checker ---------------------------------------------------------------------------------

class StorageView(Protocol):
    """What the checker reads at the end (the real one goes through hubdask's public API)."""

    def branches(self, ds: str) -> list[str]: ...
    def tags(self, ds: str) -> dict[str, str]: ...
    def read(self, ds: str, ref: str) -> np.ndarray: ...


class HubStorage:
    """`StorageView` over ``hd.load`` on one root."""

    def __init__(self, root: str) -> None:
        import hubdask as hd

        self.hd, self.root = hd, root

    def branches(self, ds: str) -> list[str]:
        return list(self.hd.load(ds, storage=self.root).branches)

    def tags(self, ds: str) -> dict[str, str]:
        return dict(self.hd.load(ds, storage=self.root).tags)

    def read(self, ds: str, ref: str) -> np.ndarray:
        return np.asarray(self.hd.load(f"{ds}:{ref}", storage=self.root, cache=False))


@dataclass
class Effect:
    """Values an op may have put at some elements of one branch, between ``t0`` and ``end``."""

    op: Op
    idx: np.ndarray      # flat element indices
    vals: np.ndarray     # the value at each of them
    t0: float
    end: float


@dataclass
class Cover:
    """An op that certainly wrote these elements of one branch, between ``t0`` and ``t1``."""

    op: Op
    idx: np.ndarray
    t0: float
    t1: float


@dataclass
class Incarnation:
    """One life of the shared branch between two re-creations (delete, then branch again from main).
    An op whose window meets ``span`` may have acted on it; one wholly inside ``interior`` certainly did
    (if it returned). ``initial``: its base commit's values (None: not known, any value may stand until
    a write returned)."""

    key: tuple[str, str]
    span: tuple[float, float]
    interior: tuple[float, float]
    initial: np.ndarray | None
    certain: bool  # its re-creation returned and overlapped no other: it exists unless deleted later


@dataclass
class ShapeChange:
    """A resize or append that may have set the row count to ``rows`` (None: unknown) between ``t0`` and
    ``end``; ``t1`` if it returned."""

    op: Op
    rows: int | None
    t0: float
    end: float
    t1: float | None


@dataclass
class Anomaly:
    invariant: str
    ds: str
    ref: str
    message: str
    detail: dict = field(default_factory=dict)

    def __str__(self) -> str:
        extra = json.dumps(self.detail, default=str) if self.detail else ""
        return f"[{self.invariant}] {self.ds}:{self.ref}: {self.message} {extra}".rstrip()


@dataclass
class Report:
    anomalies: list[Anomaly] = field(default_factory=list)
    counts: collections.Counter = field(default_factory=collections.Counter)  # anomalies per invariant
    ops: collections.Counter = field(default_factory=collections.Counter)     # "kind status" -> n
    faults: collections.Counter = field(default_factory=collections.Counter)
    checked: collections.Counter = field(default_factory=collections.Counter)  # what was compared
    errors: dict = field(default_factory=dict)  # "kind ErrorType" -> the first such error, for the record
    events: collections.Counter = field(default_factory=collections.Counter)  # reads/commits/refs with anomalies
    limit: int = 12  # detailed anomalies kept per invariant (all are counted)

    def add(self, anomaly: Anomaly, n: int = 1, event: bool = True) -> None:
        """Keep ``anomaly`` (up to ``limit`` per invariant); count ``n`` elements (or refs) and one event."""
        if sum(a.invariant == anomaly.invariant for a in self.anomalies) < self.limit:
            self.anomalies.append(anomaly)
        self.counts[anomaly.invariant] += n
        self.events[anomaly.invariant] += int(event)

    @property
    def ok(self) -> bool:
        return not self.counts

    def to_json(self) -> str:
        return json.dumps(dict(counts=self.counts, events=self.events, ops=self.ops, faults=self.faults, checked=self.checked,
                               errors=self.errors,
                               anomalies=[dataclasses.asdict(a) for a in self.anomalies]), default=str, indent=1)

    def summary(self, per_invariant: int = 3) -> str:
        """Figures, then the first anomalies of each invariant (all kept ones: `to_json`)."""
        lines = [f"operations: {sum(self.ops.values())} ({', '.join(f'{k} {v}' for k, v in sorted(self.ops.items()))})",
                 f"faults injected: {sum(self.faults.values())} ({', '.join(f'{k} {v}' for k, v in sorted(self.faults.items()))})",
                 f"checked: {', '.join(f'{k} {v}' for k, v in sorted(self.checked.items()))}",
                 f"anomalies: {sum(self.counts.values())}"
                 + (f" ({', '.join(f'{k} {v} in {self.events[k]}' for k, v in sorted(self.counts.items()))};"
                    " elements or refs, in reads/commits/refs)" if self.counts else "")]
        lines += [f"  first {kind}: {text}" for kind, text in sorted(self.errors.items())[:12]]
        shown: collections.Counter = collections.Counter()
        for a in self.anomalies:
            shown[a.invariant] += 1
            if shown[a.invariant] <= per_invariant:
                lines.append(f"  {a}")
        return "\n".join(lines)


def box_indices(sel: list[list[int]], shape: tuple[int, ...]) -> np.ndarray:
    """Flat C-order indices of the elements of a box ``[[lo, hi], ...]``."""
    ranges = [np.arange(lo, min(hi, s)) for (lo, hi), s in zip(sel, shape)]
    return np.ravel_multi_index(np.meshgrid(*ranges, indexing="ij"), shape).ravel()


def decode(value: int) -> str:
    value = int(value)
    return "fill" if value == 0 else f"u{value // VALUE_BASE}/s{value % VALUE_BASE}"


class Checker:
    """Builds every branch's effects and covers from a history, then judges what storage holds."""

    def __init__(self, history: History, specs: Iterable[DatasetSpec], late_landing: float = 1.0,
                 fill: int = 0, shared: str | None = None) -> None:
        self.h, self.late, self.fill, self.shared = history, late_landing, fill, shared
        self.specs = {s.name: s for s in specs}
        self.report = Report()
        self.effects: dict[tuple[str, str], list[Effect]] = collections.defaultdict(list)
        self.covers: dict[tuple[str, str], list[Cover]] = collections.defaultdict(list)
        self.initial: dict[tuple[str, str], np.ndarray | None] = {}
        self.by_cid: dict[str, Op] = {}
        self.by_value: dict[int, Op] = {}
        self.created: dict[tuple[str, str], Op] = {}   # private branches whose creation returned
        self.deleting: set[tuple[str, str]] = set()    # branches some delete was tried on
        self.merges: list[tuple[Op, np.ndarray, np.ndarray]] = []
        self.lives: dict[str, list[Incarnation]] = {}  # ds -> the shared branch's incarnations, in order
        self.shapes: dict[tuple[str, str], list[ShapeChange]] = collections.defaultdict(list)
        self._indexes: dict[tuple[str, str], tuple] = {}
        for op in history.ops:
            outcome = "died" if op.t1 is None else op.status if op.status == "ok" else f"error:{op.error_type}"
            self.report.ops[f"{op.kind} {outcome}"] += 1
            if op.status == "error":
                self.report.errors.setdefault(f"{op.kind} {op.error_type}", f"{op.label}: {op.error}"[:300])
        for f in history.faults:
            self.report.faults[f["fault"] + (f"-{f['kind']}" if f.get("kind") else "")] += 1
        for spec in self.specs.values():
            self.initial[(spec.name, "main")] = np.full(math.prod(spec.shape), fill, dtype=np.int64)
            if shared is not None and not spec.grow:
                self.lives[spec.name] = self._incarnations(spec)
        self._build()

    def _incarnations(self, spec: DatasetSpec) -> list[Incarnation]:
        """The shared branch's lives: re-creations whose windows overlap are one boundary between two."""
        ds = spec.name
        bounds: list[list] = []  # [lo, hi, ops]
        for op in self.h.ops:
            if op.ds == ds and op.kind == "recreate" and op.error_type != "Skipped":
                end = op.end(self.late)
                if bounds and op.t0 <= bounds[-1][1]:
                    bounds[-1][1] = max(bounds[-1][1], end)
                    bounds[-1][2].append(op)
                else:
                    bounds.append([op.t0, end, [op]])
        fill = np.full(math.prod(spec.shape), self.fill, dtype=np.int64)
        lives = [Incarnation((ds, f"{self.shared}#0"), (-math.inf, bounds[0][1] if bounds else math.inf),
                             (-math.inf, bounds[0][0] if bounds else math.inf), fill, True)]
        for i, (lo, hi, ops) in enumerate(bounds):
            nxt = bounds[i + 1] if i + 1 < len(bounds) else None
            oks = [op for op in ops if op.status == "ok"]
            certain = len(ops) == 1 and len(oks) == 1 and oks[0].snapshot is not None
            # no re-creation returned: the old life may go on (its values may stand), or a new one began
            start = lo if oks else lives[-1].span[0]
            lives.append(Incarnation((ds, f"{self.shared}#{i + 1}"), (start, nxt[1] if nxt else math.inf),
                                     (hi, nxt[0] if nxt else math.inf),
                                     oks[0].snapshot.ravel().astype(np.int64) if certain else None, certain))
        for life in lives:
            self.initial[life.key] = life.initial
        return lives

    def _lives(self, ds: str, ref: str, t0: float, end: float) -> list[tuple[str, str]]:
        """The keys of the branch lives an op on ``ref`` in ``[t0, end]`` may have acted on."""
        if ref != self.shared or ds not in self.lives:
            return [(ds, ref)]
        return [life.key for life in self.lives[ds] if t0 <= life.span[1] and end >= life.span[0]]

    def _life(self, ds: str, ref: str, t0: float, t1: float) -> tuple[str, str] | None:
        """The key of the branch life an op on ``ref`` in ``[t0, t1]`` certainly acted on (None: it
        overlapped a re-creation of the shared branch)."""
        if ref != self.shared or ds not in self.lives:
            return (ds, ref)
        for life in self.lives[ds]:
            if life.interior[0] < t0 and t1 < life.interior[1]:
                return life.key
        return None

    # .. effects
    def _build(self) -> None:
        for op in self.h.ops:  # the op that returned a commit id and read it back
            if op.status == "ok" and isinstance(op.result, dict) and op.result.get("cid"):
                if op.snapshot is not None or op.result["cid"] not in self.by_cid:
                    self.by_cid[op.result["cid"]] = op
        for op in self.h.ops:
            spec = self.specs.get(op.ds)
            if spec is None:
                continue
            if op.error_type == "Skipped":
                continue
            if op.kind in WRITES or op.kind == "append":
                value = op.args["value"]
                self.by_value[value] = op
                if op.kind == "append":
                    done = op.status == "ok"
                    rows = op.result["rows"] if done else [spec.grow, spec.shape[0]]  # somewhere beyond
                    sel = [rows] + [[0, n] for n in spec.shape[1:]]
                    self._shape(op, rows[1] if done else None)
                else:
                    sel = op.args["sel"]
                self._write(op, box_indices(sel, spec.shape), value)
            elif op.kind == "resize":  # the rows it cuts read the fill value if the array grows again
                sel = [[op.args["rows"], spec.shape[0]]] + [[0, n] for n in spec.shape[1:]]
                self._write(op, box_indices(sel, spec.shape), self.fill)
                self._shape(op, op.args["rows"])
            elif op.kind == "recreate":
                self.deleting.add((op.ds, op.args["branch"]))
            elif op.kind == "branch" and op.status == "ok":
                bkey = (op.ds, op.args["branch"])
                self.created[bkey] = op
                self.initial[bkey] = None if op.snapshot is None else op.snapshot.ravel().astype(np.int64)
            elif op.kind == "delete_branch":
                self.deleting.add((op.ds, op.args["branch"]))
            elif op.kind == "merge":
                self._merge(op, spec)

    def _write(self, op: Op, idx: np.ndarray, value: int) -> None:
        """``op`` may have put ``value`` at ``idx`` (and did, if it returned) on its branch."""
        end = op.end(self.late)
        for key in self._lives(op.ds, op.ref, op.t0, end):
            self.effects[key].append(Effect(op, idx, np.full(idx.size, value, np.int64), op.t0, end))
        if op.status == "ok" and (key := self._life(op.ds, op.ref, op.t0, op.t1)) is not None:
            self.covers[key].append(Cover(op, idx, op.t0, op.t1))

    def _shape(self, op: Op, rows: int | None) -> None:
        self.shapes[(op.ds, op.ref)].append(ShapeChange(op, rows, op.t0, op.end(self.late),
                                                        op.t1 if op.status == "ok" else None))

    def _merge(self, op: Op, spec: DatasetSpec) -> None:
        """A merge writes into main the elements its branch's commit changed against the branch's base."""
        if op.status == "error" and op.error_type == "ConflictError":
            return  # documented: nothing applied
        theirs, base = self.by_cid.get(op.args["theirs"]), self.by_cid.get(op.args["base"])
        if theirs is None or base is None or theirs.snapshot is None or base.snapshot is None:
            return  # the worker merges only with both snapshots in hand
        t, b = theirs.snapshot.ravel(), base.snapshot.ravel()
        idx = np.flatnonzero(t != b)
        key = (op.ds, "main")
        self.effects[key].append(Effect(op, idx, t[idx].astype(np.int64), op.t0, op.end(self.late)))
        if op.status == "ok":
            self.covers[key].append(Cover(op, idx, op.t0, op.t1))
            self.merges.append((op, idx, t[idx]))

    # .. judging one read
    def _index(self, key: tuple[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, list[Effect]]]:
        """Per branch, built once: every cover's (element, invocation, return) sorted by return, and the
        effects that may have produced each value."""
        if key not in self._indexes:
            covers = self.covers.get(key, [])
            idx = np.concatenate([c.idx for c in covers]) if covers else np.zeros(0, np.int64)
            t0 = np.concatenate([np.full(c.idx.size, c.t0) for c in covers]) if covers else np.zeros(0)
            t1 = np.concatenate([np.full(c.idx.size, c.t1) for c in covers]) if covers else np.zeros(0)
            order = np.argsort(t1, kind="stable")
            by_value: dict[int, list[Effect]] = collections.defaultdict(list)
            for e in self.effects.get(key, ()):
                for value in np.unique(e.vals):
                    by_value[int(value)].append(e)
            self._indexes[key] = (idx[order], t0[order], t1[order], by_value)
        return self._indexes[key]

    def judge(self, ds: str, ref: str, obs: np.ndarray, r0: float, r1: float, invariant: str,
              what: str) -> int:
        """Report every element of ``obs`` (branch ``ref`` read at ``[r0, r1]``) no allowed write produced,
        and a shape no resize or append made."""
        spec = self.specs[ds]
        key = self._life(ds, ref, r0, r1)
        if key is None:
            self.report.checked[f"{invariant}s of the shared branch across a re-creation (not judged)"] += 1
            return 0
        ref = key[1]
        obs = np.asarray(obs)
        if not self.judge_shape(spec, key, obs.shape, r0, r1, invariant, what):
            return 1
        obs = obs.ravel().astype(np.int64)
        if obs.size < math.prod(spec.shape):  # rows beyond the array's shape: nothing to judge there
            obs = np.concatenate([obs, np.full(math.prod(spec.shape) - obs.size, ABSENT, np.int64)])
        cidx, ct0, ct1, by_value = self._index(key)
        latest = np.full(obs.size, -math.inf)  # per element: the last invocation of a write that returned before r0
        done = int(np.searchsorted(ct1, r0, side="left"))
        np.maximum.at(latest, cidx[:done], ct0[:done])
        initial = self.initial.get(key)
        ok = latest == -math.inf if initial is None else (latest == -math.inf) & (obs == initial)
        ok |= obs == ABSENT
        for value in np.unique(obs[~ok]):
            for e in by_value.get(int(value), ()):
                if e.t0 < r1:
                    idx = e.idx[e.vals == value]
                    ok[idx] |= (obs[idx] == value) & (e.end >= latest[idx])
        self.report.checked[f"{invariant} elements"] += obs.size
        bad = np.flatnonzero(~ok)
        for i, flat in enumerate(bad[:3]):
            self.report.add(self._explain(ds, ref, spec, int(flat), int(obs[flat]), latest[flat], r0, r1,
                                          invariant, what), n=int(bad.size) if i == 0 else 0, event=i == 0)
        return int(bad.size)

    def judge_shape(self, spec: DatasetSpec, key: tuple[str, str], shape: tuple[int, ...], r0: float, r1: float,
                    invariant: str, what: str) -> bool:
        """Report a shape that no resize or append allowed at ``[r0, r1]`` made (each is one atomic change
        of the row count: a register, judged like an element); False if the elements cannot be judged."""
        ds, ref = key
        rows = shape[0] if shape else None
        self.report.checked[f"{invariant} shapes"] += 1
        if not spec.grow or shape[1:] != spec.shape[1:] or rows > spec.shape[0]:
            if tuple(shape) == spec.shape and not spec.grow:
                return True
            self.report.add(Anomaly("shape", ds, ref, f"{what}: shape {tuple(shape)}, expected "
                                    f"{spec.shape if not spec.grow else ('<=%d' % spec.shape[0],) + spec.shape[1:]}"))
            return False
        changes = self.shapes.get(key, [])
        latest = max((c.t0 for c in changes if c.t1 is not None and c.t1 < r0), default=-math.inf)
        if latest == -math.inf and rows == spec.grow:
            return True
        if any(c.t0 < r1 and c.end >= latest and c.rows in (None, rows) for c in changes):
            return True
        dominator = next((c.op.describe() for c in changes if c.t1 is not None and c.t1 < r0 and c.t0 == latest), None)
        self.report.add(Anomaly("shape", ds, ref, f"{what}: {rows} rows, which no resize or append that may have "
                                "landed (and was not overwritten) made",
                                dict(rows=rows, dominated_by=dominator,
                                     allowed=[dict(rows=c.rows, **c.op.describe()) for c in changes
                                              if c.t0 < r1 and c.end >= latest][-6:])))
        return True

    def _explain(self, ds: str, ref: str, spec: DatasetSpec, flat: int, found: int, latest: float, r0: float,
                 r1: float, invariant: str, what: str) -> Anomaly:
        key = (ds, ref)
        element = tuple(int(i) for i in np.unravel_index(flat, spec.shape))
        allowed, dominated = [], []
        for e in self.effects.get(key, ()):
            hit = np.flatnonzero(e.idx == flat)
            if not hit.size or e.t0 >= r1:
                continue
            entry = dict(value=decode(e.vals[hit[0]]), **e.op.describe())
            (allowed if e.end >= latest else dominated).append(entry)
        dominator = None
        for c in self.covers.get(key, ()):
            if c.t1 < r0 and c.t0 == latest and flat in c.idx:
                dominator = c.op.describe()
        producer = self.by_value.get(found)
        if found == self.fill or (self.initial.get(key) is not None and found == self.initial[key][flat]):
            kind = "lost write: the initial value is back although a write returned"
        elif producer is None and found not in {int(v) for e in self.effects.get(key, ()) for v in e.vals}:
            kind = "a value that no write produced"
        elif any(d["value"] == decode(found) for d in dominated):
            kind = "lost write: an overwritten (dominated) value is back"
        elif producer is not None and producer.ref != ref.partition("#")[0]:
            kind = (f"a value written on branch {producer.ref!r} that no merge which returned (or may have been "
                    "applied) brought here")
        else:
            kind = "a value that no write of this branch put at this element"
        detail = dict(element=element, found=decode(found), read_window=[round(r0, 3), round(r1, 3)],
                      allowed=allowed[-6:], dominated_by=dominator)
        if producer is not None:
            detail["found_written_by"] = producer.describe()
        if self.initial.get(key) is not None:
            detail["initial"] = decode(self.initial[key][flat])
        return Anomaly(invariant, ds, ref, f"{what}: {kind}", detail)

    # .. the whole check
    def run(self, storage: StorageView) -> Report:
        rep = self.report
        for op in self.h.ops:  # reads and commits during the run, against their own windows
            if op.ds not in self.specs or op.status != "ok" or op.snapshot is None:
                continue
            if op.kind == "read":
                self.judge(op.ds, op.ref, op.snapshot, op.t0, op.t1, "read", f"read by {op.label}")
            elif isinstance(op.result, dict) and op.result.get("cid"):
                self.judge(op.ds, op.ref, op.snapshot, op.t0, op.t1, "commit-snapshot",
                           f"commit {op.result['cid']} returned by {op.label}")
        for op, idx, vals in self.merges:
            if op.snapshot is None:
                continue
            got = op.snapshot.ravel()[idx]
            missing = np.flatnonzero(got != vals)
            rep.checked["merge-content elements"] += idx.size
            if missing.size:
                spec = self.specs[op.ds]
                f = int(idx[missing[0]])
                rep.add(Anomaly("merge-content", op.ds, "main",
                                f"merge commit {op.result['cid']} of {op.label} lacks {missing.size} element(s) "
                                "its branch changed", dict(element=tuple(int(i) for i in np.unravel_index(f, spec.shape)),
                                                           expected=decode(vals[missing[0]]),
                                                           found=decode(got[missing[0]]), merge=op.describe())),
                        n=int(missing.size))
        by_cid: dict[str, list[Op]] = collections.defaultdict(list)
        for op in self.h.ops:
            if op.status == "ok" and isinstance(op.result, dict) and op.result.get("cid"):
                by_cid[op.result["cid"]].append(op)
        per_branch = collections.Counter((ops[0].ds, ops[0].ref) for ops in by_cid.values())
        if per_branch:  # past refs.TRIM_EVERY + CLAIMS_KEPT, the branch's claim log was trimmed
            rep.checked["commits on the busiest branch"] = max(per_branch.values())
        for cid, ops in by_cid.items():  # every commit id that returned: readable, and as it was then
            rep.checked["commits"] += 1
            try:
                data = storage.read(ops[0].ds, cid)
            except Exception as exc:
                if not any(self._must_keep(op) for op in ops):
                    rep.checked["commits of deleted branches, collected"] += 1
                    continue
                rep.add(Anomaly("commit-unreadable", ops[0].ds, cid, f"commit returned by {ops[0].label} cannot be "
                                f"read: {type(exc).__name__}: {str(exc)[:300]}", ops[0].describe()))
                continue
            for op in ops:
                if op.snapshot is None or digest(data) == digest(op.snapshot):
                    continue
                diff = np.flatnonzero(data.ravel() != op.snapshot.ravel()) if data.size == op.snapshot.size else []
                f = int(diff[0]) if len(diff) else 0
                rep.add(Anomaly("commit-changed", op.ds, cid,
                                f"commit returned by {op.label} differs from what it was when it returned "
                                f"({len(diff)} elements)", dict(first_element=f, then=decode(op.snapshot.ravel()[f]),
                                                                now=decode(data.ravel()[f]) if data.size else None)))
        for spec in self.specs.values():
            self._final(storage, spec)
        return rep

    def _must_keep(self, op: Op) -> bool:
        """Whether a ref still reaches the commit ``op`` returned: always, unless it was made on a private
        branch that was (perhaps) deleted and never merged (then gc may rightly collect it)."""
        if op.ref == self.shared and op.ds in self.lives:  # a commit of the shared branch's last life
            last = self.lives[op.ds][-1]
            return last.certain and self._life(op.ds, op.ref, op.t0, op.t1) == last.key
        if op.ref == "main" or (op.ds, op.ref) not in self.deleting:
            return True
        return any(m.ds == op.ds and m.args["branch"] == op.ref and m.t0 > op.t1 for m, _, _ in self.merges)

    def _final(self, storage: StorageView, spec: DatasetSpec) -> None:
        rep, ds = self.report, spec.name
        try:
            branches, tags = storage.branches(ds), storage.tags(ds)
        except Exception as exc:
            rep.add(Anomaly("ref-unreadable", ds, "*", f"refs cannot be listed: {type(exc).__name__}: {exc}"))
            return
        for (d, b), op in self.created.items():
            if d == ds and b not in branches and (d, b) not in self.deleting:
                rep.add(Anomaly("ref-missing", ds, b, f"branch made by {op.label} (never deleted) is gone"))
        if ds in self.lives and self.lives[ds][-1].certain and self.shared not in branches:
            rep.add(Anomaly("ref-missing", ds, self.shared, "the shared branch is gone although its last "
                            "re-creation returned (or it never was re-created)"))
        for op in self.h.ops:
            if op.ds == ds and op.kind == "tag" and op.status == "ok":
                name, cid = op.args["tag"], op.result["cid"]
                if name not in tags:
                    rep.add(Anomaly("ref-missing", ds, name, f"tag made by {op.label} is gone"))
                elif tags[name] != cid:
                    rep.add(Anomaly("tag-moved", ds, name, f"tag made by {op.label} at {cid} now names {tags[name]}"))
        for tag in tags:
            rep.checked["tags"] += 1
            try:
                storage.read(ds, tag)
            except Exception as exc:
                rep.add(Anomaly("ref-unreadable", ds, tag, f"tag cannot be read: {type(exc).__name__}: {exc}"))
        for branch in branches:
            rep.checked["branches"] += 1
            try:
                data = storage.read(ds, branch)
            except Exception as exc:
                rep.add(Anomaly("ref-unreadable", ds, branch, f"branch cannot be read: {type(exc).__name__}: {exc}"))
                continue
            shared = branch == self.shared and ds in self.lives
            if branch != "main" and (ds, branch) not in self.created and not shared:
                continue  # its creation never returned: its base is unknown
            self.judge(ds, branch, data, self.h.t_end, self.h.t_end, "branch-final", "final read")


def check(history: History, storage: StorageView, specs: Iterable[DatasetSpec], late_landing: float = 1.0,
          shared: str | None = None) -> Report:
    """Compare ``storage`` against ``history``; returns the report (``.ok``, ``.counts``, ``.summary()``).
    ``shared``: the branch of every fixed-shape dataset that the workers share (and may re-create)."""
    return Checker(history, specs, late_landing, shared=shared).run(storage)


# --- the controller ------------------------------------------------------------------------------

class Controller:
    """Starts the workers, injects faults, stops everything; see `run`."""

    def __init__(self, cfg: Config, out: Path, proxy: Any = None, echo: Callable[[str], None] = print,
                 cluster: Any = None) -> None:
        self.cfg, self.out, self.proxy, self.echo, self.cluster = cfg, out, proxy, echo, cluster
        self.rng = random.Random(cfg.seed)
        self.next_uid = 1
        self.procs: dict[int, subprocess.Popen] = {}  # uid -> process
        self.stopped: dict[int, float] = {}            # uid -> when to SIGCONT
        self.long: set[int] = set()                    # workers that had a long stop
        self.proxy_until: float | None = None
        self.flog = open(out / "faults.jsonl", "a", buffering=1)
        (out / "snapshots").mkdir(exist_ok=True)
        (out / "config.json").write_text(cfg.to_json())
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in [str(Path(__file__).resolve().parent.parent),
                                                              os.environ.get("PYTHONPATH", "")] if p)
        self.env.setdefault("HUBDASK_RETRY_TIMEOUT", "20")
        if cfg.scheduler:
            lease = f"{cfg.lease_timeout}s"
            self.env["DASK_DISTRIBUTED__SCHEDULER__LOCKS__LEASE_TIMEOUT"] = lease

    def fault(self, **rec: Any) -> None:
        rec["t"] = time.monotonic()
        self.flog.write(json.dumps(rec) + "\n")
        self.flog.flush()

    def spawn(self) -> int:
        uid, self.next_uid = self.next_uid, self.next_uid + 1
        log = open(self.out / f"worker-{uid}.log", "w")
        self.procs[uid] = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "worker", str(self.out / "config.json"), str(uid),
             str(self.out)], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return uid

    def alive(self) -> list[int]:
        return [u for u, p in self.procs.items() if p.poll() is None]

    def inject(self) -> None:
        kinds = [k for k in self.cfg.faults if (k != "proxy" or self.proxy is not None)
                 and (k != "kill_dask" or self.cluster is not None)]
        if not kinds:
            return
        kind = self.rng.choice(kinds)
        running = [u for u in self.alive() if u not in self.stopped]
        if kind == "longstop" and (len(running) < 2 or any(u in self.long for u in self.stopped)):
            kind = "stop"  # one long stop at a time, and never the last running worker
        if kind == "kill" and running:
            uid = self.rng.choice(running)
            self.fault(fault="kill", uid=uid)
            self.procs[uid].send_signal(signal.SIGKILL)
            self.procs.pop(uid).wait()
            self.spawn()
        elif kind in ("stop", "longstop") and running:
            uid = self.rng.choice(running)
            lo, hi = self.cfg.stop_hold if kind == "stop" else self.cfg.long_stop_hold
            hold = self.rng.uniform(lo, hi)
            if self.cfg.scheduler:
                hold = max(hold, self.cfg.lease_timeout * 2 + 1.0)  # past the lease and its validation
            self.fault(fault=kind, uid=uid, hold=round(hold, 2))
            if kind == "longstop":
                self.long.add(uid)
            self.procs[uid].send_signal(signal.SIGSTOP)
            self.stopped[uid] = time.monotonic() + hold
        elif kind == "kill_dask":
            pids = [n.process.process.pid for n in self.cluster.workers.values()
                    if getattr(n, "process", None) is not None and n.process.process is not None]
            pids = [p for p in pids if p]  # never 0 (os.kill(0) is the whole process group)
            if pids:
                pid = self.rng.choice(pids)
                self.fault(fault="kill_dask", pid=pid)
                os.kill(pid, signal.SIGKILL)  # its nanny starts a new worker process
        elif kind == "proxy" and self.proxy_until is None:
            faults = self.rng.choice([dict(error_rate=0.3), dict(reset_rate=0.15), dict(truncate_rate=0.15),
                                      dict(latency=0.15, jitter=0.15), dict(error_rate=0.1, reset_rate=0.1)])
            lo, hi = self.cfg.proxy_hold
            self.proxy_until = time.monotonic() + self.rng.uniform(lo, hi)
            self.fault(fault="proxy", kind="+".join(sorted(faults)), **faults)
            self.proxy.set(**faults)

    def tick(self) -> None:
        now = time.monotonic()
        for uid, when in list(self.stopped.items()):
            if now >= when:
                self.procs[uid].send_signal(signal.SIGCONT)
                del self.stopped[uid]
        if self.proxy_until is not None and now >= self.proxy_until:
            self.proxy.clear()
            self.proxy_until = None
        for uid, p in list(self.procs.items()):  # a worker that exited on its own (a crash): replace it
            if p.poll() is not None and not (self.out / "STOP").exists():
                self.fault(fault="exit", uid=uid, code=p.returncode)
                del self.procs[uid]
                self.spawn()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until every first worker has started its history (imports done): the run's clock and the
        faults start then, so a slow machine does not eat the run's time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all((self.out / f"history-{u}.jsonl").exists() for u in self.procs):
            if any(p.poll() is not None for p in self.procs.values()):
                break  # one died at start: tick() replaces it, its log says why
            time.sleep(0.05)

    def run(self) -> None:
        cfg = self.cfg
        for _ in range(cfg.workers):
            self.spawn()
        self.wait_ready()
        deadline = time.monotonic() + cfg.seconds
        next_fault = time.monotonic() + self.rng.expovariate(1 / cfg.fault_interval)
        try:
            while time.monotonic() < deadline:
                time.sleep(0.05)
                self.tick()
                if cfg.faults and time.monotonic() >= next_fault:
                    self.inject()
                    next_fault = time.monotonic() + self.rng.expovariate(1 / cfg.fault_interval)
        finally:
            self.finish()

    def finish(self) -> None:
        """SIGCONT every stopped worker, clear the proxy, ask everyone to stop; SIGKILL whoever is late."""
        for uid in list(self.stopped):
            self.procs[uid].send_signal(signal.SIGCONT)
        self.stopped.clear()
        if self.proxy is not None:
            self.proxy.clear()
        (self.out / "STOP").touch()
        deadline = time.monotonic() + self.cfg.drain
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        for uid in self.alive():
            self.fault(fault="kill", uid=uid, kind="drain")
            self.procs[uid].send_signal(signal.SIGKILL)
            self.procs[uid].wait()
        self.fault(fault="end")
        self.flog.close()


def create_datasets(cfg: Config) -> None:
    import hubdask as hd

    for spec in cfg.datasets:
        a = hd.array(spec.write_shape, spec.name, dtype="int64", chunks=spec.chunks, shards=spec.shards,
                     storage=cfg.root)
        if not spec.grow:
            a.branch(cfg.shared)


def _lock_acquisitions(cluster: Any) -> int | None:
    """How many hubdask chunk locks the scheduler granted (proof the workers' writes went through it)."""
    try:
        metrics = cluster.scheduler.extensions["semaphores"].metrics["acquire_total"]
        return sum(n for name, n in metrics.items() if str(name).startswith("hubdask-lock-"))
    except (AttributeError, KeyError):
        return None


def _close_cluster(cluster: Any, echo: Callable[[str], None]) -> None:
    """Close the LocalCluster; if a worker process it restarted after a kill does not stop in time,
    SIGKILL the worker processes this run started (by pid) so that none is left behind."""
    pids = [n.process.process.pid for n in cluster.workers.values()
            if getattr(n, "process", None) is not None and n.process.process is not None]
    try:
        cluster.close(timeout=10)
    except Exception as exc:  # distributed raises TimeoutError from a nanny's kill
        echo(f"torture: closing the dask cluster failed ({type(exc).__name__}); killing its workers")
    for pid in pids:
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run(cfg: Config, out: Path, proxy: Any = None, echo: Callable[[str], None] = print) -> Report:
    """One torture run in the empty folder ``out``: datasets, workers and faults, then the check.

    ``proxy`` (a `support.faultproxy.FaultProxy` the workers' S3 endpoint goes through) enables the
    "proxy" faults. With ``cfg.scheduler``, a dask scheduler is started here and every worker is a client
    of it (chunk locks go through the scheduler, leases of ``cfg.lease_timeout`` seconds)."""
    out.mkdir(parents=True, exist_ok=True)
    create_datasets(cfg)
    cluster, locks = None, None
    if cfg.scheduler:
        import dask
        import distributed

        # killed dask workers and clients make distributed log tracebacks by design: keep errors only
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
        logging.getLogger("distributed").setLevel(logging.ERROR)
        interval = f"{max(cfg.lease_timeout / 4, 0.1)}s"
        with dask.config.set({"distributed.scheduler.locks.lease-validation-interval": interval,
                              "distributed.scheduler.locks.lease-timeout": f"{cfg.lease_timeout}s"}):
            cluster = distributed.LocalCluster(n_workers=cfg.dask_workers, threads_per_worker=2,
                                               dashboard_address=":0", processes=True)
        os.environ["TORTURE_SCHEDULER"] = cluster.scheduler_address
    try:
        ctl = Controller(cfg, out, proxy, echo, cluster)
        if cluster is not None:
            ctl.env["TORTURE_SCHEDULER"] = cluster.scheduler_address
        started = time.monotonic()
        ctl.run()
        echo(f"torture: {cfg.workers} workers for {time.monotonic() - started:.1f}s on {cfg.root}")
    finally:
        if cluster is not None:
            locks = _lock_acquisitions(cluster)
            _close_cluster(cluster, echo)
            os.environ.pop("TORTURE_SCHEDULER", None)
    history = load_history(out)
    report = check(history, HubStorage(cfg.root), cfg.datasets, cfg.late_landing, cfg.shared)
    if locks is not None:
        report.checked["scheduler lock acquisitions"] = locks
    (out / "report.json").write_text(report.to_json())
    echo(report.summary())
    return report


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "worker":
        try:
            worker_main(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        except Exception:
            traceback.print_exc()
            sys.exit(1)
    else:
        sys.exit("usage: torture.py worker CONFIG.json UID OUT_DIR (started by torture.run)")
