"""Training data loop: hubdask streaming from S3 (moto's server) vs image files on local disk vs a .npy memmap.

Hub's headline claim was that streaming a dataset while training is as fast as reading it from the local
file system. Each source feeds the same PyTorch loop (DataLoader, shuffled batches, optionally one SGD step
of a tiny CNN per batch) over the same CIFAR-like images (uint8 32x32x3, 10 classes):

  (a) hubdask: a tagged dataset on the moto S3 server, ``ds.pytorch``: cold (empty disk cache), warm
      (second epoch: committed chunks come from the local disk cache), and with the cache off;
      with forked workers (the Linux default: S3 through s3fs in the child, see storage/root.py) and
      forkserver workers (obstore in the child);
  (b) ImageFolder-style PNG files in a local folder, decoded with Pillow per sample (torchvision's way);
  (c) a local .npy file opened as a memmap, indexed per sample.

Prints samples/s per source and the ratios to (b); writes results/training.{json,md}.

    python benchmarks/training.py [--n 10000] [--batch 256] [--workers 2] [--model] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, import_hubdask, machine, markdown_table, moto_s3, rmtree, versions, write_results  # noqa: E402

SHAPE = (32, 32, 3)


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    base = rng.integers(0, 255, (10,) + SHAPE, dtype=np.uint8)  # one smooth-ish template per class + noise,
    noise = rng.integers(0, 40, (n,) + SHAPE, dtype=np.uint8)  # so PNG compresses like a photo-ish image
    return (base[labels] // 2 + noise).astype(np.uint8), labels


# --- the consumers ------------------------------------------------------------------------------------


class TinyCNN:
    def __init__(self):
        import torch

        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 10))
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01)

    def step(self, x, y):
        import torch

        x = x.permute(0, 3, 1, 2).float() / 255.0
        loss = torch.nn.functional.cross_entropy(self.net(x), y.long())
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


def run_epoch(loader, model, key_x="images", key_y="labels") -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        x, y = (batch[key_x], batch[key_y]) if isinstance(batch, dict) else batch
        if model is not None:
            model.step(x, y)
        else:
            x.float().mean()  # touch the data
        n += len(y)
    return n, time.perf_counter() - t0


# --- (b) and (c): the local peers -----------------------------------------------------------------------


class PngFolder:
    """torchvision.datasets.ImageFolder's reading path without torchvision: PIL decode per sample."""

    def __init__(self, root: Path):
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.items = [(str(f), i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir())]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        import torch
        from PIL import Image

        path, label = self.items[i]
        with Image.open(path) as img:
            return torch.from_numpy(np.array(img.convert("RGB"))), label


class NpyMemmap:
    def __init__(self, x_path: str, y_path: str):
        self.x_path, self.y = x_path, np.load(y_path)
        self._x = None

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        import torch

        if self._x is None:
            self._x = np.load(self.x_path, mmap_mode="r")
        return torch.from_numpy(np.array(self._x[i])), int(self.y[i])


def write_pngs(root: Path, x: np.ndarray, y: np.ndarray) -> None:
    from PIL import Image

    for c in range(10):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(x, y)):
        Image.fromarray(img).save(root / f"class{label}" / f"{i:06d}.png")


# --- main ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="samples")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=512, help="hubdask rows per storage chunk")
    ap.add_argument("--model", action="store_true", help="one SGD step of a tiny CNN per batch")
    ap.add_argument("--epochs", type=int, default=2, help="warm epochs measured (best is kept)")
    args = ap.parse_args()

    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    hd, why = import_hubdask(("dataset",))
    if hd is None:
        sys.exit(f"hubdask unavailable: {why}")
    os.environ.setdefault("HUBDASK_PROGRESS", "off")
    model = TinyCNN() if args.model else None
    x, y = make_data(args.n)
    work = Path(tempfile.mkdtemp(prefix="hubdask-bench-train-"))
    rows: list[tuple[str, float]] = []

    def report(label: str, n: int, seconds: float) -> None:
        rows.append((label, n / seconds))
        print(f"  {label:55} {n / seconds:10.0f} samples/s   ({n} in {seconds:.2f} s)", flush=True)

    def best(loader, epochs) -> tuple[int, float]:
        runs = [run_epoch(loader, model) for _ in range(epochs)]
        return min(runs, key=lambda r: r[1])

    try:
        print(f"{args.n} samples {SHAPE} uint8, batch {args.batch}, {args.workers} workers, "
              f"{'tiny CNN step' if model else 'data loop only'}", flush=True)
        # (b) PNG folder
        write_pngs(work / "png", x, y)
        png = DataLoader(PngFolder(work / "png"), batch_size=args.batch, shuffle=True, num_workers=args.workers,
                         persistent_workers=args.workers > 0)
        report("(b) PNG files, local folder (PIL per sample)", *best(png, args.epochs))
        # (c) npy memmap
        np.save(work / "x.npy", x)
        np.save(work / "y.npy", y)
        mm = DataLoader(NpyMemmap(str(work / "x.npy"), str(work / "y.npy")), batch_size=args.batch, shuffle=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0)
        report("(c) .npy memmap, local (per sample)", *best(mm, args.epochs))
        # (a) hubdask on the S3 server
        with moto_s3("train") as s3:
            root = f"s3://{s3['bucket']}/hub"
            ds = hd.dataset("bench/cifarish", images=dict(data=x, chunks=(args.chunk,) + SHAPE), labels=y,
                            storage=root)
            ds.tag("v1")
            for context in ("fork", "forkserver"):
                os.environ["HUBDASK_CACHE"] = str(work / f"cache-{context}")  # empty: cold
                tagged = hd.load("bench/cifarish:v1", storage=root)
                kw = dict(batch_size=args.batch, shuffle=True, num_workers=args.workers)
                if args.workers:
                    kw.update(multiprocessing_context=context, persistent_workers=True)  # as the peers
                loader = tagged.pytorch(**kw)
                report(f"(a) hubdask S3, cold cache, {context} workers", *run_epoch(loader, model))
                report(f"(a) hubdask S3, warm cache, {context} workers", *best(loader, args.epochs))
                if not args.workers:
                    break
            os.environ["HUBDASK_CACHE_SIZE"] = "0"
            nocache = hd.load("bench/cifarish:v1", storage=root)
            loader = nocache.pytorch(batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                     persistent_workers=args.workers > 0)
            run_epoch(loader, model)  # starts the workers
            report("(a) hubdask S3, cache off, fork workers", *best(loader, 1))
            os.environ.pop("HUBDASK_CACHE_SIZE")
    finally:
        rmtree(work)

    ref = dict(rows)["(b) PNG files, local folder (PIL per sample)"]
    table = [[label, fmt(rate, ".0f"), fmt(rate / ref, ".2f")] for label, rate in rows]
    md = markdown_table(["source", "samples/s", "x (b) PNG folder"], table)
    print("\n" + md)
    payload = {"args": vars(args), "machine": machine(), "versions": versions("torch", "zarr", "obstore", "s3fs"),
               "rows": [{"source": label, "samples_per_s": rate, "ratio_to_png": rate / ref} for label, rate in rows]}
    write_results("training", payload, f"# Training data loop\n\n{vars(args)}\n\n{md}\n")


if __name__ == "__main__":
    main()
