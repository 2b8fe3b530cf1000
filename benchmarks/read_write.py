"""Write and read throughput of hubdask against its peers on the same data and the same encoding.

    python benchmarks/read_write.py [--size-mb N] [--backend local|s3|all] [--repeats 3]
    python benchmarks/read_write.py --latency-ms 20 --chunk-mb 1 [--s3-size-mb 64]   # S3 with 20 ms per request

Data: uint8 (N*4, 512, 512) frames of random integers in [0, 32) (compressible, ~5 bits/byte), chunks
(16, 512, 512) (4 MiB; ``--chunk-mb`` sets it: 1 = (4, 512, 512), 8 = (32, 512, 512)), encoded as hubdask encodes by default: zarr v3 bytes + zstd(level=0) + crc32c.
Every tool writes its own copy and reads that copy back (checked against the source once, untimed).
Every figure is the best of --repeats runs, in MB/s of logical (uncompressed) array bytes
(MB = 2**20 bytes). Writes go to a freshly emptied location each run; hubdask's chunk cache is emptied
before each read. Local reads come from the OS page cache (files just written), for every tool alike.

Peers: zarr-python (LocalStore; on S3 FsspecStore/s3fs and ObjectStore/obstore), dask.array.to_zarr /
from_zarr, tensorstore (zarr3 driver; file or s3 kvstore), raw fsspec ``cat`` of every chunk object
(read; the transport ceiling; on S3 also raw obstore gets, 16 in flight), and locally a lean reader (read each chunk file, check crc32c, zstd-decode
straight into the output on 2 threads; the practical local limit). S3 is a moto server in its own
process, reached over HTTP; with ``--latency-ms`` (S3 only, unless --backend says otherwise) every client
reaches it through the tests' fault proxy in its own process, adding that latency to each request (what a
real object store costs; tests/support/faultproxy.py). icechunk (zarr-python on an icechunk session store)
is a peer where it is installed.

Results: printed, and written to benchmarks/results/read_write.{json,md} (read_write-local.* or
read_write-s3.* for a single backend).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from _common import (
    MB,
    Measure,
    check_equal,
    fmt,
    import_hubdask,
    machine,
    markdown_table,
    measure,
    moto_s3,
    not_available,
    rmtree,
    versions,
    write_results,
)

FRAME = (512, 512)
CHUNK_FRAMES = 16
HD_NAME = "bench/readwrite"
ZSTD_LEVEL = 0

# tool labels (rows); the hubdask ratios are taken against HD (a[...] = / np.asarray)
ZARR_LOCAL = "zarr-python (LocalStore)"
ZARR_FSSPEC = "zarr-python (FsspecStore, s3fs)"
ZARR_OBSTORE = "zarr-python (ObjectStore, obstore)"
DASK = "dask.array to_zarr / from_zarr"
TS = "tensorstore (zarr3)"
ICECHUNK = "icechunk (zarr-python on a session)"
CAT = "fsspec cat (raw transport)"
OBGET = "obstore get (raw transport)"
OBDEC = "obstore get + decode (crc32c, zstd)"
LEAN = "lean read (file+zstd, 2 threads)"
HD = "hubdask (a[...]= / np.asarray)"
HD_DASK = "hubdask (hd.store / to_dask)"


# ---------------------------------------------------------------------------------------------------
# the one encoding, spelled for each tool


def zarr_codecs() -> dict:
    from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

    return {"serializer": BytesCodec(), "compressors": [ZstdCodec(level=ZSTD_LEVEL, checksum=False), Crc32cCodec()]}


def ts_metadata(shape, chunks) -> dict:
    return {
        "shape": list(shape),
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [
            {"name": "bytes", "configuration": {"endian": "little"}},
            {"name": "zstd", "configuration": {"level": ZSTD_LEVEL, "checksum": False}},
            {"name": "crc32c"},
        ],
    }


# ---------------------------------------------------------------------------------------------------
# backends: where each tool's copy lives, spelled for each client


class Local:
    name = "local"

    def __init__(self, root: Path):
        self.root = root
        import fsspec

        self.fs = fsspec.filesystem("file")
        self.zarr_clients = [(ZARR_LOCAL, "local")]

    def path(self, key: str) -> str:
        return str(self.root / key)

    url = path

    def zarr_store(self, key: str, client: str):
        import zarr.storage

        return zarr.storage.LocalStore(self.root / key)

    def ts_kvstore(self, key: str) -> dict:
        return {"driver": "file", "path": self.path(key) + "/"}

    def remove(self, key: str) -> None:
        rmtree(self.root / key)


class S3:
    name = "s3"

    def __init__(self, info: dict, prefix: str):
        import s3fs

        self.info, self.bucket, self.prefix = info, info["bucket"], prefix
        self.fs = s3fs.S3FileSystem(skip_instance_cache=True)
        self.zarr_clients = [(ZARR_FSSPEC, "fsspec"), (ZARR_OBSTORE, "obstore")]

    def path(self, key: str) -> str:
        return f"{self.bucket}/{self.prefix}/{key}"

    def url(self, key: str) -> str:
        return "s3://" + self.path(key)

    def zarr_store(self, key: str, client: str):
        import zarr.storage

        if client == "fsspec":
            return zarr.storage.FsspecStore.from_url(self.url(key))
        return zarr.storage.ObjectStore(self.obstore(key))

    def obstore(self, key: str):
        from obstore.store import S3Store

        return S3Store(
            self.bucket,
            prefix=f"{self.prefix}/{key}",
            endpoint=self.info["endpoint"],
            region=self.info["region"],
            client_options={"allow_http": True},
        )

    def ts_kvstore(self, key: str) -> dict:
        return {
            "driver": "s3",
            "bucket": self.bucket,
            "path": f"{self.prefix}/{key}/",
            "endpoint": self.info["endpoint"],
            "aws_region": self.info["region"],
            "aws_credentials": {"type": "environment"},
        }

    def remove(self, key: str) -> None:
        path = self.path(key)
        self.fs.invalidate_cache()
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        self.fs.invalidate_cache()


# ---------------------------------------------------------------------------------------------------
# the tools


def zarr_write(store, data: np.ndarray, chunks) -> None:
    import zarr

    a = zarr.create_array(store, shape=data.shape, dtype=data.dtype, chunks=chunks, fill_value=0, **zarr_codecs())
    a[...] = data


def zarr_read(store) -> np.ndarray:
    import zarr

    return zarr.open_array(store, mode="r")[...]


def dask_write(url: str, data: np.ndarray, chunks) -> None:
    import dask.array as da

    da.to_zarr(da.from_array(data, chunks=chunks), url, fill_value=0, **zarr_codecs())


def dask_read(url: str) -> np.ndarray:
    import dask.array as da

    return da.from_zarr(url).compute()


def ts_write(kvstore: dict, data: np.ndarray, chunks) -> None:
    import tensorstore as ts

    spec = {"driver": "zarr3", "kvstore": kvstore, "metadata": ts_metadata(data.shape, chunks)}
    t = ts.open(spec, create=True, context=ts.Context()).result()
    t.write(data).result()


def ts_read(kvstore: dict) -> np.ndarray:
    import tensorstore as ts

    t = ts.open({"driver": "zarr3", "kvstore": kvstore}, open=True, read=True, context=ts.Context()).result()
    return t.read().result()


def icechunk_storage(backend, key: str):
    import icechunk

    if backend.name == "local":
        return icechunk.local_filesystem_storage(backend.path(key))
    return icechunk.s3_storage(bucket=backend.bucket, prefix=f"{backend.prefix}/{key}",
                               endpoint_url=backend.info["endpoint"], region=backend.info["region"],
                               allow_http=True, force_path_style=True,
                               access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                               secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])


def icechunk_write(storage, data: np.ndarray, chunks) -> None:
    import icechunk

    session = icechunk.Repository.create(storage).writable_session("main")
    zarr_write(session.store, data, chunks)
    session.commit("benchmark data")


def icechunk_read(storage) -> np.ndarray:
    import icechunk

    return zarr_read(icechunk.Repository.open(storage).readonly_session(branch="main").store)


def chunk_paths(backend, key: str, nchunks: int) -> list[str]:
    # zarr v3 default chunk key encoding, computed rather than listed
    return [backend.path(f"{key}/c/{i}/0/0") for i in range(nchunks)]


def fsspec_cat(backend, paths: list[str]) -> dict:
    return backend.fs.cat(paths)


def obstore_get(store, keys: list[str], concurrency: int = 16,
                each: Callable[[int, Any], None] | None = None) -> list:
    """Every object of ``keys``, ``concurrency`` GETs in flight. ``each(i, blob)``, when given, runs in
    two helper threads as each object arrives (overlapping the GETs still in flight)."""
    import asyncio

    import obstore

    pool = ThreadPoolExecutor(2) if each is not None else None

    async def all_():
        gate = asyncio.Semaphore(concurrency)
        loop = asyncio.get_running_loop()

        async def one(i, key):
            async with gate:
                blob = await (await obstore.get_async(store, key)).bytes_async()
            if each is not None:
                await loop.run_in_executor(pool, each, i, blob)
            return blob

        return await asyncio.gather(*(one(i, k) for i, k in enumerate(keys)))

    # On a loop in a helper thread, as zarr drives obstore: asyncio.run() on the main thread measured
    # ~10x slower here for the same coroutine (Python 3.11, obstore 0.12).
    try:
        with ThreadPoolExecutor(1) as loop_thread:
            return loop_thread.submit(asyncio.run, all_()).result()
    finally:
        if pool is not None:
            pool.shutdown()


def decode_chunk(blob, out: np.ndarray, where: str) -> None:
    """The encoding's decode, done the cheapest way: check the crc32c, zstd-decode straight into ``out``."""
    import crc32c
    from numcodecs import Zstd

    body = memoryview(blob)[:-4]
    if crc32c.crc32c(body) != int.from_bytes(memoryview(blob)[-4:], "little"):
        raise ValueError(f"crc32c mismatch in {where}")
    Zstd().decode(body, out=out)


def obstore_get_decode(store, keys: list[str], shape, frames_per_chunk: int) -> np.ndarray:
    """Raw GETs plus the same decode into one output array: the transport limit of a reader that must
    decode (what a zarr reader can reach at best)."""
    out = np.empty(shape, dtype=np.uint8)

    def one(i: int, blob) -> None:
        decode_chunk(blob, out[i * frames_per_chunk : (i + 1) * frames_per_chunk], keys[i])

    obstore_get(store, keys, each=one)
    return out


def lean_read(paths: list[str], shape, frames_per_chunk: int, threads: int = 2) -> np.ndarray:
    out = np.empty(shape, dtype=np.uint8)

    def one(i: int) -> None:
        with open(paths[i], "rb") as f:
            blob = f.read()
        decode_chunk(blob, out[i * frames_per_chunk : (i + 1) * frames_per_chunk], paths[i])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(len(paths))))
    return out


def hd_write(hd, root: str, data: np.ndarray, chunks) -> None:
    a = hd.array(data.shape, name=HD_NAME, dtype=data.dtype, chunks=chunks, storage=root)
    a[...] = data


def hd_read(hd, root: str) -> np.ndarray:
    return np.asarray(hd.load(HD_NAME, storage=root))


def hd_store(hd, root: str, data: np.ndarray, chunks) -> None:
    import dask.array as da

    x = da.from_array(data, chunks=chunks)
    try:
        hd.store(x, HD_NAME, storage=root)
    except getattr(hd, "NotFoundError", LookupError):  # if store() needs an existing array: create it first
        hd.array(data.shape, name=HD_NAME, dtype=data.dtype, chunks=chunks, storage=root)
        hd.store(x, HD_NAME, storage=root)


def hd_dask_read(hd, root: str) -> np.ndarray:
    return hd.load(HD_NAME, storage=root).to_dask().compute()


# ---------------------------------------------------------------------------------------------------
# one backend


TOOLS: list[str] = []  # --tools: substrings of the rows to measure (empty: every row)


def wanted(tool: str) -> bool:
    return not TOOLS or any(t in tool.lower() for t in TOOLS)


def run_backend(backend, data: np.ndarray, repeats: int, cache_dir: Path) -> list[Measure]:
    chunks = (CHUNK_FRAMES, *FRAME)
    nbytes, nchunks = data.nbytes, data.shape[0] // CHUNK_FRAMES
    check = check_equal(data)
    b = backend.name
    out: list[Measure] = []

    def pair(tool, key, write, read, read_setup=None):
        if not wanted(tool):
            return
        w = measure(b, tool, "write", nbytes, write, repeats=repeats, setup=lambda: backend.remove(key))
        out.append(w)
        if w.status != "ok":
            out.append(not_available(b, tool, "read", nbytes, "no data: its write did not succeed"))
        else:
            out.append(measure(b, tool, "read", nbytes, read, repeats=repeats, setup=read_setup, check=check))

    # zarr-python, one row per store client; the first copy also feeds the raw-transport readers
    raw = [t for t in ([CAT, OBGET, OBDEC] if b != "local" else [CAT, LEAN]) if wanted(t)]
    zarr_key = None
    for tool, client in backend.zarr_clients:
        key = f"zarr-{client}"
        if not wanted(tool):  # left out by --tools; the last client's copy still feeds the raw readers
            if raw and zarr_key is None and client == backend.zarr_clients[-1][1]:
                backend.remove(key)
                zarr_write(backend.zarr_store(key, client), data, chunks)
                zarr_key = key
            continue
        pair(
            tool,
            key,
            lambda key=key, client=client: zarr_write(backend.zarr_store(key, client), data, chunks),
            lambda key=key, client=client: zarr_read(backend.zarr_store(key, client)),
        )
        if zarr_key is None and out[-1].status == "ok":
            zarr_key = key

    pair(DASK, "dask", lambda: dask_write(backend.url("dask"), data, chunks), lambda: dask_read(backend.url("dask")))

    try:
        import tensorstore  # noqa: F401

        pair(
            TS,
            "ts",
            lambda: ts_write(backend.ts_kvstore("ts"), data, chunks),
            lambda: ts_read(backend.ts_kvstore("ts")),
        )
    except ImportError as exc:
        out += [not_available(b, TS, op, nbytes, f"tensorstore not installed ({exc})") for op in ("write", "read")]

    try:
        import icechunk  # noqa: F401

        pair(ICECHUNK, "icechunk", lambda: icechunk_write(icechunk_storage(backend, "icechunk"), data, chunks),
             lambda: icechunk_read(icechunk_storage(backend, "icechunk")))
    except ImportError as exc:
        out += [not_available(b, ICECHUNK, op, nbytes, f"icechunk not installed ({exc})") for op in ("write", "read")]

    # raw transport and the lean local reader, on zarr-python's copy
    if not raw:
        pass
    elif zarr_key is None:
        out += [not_available(b, tool, "read", nbytes, "no zarr-python copy to read") for tool in raw]
    else:
        paths = chunk_paths(backend, zarr_key, nchunks)
        stored = []

        def count(blobs) -> None:
            if len(blobs) != nchunks:
                raise AssertionError(f"got {len(blobs)} of {nchunks} chunk objects")
            stored.append(sum(map(len, blobs)))

        keys = [f"c/{i}/0/0" for i in range(nchunks)]
        runs = {CAT: (lambda: fsspec_cat(backend, paths), lambda r: count(list(r.values()))),
                LEAN: (lambda: lean_read(paths, data.shape, CHUNK_FRAMES), check),
                OBGET: (lambda: obstore_get(backend.obstore(zarr_key), keys), count),
                OBDEC: (lambda: obstore_get_decode(backend.obstore(zarr_key), keys, data.shape, CHUNK_FRAMES), check)}
        for tool in raw:
            out.append(measure(b, tool, "read", nbytes, runs[tool][0], repeats=repeats, check=runs[tool][1]))
            if tool == CAT and stored:
                out[-1].note = f"stored bytes / logical bytes = {stored[0] / nbytes:.3f}"
    if b != "local" and wanted(LEAN):
        out.append(not_available(b, LEAN, "read", nbytes, "reads local files only"))

    # hubdask, guarded
    hd, why = import_hubdask()
    root = backend.url("hubdask")
    if hd is None:
        for tool in (HD, HD_DASK):
            out += [not_available(b, tool, op, nbytes, why) for op in ("write", "read")]
    else:
        def cold() -> None:  # every read starts from storage, like the peers'
            clear = getattr(getattr(hd, "cache", None), "clear", None)
            clear() if clear is not None else rmtree(cache_dir)

        pair(HD, "hubdask", lambda: hd_write(hd, root, data, chunks), lambda: hd_read(hd, root), read_setup=cold)
        pair(HD_DASK, "hubdask", lambda: hd_store(hd, root, data, chunks), lambda: hd_dask_read(hd, root),
             read_setup=cold)
    return out


# ---------------------------------------------------------------------------------------------------
# report


def report(results: list[Measure], meta: dict) -> str:
    by = {(m.backend, m.tool, m.op): m for m in results}
    header = ["backend", "tool", "write MB/s", "read MB/s", "hubdask/this write", "hubdask/this read"]
    rows = []
    for backend in dict.fromkeys(m.backend for m in results):
        tools = dict.fromkeys(m.tool for m in results if m.backend == backend)
        for tool in tools:
            cells = [backend, tool]
            for op in ("write", "read"):
                m = by.get((backend, tool, op))
                cells.append("—" if m is None else fmt(m.mbps, missing=m.status))
            for op in ("write", "read"):
                m, h = by.get((backend, tool, op)), by.get((backend, HD, op))
                ok = m is not None and h is not None and m.mbps and h.mbps
                cells.append(f"{h.mbps / m.mbps:.2f}x" if ok else ("—" if m is None else "n/a"))
            rows.append(cells)
    notes = sorted({f"{m.backend} {m.tool} {m.op}: {m.status}: {m.note}" for m in results if m.status != "ok"})
    info = sorted({f"{m.backend} {m.tool}: {m.note}" for m in results if m.status == "ok" and m.note})
    lines = [
        "# read_write benchmark",
        "",
        f"{meta['machine']['time']}, {meta['machine']['cpus']} CPUs (load average "
        f"{meta['machine']['loadavg_1m_at_start']} at start), Python {meta['machine']['python']}; "
        f"data uint8 {tuple(meta['shape'])} = {meta['size_mib']:.0f} MiB per backend "
        f"(s3: {tuple(meta['s3_shape'])}), chunks {tuple(meta['chunks'])}, bytes+zstd({ZSTD_LEVEL})+crc32c; "
        f"best of {meta['repeats']}; MB/s of logical bytes (MiB/s)"
        + (f"; S3 requests +{meta['latency_ms']:g} ms (fault proxy)" if meta.get("latency_ms") else "") + ". "
        "`hubdask/this` > 1 means hubdask is faster than that tool.",
        "",
        markdown_table(header, rows),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
    ]
    if info:
        lines += ["", "Notes:", *[f"- {n}" for n in info]]
    if notes:
        lines += ["", "Not measured:", *[f"- {n}" for n in notes]]
    return "\n".join(lines)


def frames_for(size_mb: int) -> int:
    """Whole chunks of 512x512 uint8 frames closest below size_mb MiB (at least one chunk)."""
    return max(CHUNK_FRAMES, (size_mb * MB // (FRAME[0] * FRAME[1])) // CHUNK_FRAMES * CHUNK_FRAMES)


def make_data(size_mb: int, seed: int = 0) -> np.ndarray:
    """Random integers in [0, 32): compressible (~5 bits/byte) but not trivially."""
    return np.random.default_rng(seed).integers(0, 32, size=(frames_for(size_mb), *FRAME), dtype=np.uint8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=int, default=512, help="array size per backend (default 512 = 2048 frames)")
    p.add_argument("--s3-size-mb", type=int, default=None,
                   help="array size on S3/moto (default: --size-mb, at most 256; moto is a Python server)")
    p.add_argument("--backend", choices=["local", "s3", "all"], default=None,
                   help="default: all, or s3 with --latency-ms")
    p.add_argument("--latency-ms", type=float, default=0, help="added to every S3 request (the fault proxy)")
    p.add_argument("--chunk-mb", type=int, default=None, help="chunk size in MiB (a multiple of 1/4; default 4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tools", default="", help="comma-separated substrings of the tool rows to measure, e.g. "
                   "'tensorstore,obstore get,hubdask' (default: all)")
    p.add_argument("--workdir", default=None, help="parent folder for the local copies (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the local copies")
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    args = p.parse_args(argv)
    global CHUNK_FRAMES
    TOOLS[:] = [t.strip().lower() for t in args.tools.split(",") if t.strip()]
    if args.chunk_mb:
        CHUNK_FRAMES = max(1, args.chunk_mb * MB // (FRAME[0] * FRAME[1]))
    if args.backend is None:
        args.backend = "s3" if args.latency_ms else "all"

    work = Path(tempfile.mkdtemp(prefix="hubdask-bench-", dir=args.workdir))
    cache_dir = work / "hubdask-cache"
    os.environ["HUBDASK_CACHE"] = str(cache_dir)  # a private, emptied-before-each-read cache
    os.environ.setdefault("HUBDASK_PROGRESS", "off")

    data = make_data(args.size_mb)
    s3_mb = args.s3_size_mb if args.s3_size_mb is not None else min(args.size_mb, 256)
    s3_data = data[: frames_for(s3_mb)]  # a leading slice of C-ordered data: contiguous
    print(f"data uint8 {data.shape} ({data.nbytes / MB:.0f} MiB), s3 {s3_data.shape}, chunks "
          f"{(CHUNK_FRAMES, *FRAME)}, best of {args.repeats}; workdir {work}", flush=True)

    results: list[Measure] = []
    try:
        if args.backend in ("local", "all"):
            print("local:", flush=True)
            results += run_backend(Local(work), data, args.repeats, cache_dir)
        if args.backend in ("s3", "all"):
            print(f"s3 (moto_server over HTTP{f', +{args.latency_ms:g} ms per request' if args.latency_ms else ''}):",
                  flush=True)
            try:
                with moto_s3("bench", args.latency_ms) as info:
                    results += run_backend(S3(info, "rw"), s3_data, args.repeats, cache_dir)
            except (OSError, RuntimeError) as exc:
                print(f"  s3: could not start moto_server: {exc}", flush=True)
    finally:
        if not args.keep:
            rmtree(work)

    meta = {
        "shape": data.shape,
        "s3_shape": s3_data.shape,
        "size_mib": data.nbytes / MB,
        "chunks": (CHUNK_FRAMES, *FRAME),
        "codecs": f"bytes + zstd(level={ZSTD_LEVEL}) + crc32c",
        "repeats": args.repeats,
        "latency_ms": args.latency_ms,
        "machine": machine(),
        "versions": versions("numpy", "zarr", "dask", "numcodecs", "tensorstore", "fsspec", "s3fs", "obstore", "moto"),
        "argv": sys.argv,
    }
    md = report(results, meta)
    print()
    print(md)
    if not args.no_save:
        stem = "read_write" if args.backend == "all" else f"read_write-{args.backend}"
        if args.latency_ms or args.chunk_mb:
            stem += f"-{args.latency_ms:g}ms-{CHUNK_FRAMES * FRAME[0] * FRAME[1] // MB}mib"
        j, m = write_results(stem, {"meta": meta, "results": [r.as_dict() for r in results]}, md)
        print(f"\nwrote {j} and {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
