"""Training input: hubdask streaming from S3 (moto's server) vs litdata, mosaicml-streaming, webdataset
on the same data from the same server, and vs local .npy files.

The same samples (uint8 images, 64x64x3 by default, and int64 labels) feed the same loop (shuffled
batches of 256, 2 DataLoader workers, persistent; the loop only touches each batch), from:

  (a) hubdask: a tagged dataset on S3 with a dataset's default codecs, ``ds.pytorch(...)``;
  (b) litdata: ``optimize``d chunks uploaded to S3, ``StreamingDataset`` + ``StreamingDataLoader``;
  (c) mosaicml-streaming: MDS shards (no compression) uploaded to S3, ``StreamingDataset``;
  (d) webdataset: tar shards of .npy samples uploaded to S3, read by presigned HTTP GETs (curl), shard
      cache on disk;
  (e) local .npy files, memory-mapped, a map-style Dataset indexed per sample (DataLoader shuffle).

"Cold" is the first epoch with an empty local cache (it includes starting the workers); "warm" the best
of the next ``--epochs`` epochs (chunks or shards from each library's local cache). With ``--rounds R``
every source is measured R times in turn (caches emptied each round): a shared machine's load drifts,
so each round's ratio compares sources measured seconds apart, and the medians are reported. Prints
samples/s, CPU seconds, time to the first batch and hubdask's ratio to each peer; writes
results/training.{json,md}.

    python benchmarks/training.py [--n 20000] [--size 64] [--batch 256] [--workers 2] [--epochs 2]
                                  [--rounds 1] [--only hubdask,litdata,mosaic,webdataset,npy] [--codecs zstd]

The peers are in the ``bench`` extra. Installed with their dependencies they replace the CPU torch with a
CUDA build and mosaicml-streaming pins numpy<2.2, so next to ``torch==2.13.0`` (CPU) install them as
``pip install --no-deps litdata mosaicml-streaming webdataset`` plus ``pip install lightning-utilities
braceexpand catalogue "xxhash<4" zstd brotli python-snappy transformers boto3`` (what they import).
mosaicml-streaming imports torchvision for its vision datasets only; where torchvision is missing (the
CPU-only torch build has none that matches) a stub stands in for those two names.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, import_hubdask, machine, markdown_table, moto_s3, rmtree, versions, write_results  # noqa: E402

PEERS = ("hubdask", "litdata", "mosaic", "webdataset", "npy")


def make_data(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Photo-ish images: a smooth template per class plus noise (compresses a little, as photos do)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int64)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([(np.sin(xx / (3 + c) + c) * 60 + np.cos(yy / (5 + c)) * 60 + 128) for c in range(10)])
    base = np.repeat(base[..., None], 3, axis=-1).astype(np.uint8)
    noise = rng.integers(0, 32, (n, size, size, 3), dtype=np.uint8)
    return (base[labels] // 2 + noise).astype(np.uint8), labels


def cpu_seconds() -> float:
    """CPU time of this process and its live children (the loader's workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


LAST_CPU: list[float] = []
FIRST: list[float] = []  # seconds to each pass's first batch


def run_epoch(loader) -> tuple[int, float]:
    """(samples, seconds) of one pass; each batch is touched (a strided sum), as a training step reads it.
    The CPU seconds of the pass (loop and workers) go to LAST_CPU."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    n = 0
    for batch in loader:
        x, y = (batch["images"], batch["labels"]) if isinstance(batch, dict) else batch[:2]
        x.reshape(-1)[::4096].sum()
        if not n:
            FIRST.append(time.perf_counter() - t0)
        n += len(y)
    seconds = time.perf_counter() - t0
    LAST_CPU.append(cpu_seconds() - c0)
    return n, seconds


def upload(folder: Path, bucket: str, prefix: str) -> None:
    """Every file under ``folder`` to ``s3://bucket/prefix/`` (boto3, as the peers' own tools would)."""
    import boto3

    s3 = boto3.client("s3")
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


# --- the peers ------------------------------------------------------------------------------------------


def hubdask_prepare(x, y, work: Path, s3: dict, codecs: str | None = None) -> None:
    hd, _ = import_hubdask(("dataset",))
    spec = dict(data=x) if codecs is None else dict(data=x, codecs=codecs)
    ds = hd.dataset("bench/train", images=spec, labels=y, storage=f"s3://{s3['bucket']}/hub")
    ds.tag("v1")
    print(f"  hubdask images chunks {ds['images'].chunks}, codecs {codecs or 'default'}", flush=True)


def hubdask_loader(work: Path, s3: dict, args):
    hd, _ = import_hubdask(("dataset",))
    os.environ["HUBDASK_CACHE"] = str(work / "hub-cache")  # empty: the first epoch is cold
    ds = hd.load("bench/train:v1", storage=f"s3://{s3['bucket']}/hub")
    extra = {} if args.prefetch is None else {"prefetch": args.prefetch}
    return ds.pytorch(batch_size=args.batch, shuffle=True, seed=0, num_workers=args.workers,
                      persistent_workers=args.workers > 0, **extra)


_X: np.ndarray | None = None
_Y: np.ndarray | None = None


def _lit_sample(i: int) -> dict:
    return {"images": _X[i], "labels": int(_Y[i])}


def litdata_prepare(x, y, work: Path, s3: dict) -> None:
    global _X, _Y
    from litdata import optimize

    out = work / "litdata-out"
    _X, _Y = x, y
    optimize(fn=_lit_sample, inputs=list(range(len(y))), output_dir=str(out), chunk_bytes="8MB", num_workers=1,
             verbose=False, start_method="fork")
    upload(out, s3["bucket"], "litdata")


def litdata_loader(work: Path, s3: dict, args):
    from litdata import StreamingDataLoader, StreamingDataset
    from litdata.streaming import downloader

    downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True  # moto speaks plain HTTP (AWS: HTTPS)
    ds = StreamingDataset(f"s3://{s3['bucket']}/litdata", cache_dir=str(work / "litdata-cache"), shuffle=True,
                          seed=0, storage_options={"endpoint_url": s3["endpoint"]})
    return StreamingDataLoader(ds, batch_size=args.batch, num_workers=args.workers,
                               persistent_workers=args.workers > 0)


def _stub_torchvision() -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:
        try:
            import transformers.feature_extraction_utils  # noqa: F401  (it probes for torchvision: before the stub)
        except Exception:
            pass
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        tv = types.ModuleType("torchvision")
        datasets = types.ModuleType("torchvision.datasets")
        datasets.VisionDataset = type("VisionDataset", (), {})
        datasets.CIFAR10 = type("CIFAR10", (), {})
        transforms = types.ModuleType("torchvision.transforms")
        functional = types.ModuleType("torchvision.transforms.functional")
        functional.to_tensor = lambda pic: pic
        tv.datasets, tv.transforms, transforms.functional = datasets, transforms, functional
        sys.modules.update({"torchvision": tv, "torchvision.datasets": datasets,
                            "torchvision.transforms": transforms, "torchvision.transforms.functional": functional})


def mosaic_prepare(x, y, work: Path, s3: dict) -> None:
    _stub_torchvision()
    from streaming import MDSWriter

    out = work / "mds-out"
    shape = ",".join(map(str, x.shape[1:]))
    with MDSWriter(out=str(out), columns={"images": f"ndarray:uint8:{shape}", "labels": "int64"},
                   compression=None, size_limit="8mb") as w:
        for img, label in zip(x, y):
            w.write({"images": img, "labels": np.int64(label)})
    upload(out, s3["bucket"], "mds")


def mosaic_loader(work: Path, s3: dict, args):
    _stub_torchvision()
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory
    from torch.utils.data import DataLoader

    clean_stale_shared_memory()
    os.environ["S3_ENDPOINT_URL"] = s3["endpoint"]
    ds = StreamingDataset(remote=f"s3://{s3['bucket']}/mds", local=str(work / "mds-cache"), shuffle=True,
                          shuffle_seed=0, batch_size=args.batch)
    return DataLoader(ds, batch_size=args.batch, num_workers=args.workers, persistent_workers=args.workers > 0)


def webdataset_prepare(x, y, work: Path, s3: dict) -> None:
    import webdataset as wds

    out = work / "wds-out"
    out.mkdir()
    with wds.ShardWriter(str(out / "shard-%04d.tar"), maxcount=682, verbose=0) as sink:
        for i, (img, label) in enumerate(zip(x, y)):
            sink.write({"__key__": f"{i:07d}", "images.npy": img, "labels.cls": int(label)})
    upload(out, s3["bucket"], "wds")


def webdataset_loader(work: Path, s3: dict, args):
    import webdataset as wds

    out = work / "wds-out"
    (work / "wds-cache").mkdir(exist_ok=True)
    import boto3

    sign = boto3.client("s3").generate_presigned_url  # private objects over plain HTTP: presigned GETs
    urls = [f"pipe:curl -sf --retry 5 '{sign('get_object', Params={'Bucket': s3['bucket'], 'Key': f'wds/{p.name}'}, ExpiresIn=7200)}'"
            for p in sorted(out.iterdir())]
    ds = (wds.WebDataset(urls, shardshuffle=len(urls), cache_dir=str(work / "wds-cache"), nodesplitter=None,
                         empty_check=False)
          .shuffle(1000).decode().to_tuple("images.npy", "labels.cls").batched(args.batch))
    return wds.WebLoader(ds, batch_size=None, num_workers=args.workers, persistent_workers=args.workers > 0)


class NpyFiles:
    """The same decoded arrays in local .npy files, memory-mapped, indexed per sample."""

    def __init__(self, x_path: str, y_path: str):
        self.x_path, self.y = x_path, np.load(y_path)
        self._x = None

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if self._x is None:
            self._x = np.load(self.x_path, mmap_mode="r")
        return {"images": np.array(self._x[i]), "labels": self.y[i]}


def npy_prepare(x, y, work: Path, s3: dict) -> None:
    np.save(work / "x.npy", x)
    np.save(work / "y.npy", y)


def npy_loader(work: Path, s3: dict, args):
    from torch.utils.data import DataLoader

    return DataLoader(NpyFiles(str(work / "x.npy"), str(work / "y.npy")), batch_size=args.batch, shuffle=True,
                      num_workers=args.workers, persistent_workers=args.workers > 0)


# --- main ---------------------------------------------------------------------------------------------


def child(peer: str, work: Path, s3: dict, args) -> None:
    """Measure one peer in this fresh process: print its cold and warm rates as JSON."""
    import json

    import torch

    torch.set_num_threads(1)
    loader = globals()[f"{peer}_loader"](work, s3, args)
    out = {}
    n, s = run_epoch(loader)
    out["cold"] = n / s
    out["cold cpu-s"] = LAST_CPU[-1]
    out["cold first-s"] = FIRST[-1]
    runs = [run_epoch(loader) for _ in range(args.epochs)]
    best = min(range(len(runs)), key=lambda i: runs[i][1])
    out["warm"] = runs[best][0] / runs[best][1]
    out["warm cpu-s"] = LAST_CPU[1 + best]
    out["warm first-s"] = FIRST[1 + best]
    print("RESULT " + json.dumps(out), flush=True)


CACHES = ("hub-cache", "litdata-cache", "mds-cache", "wds-cache")


def measure(peer: str, work: Path, s3: dict, args) -> dict | None:
    """One peer's cold and warm figures, measured by a fresh process (``child``)."""
    import json

    cmd = [sys.executable, __file__, "--child", peer, "--work", str(work), "--endpoint", s3["endpoint"],
           "--batch", str(args.batch), "--workers", str(args.workers), "--epochs", str(args.epochs)]
    cmd += ["--prefetch", str(args.prefetch)] if args.prefetch is not None else []
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
    if run.returncode or not lines:
        print(f"  {peer}: failed\n{run.stderr[-3000:]}", flush=True)
        return None
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="samples")
    ap.add_argument("--size", type=int, default=64, help="images are size x size x 3 uint8")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2, help="warm epochs measured (best is kept)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of every source in turn (medians reported)")
    ap.add_argument("--only", default=",".join(PEERS), help="comma-separated subset of " + ",".join(PEERS))
    ap.add_argument("--codecs", default=None, help="hubdask's images codecs (default: hubdask's default)")
    ap.add_argument("--prefetch", type=int, default=None, help="hubdask's blocks read ahead per worker")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HUBDASK_PROGRESS", "off")
    if args.child:
        child(args.child, Path(args.work), {"endpoint": args.endpoint, "bucket": "train"}, args)
        return
    only = args.only.split(",")
    x, y = make_data(args.n, args.size)
    work = Path(tempfile.mkdtemp(prefix="hubdask-bench-train-"))
    runs: dict[str, list[dict]] = {}  # peer -> its result in each round
    peers = [p for p in PEERS if p in only]
    try:
        print(f"{args.n} samples uint8 {args.size}x{args.size}x3 + int64 labels, batch {args.batch}, "
              f"{args.workers} workers, shuffled; each source measured in a fresh process, {args.rounds} "
              "round(s) of every source in turn", flush=True)
        with moto_s3("train") as s3:
            for peer in peers:
                prepare = globals()[f"{peer}_prepare"]
                prepare(x, y, work, s3, args.codecs) if peer == "hubdask" else prepare(x, y, work, s3)
            for r in range(args.rounds):
                for peer in peers:
                    for cache in CACHES:  # every round starts cold
                        rmtree(work / cache)
                    got = measure(peer, work, s3, args)
                    if got is None:
                        continue
                    runs.setdefault(peer, []).append({**got, "round": r})
                    for phase in ("cold", "warm"):
                        print(f"  round {r} {peer + ' ' + phase:18} {got[phase]:10.0f} samples/s   "
                              f"{got[f'{phase} cpu-s']:6.2f} CPU s (loop + workers)   "
                              f"first batch after {got[f'{phase} first-s']:.3f} s", flush=True)
    finally:
        rmtree(work)

    med = statistics.median
    rates = {f"{p} {ph}": med(g[ph] for g in gs) for p, gs in runs.items() for ph in ("cold", "warm")}
    cpu = {f"{p} {ph}": med(g[f"{ph} cpu-s"] for g in gs) for p, gs in runs.items() for ph in ("cold", "warm")}
    first = {f"{p} {ph}": med(g[f"{ph} first-s"] for g in gs) for p, gs in runs.items() for ph in ("cold", "warm")}
    rows = [[name, fmt(rate, ".0f"), fmt(cpu[name], ".2f"), fmt(first[name], ".3f")] for name, rate in rates.items()]
    md = markdown_table(["source (median of rounds)", "samples/s", "CPU s per epoch (loop + workers)",
                         "s to first batch"], rows)
    ratios = []
    for peer in ("litdata", "mosaic", "webdataset", "npy"):
        for phase in ("cold", "warm"):
            per_round = [o[phase] / t[phase] for o in runs.get("hubdask", []) for t in runs.get(peer, [])
                         if o["round"] == t["round"]]
            if per_round:  # each round's ratio (sources measured minutes apart share the machine's state)
                ratios.append([f"hubdask / {peer}", phase, fmt(med(per_round), ".2f"),
                               " ".join(fmt(v, ".2f") for v in per_round)])
    md_ratios = markdown_table(["ratio", "epoch", "x (median)", "each round"], ratios) if ratios else ""
    print("\n" + md + "\n\n" + md_ratios)
    payload = {"args": vars(args), "machine": machine(),
               "versions": versions("torch", "zarr", "obstore", "litdata", "mosaicml-streaming", "webdataset"),
               "samples_per_s": rates, "cpu_seconds": cpu, "first_batch_s": first, "runs": runs,
               "ratios": {f"{r[0]} {r[1]}": float(r[2]) for r in ratios}}
    write_results("training", payload, f"# Training input\n\n{vars(args)}\n\n{md}\n\n{md_ratios}\n")


if __name__ == "__main__":
    main()
