"""``python -m hubdask.demo`` / ``hubdask demo``: the seed workflow of DESIGN.md, narrated.

Runs the seed's own three lines verbatim (``SEED``, dataset ``name/random_name``), then creates a 10**10 x 512 x 512 x 3 uint8 array (about 7 PiB logical, metadata only), writes one image,
loads it in a second Python process as another user would, slices, averages, commits, tags, overwrites
and travels back in time. Uses the dataset ``demo/bigarray`` in the default root (or ``storage=``),
replacing an earlier demo's; takes a few seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Callable

import numpy as np

NAME = "demo/bigarray"
SHAPE = (10**10, 512, 512, 3)
SEED = """\
mnist = hd.array((50000,28,28,1), name="name/random_name:v1")
mnist[0,:,:,:] = np.random.random((1,28,28,1))
print(mnist[0])"""
SEED_NAME = "name/random_name"


def picture(size: int = 512) -> np.ndarray:
    """A synthetic RGB picture: color gradients and a disc, so every slice and mean is easy to check."""
    y, x = np.mgrid[0:size, 0:size]
    disc = (x - size * 0.6) ** 2 + (y - size * 0.4) ** 2 < (size * 0.2) ** 2
    r = (x * 255 // (size - 1)).astype(np.uint8)
    g = (y * 255 // (size - 1)).astype(np.uint8)
    b = np.where(disc, 255, 60).astype(np.uint8)
    return np.stack([r, g, b], axis=-1)


_OTHER_PROCESS = """
import json, sys, time
t0 = time.perf_counter()
import hubdask as hd
b = hd.load(sys.argv[1], storage=sys.argv[2] or None)
t1 = time.perf_counter()
first = b[0, 100:200, 100:200].read()
print(json.dumps({"shape": list(b.shape), "dtype": str(b.dtype), "chunks": list(b.chunks),
                  "load_s": t1 - t0, "sum": int(first.sum(dtype="int64"))}))
"""


def _tasks(view) -> str:
    n = len(view.to_dask().dask)
    return f"{n} dask task" + ("" if n == 1 else "s")


def run(storage: str | None = None, keep: bool = True, out: Callable[[str], None] = print,
        other_process: bool = True) -> int:
    """Walk through the workflow, printing each step; returns 0 when every check held."""
    import hubdask as hd
    from hubdask.viz.summary import human_bytes

    step = iter(range(1, 100))

    def say(what: str, t0: float | None = None) -> None:
        took = f"  [{(time.perf_counter() - t0) * 1000:.0f} ms]" if t0 is not None else ""
        out(f"{next(step):>2}. {what}{took}")

    root = hd.api.locate(NAME, storage)[0]
    out(f"hubdask demo in {root.url}")
    _seed(storage, out, keep)
    if NAME in hd.ls("demo", storage=storage):
        hd.delete(NAME, storage=storage)

    t = time.perf_counter()
    a = hd.array(SHAPE, name=NAME, dtype="uint8", storage=storage)
    say(f"hd.array({SHAPE}, name={NAME!r}, dtype='uint8'): {human_bytes(a.nbytes)} logical, chunks {a.chunks}, "
        "metadata only", t)

    image = picture()
    t = time.perf_counter()
    a[0] = image
    say("a[0] = image  (512x512x3, written to storage before returning)", t)

    t = time.perf_counter()
    if other_process:
        proc = subprocess.run([sys.executable, "-c", _OTHER_PROCESS, NAME, storage or ""], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "HUBDASK_PROGRESS": "off"})
        if proc.returncode != 0:
            raise RuntimeError(f"the second process failed: {proc.stderr.strip().splitlines()[-1:]}")
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
        expected = int(image[100:200, 100:200].sum(dtype="int64"))
        assert seen["sum"] == expected, (seen, expected)
        say(f"another process: hd.load({NAME!r}) -> shape {tuple(seen['shape'])}, reads a[0, 100:200, 100:200] "
            "and sees the image", t)
    b = hd.load(NAME, storage=storage)

    t = time.perf_counter()
    v = b[0:10, 100:200, 100:200]
    say(f"b[0:10, 100:200, 100:200] -> lazy view of shape {v.shape}, {_tasks(v)}", t)

    t = time.perf_counter()
    m = float(b[0].mean().compute())
    assert abs(m - image.mean()) < 1e-9, (m, image.mean())
    say(f"b[0].mean().compute() = {m:.3f}  (numpy on the image: {image.mean():.3f})", t)

    t = time.perf_counter()
    c1 = b.commit("first image")
    b.tag("v1")
    say(f"b.commit('first image') -> {c1}; b.tag('v1')", t)

    t = time.perf_counter()
    b[0] = 255 - image
    c2 = b.commit("inverted the first image")
    say(f"b[0] = 255 - image; b.commit(...) -> {c2}", t)

    t = time.perf_counter()
    old = hd.load(f"{NAME}:v1", storage=storage)[0].read()
    new = hd.load(NAME, storage=storage)[0].read()
    assert np.array_equal(old, image) and np.array_equal(new, 255 - image)
    say(f"time travel: hd.load('{NAME}:v1')[0] is the original, '{NAME}' (main) the inverted one", t)

    log = [f"{c.id} {c.message}" for c in b.log()]
    say(f"b.log(): {' | '.join(log)}")
    if keep:
        out(f"done. Look at it: hubdask info {NAME}; hubdask show '{NAME}:v1[0]' -o v1.png; "
            f"hubdask view {NAME}. Remove it: hubdask rm {NAME} --yes")
    else:
        hd.delete(NAME, storage=storage)
        out(f"done; {NAME} deleted")
    return 0


def _seed(storage: str | None, out: Callable[[str], None], keep: bool) -> None:
    """The seed's lines exactly as written (names without ``storage=``: the root is set for them)."""
    import hubdask as hd

    before = os.environ.get("HUBDASK_ROOT")
    if storage is not None:
        os.environ["HUBDASK_ROOT"] = storage
    try:
        if SEED_NAME in hd.ls("name"):
            hd.delete(SEED_NAME)
        printed: list[str] = []
        out("the seed's lines, verbatim:\n" + "\n".join(f"    >>> {line}" for line in SEED.splitlines()))
        scope = {"hd": hd, "np": np, "print": lambda *a: printed.append(" ".join(map(str, a)))}
        exec(SEED, scope)  # noqa: S102 - the fixed text above, nothing from outside
        shown = printed[0].splitlines()
        out("\n".join(f"    {line}" for line in shown[:3] + ["    ..."] + shown[-2:]))
        assert np.array_equal(np.asarray(scope["mnist"][0]), np.asarray(hd.load(SEED_NAME)[0]))
        if not keep:
            hd.delete(SEED_NAME)
    finally:
        if storage is not None:
            if before is None:
                os.environ.pop("HUBDASK_ROOT", None)
            else:
                os.environ["HUBDASK_ROOT"] = before


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hubdask.demo", description=__doc__.splitlines()[0])
    p.add_argument("--storage", help="root (default: $HUBDASK_ROOT or ~/.hubdask)")
    p.add_argument("--cleanup", action="store_true", help="delete the demo dataset at the end")
    args = p.parse_args(argv)
    return run(storage=args.storage, keep=not args.cleanup)


if __name__ == "__main__":
    sys.exit(main())
