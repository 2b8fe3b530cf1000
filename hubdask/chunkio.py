"""The chunk-level data path under ``hd.Array``: reads and writes of many chunks at once.

Reading a selection: the touched chunks are planned by grid arithmetic, resolved to physical objects in
memory (open node, then the commit's chunk map; a chunk in neither is the fill value and costs no
request), fetched concurrently (local files in a thread pool; remote objects by async GETs on zarr's
event loop, ``HUBDASK_READ_CONCURRENCY`` in flight) and decoded in threads (the codecs release the GIL)
straight into the output array wherever the selection covers a whole chunk. Committed objects of a remote
root go through the local disk cache (storage.cache). Writing: each chunk is built (read-modify-write
for a partial one), encoded in threads and PUT concurrently into the branch's open node.

This is an engine for the codec chains hubdask writes (bytes, then zstd, blosc or gzip, then crc32c);
for any other chain ``plan`` answers None and callers go through zarr itself, which is correct but slower.
The write path's correctness (chunk locks, the seal check) stays in write.write_region, which calls this.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hubdask import config, grid, shards
from hubdask.errors import CorruptChunkError, StorageError
from hubdask.source import Source
from hubdask.storage import Root, sync
from hubdask.storage import cache as disk_cache
from hubdask.storage import files
from hubdask.versioning import store as store_module

LIST_EACH_CHUNK_AT = 4  # remote branch reads of up to this many chunks LIST each chunk's versions, more the node
LIST_EACH_CHUNK_AT_LOCAL = 8  # locally: a folder scan per chunk, or one walk of the node


# ---------------------------------------------------------------------------------------------------
# codecs: the chains hubdask writes, run without zarr's per-chunk async machinery


class LeanCodec:
    """bytes (native order) -> optional zstd | blosc | gzip -> optional crc32c, as numcodecs calls."""

    def __init__(self, compressor: Any, crc: bool) -> None:
        self.compressor, self.crc = compressor, crc

    @classmethod
    def from_metadata(cls, meta: Any) -> "LeanCodec | shards.ShardCodec | None":
        """The codec of one storage object (a whole shard when sharded), or None: zarr's pipeline."""
        dtype = np.dtype(meta.dtype.to_native_dtype())
        if shards.sharding_codec(meta) is not None:
            found = shards.lean_parts(meta)
            inner = cls.from_codecs(found[0], dtype) if found else None
            if inner is None:
                return None
            index_crc = len(shards.sharding_codec(meta).index_codecs) == 2
            return shards.ShardCodec(inner, found[1], shards.object_grid(meta), meta.fill_value, dtype, index_crc)
        return cls.from_codecs(meta.codecs, dtype)

    @classmethod
    def from_codecs(cls, codecs: Any, dtype: np.dtype) -> "LeanCodec | None":
        from numcodecs import GZip, Zstd
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ZstdCodec

        codecs = list(codecs)
        if not codecs or not isinstance(codecs[0], BytesCodec):
            return None
        endian = getattr(codecs[0].endian, "value", codecs[0].endian)
        if dtype.itemsize > 1 and endian not in (None, "little") or not dtype.isnative:
            return None
        rest, crc = codecs[1:], False
        if rest and isinstance(rest[-1], Crc32cCodec):
            rest, crc = rest[:-1], True
        if not rest:
            return cls(None, crc)
        if len(rest) > 1:
            return None
        c = rest[0]
        if isinstance(c, ZstdCodec):
            return cls(Zstd(level=c.level, checksum=c.checksum), crc)
        if isinstance(c, BloscCodec):
            return cls(c._blosc_codec, crc)  # zarr's own numcodecs.Blosc, configured from the metadata
        if isinstance(c, GzipCodec):
            return cls(GZip(level=c.level), crc)
        return None

    def decode(self, raw: Any, out: np.ndarray) -> None:
        """Decode ``raw`` into the C-contiguous ``out`` (the whole chunk); ValueError when damaged."""
        import crc32c

        body = memoryview(raw)
        if self.crc:
            if len(body) < 4:
                raise ValueError(f"object of {len(body)} bytes is shorter than its crc32c checksum")
            body, stored = body[:-4], int.from_bytes(body[-4:], "little")
            if crc32c.crc32c(body) != stored:
                raise ValueError("crc32c checksum mismatch")
        if self.compressor is None:
            if len(body) != out.nbytes:
                raise ValueError(f"chunk holds {len(body)} bytes, expected {out.nbytes}")
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(body, np.uint8)
        else:
            self.compressor.decode(body, out=out)

    def encode(self, chunk: np.ndarray) -> bytes:
        import crc32c

        chunk = np.ascontiguousarray(chunk)
        body = chunk.tobytes() if self.compressor is None else self.compressor.encode(chunk.reshape(-1).view(np.uint8))
        if not self.crc:
            return bytes(body)
        return b"".join((body, crc32c.crc32c(body).to_bytes(4, "little")))


@dataclass(frozen=True)
class Layout:
    """What the data path needs of an array's metadata, derived once per opened array."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    fill: Any
    codec: LeanCodec
    prefix: str  # the array's path inside the dataset, '' for a single-array dataset
    encode_key: Callable[[tuple[int, ...]], str]

    def logical_key(self, coords: tuple[int, ...]) -> str:
        key = self.encode_key(coords)
        return f"{self.prefix}/{key}" if self.prefix else key


_LAYOUTS: dict[tuple, Layout | None] = {}
_LAYOUTS_LOCK = threading.Lock()


def layout(source: Source) -> Layout | None:
    """The Layout of ``source``'s array, or None when its codecs need zarr's general pipeline."""
    key = source.__dask_tokenize__()  # the array at one state (metadata may live in the open node)
    with _LAYOUTS_LOCK:
        if key in _LAYOUTS:
            return _LAYOUTS[key]
    meta = source.zarr().metadata
    codec = LeanCodec.from_metadata(meta)
    lay = None
    if codec is not None and getattr(meta.chunk_grid, "chunk_shape", None) is not None:
        enc = meta.chunk_key_encoding
        default = type(enc).__name__ == "DefaultChunkKeyEncoding" and enc.separator == "/"
        lay = Layout(tuple(meta.shape), shards.object_grid(meta), np.dtype(meta.dtype.to_native_dtype()),
                     meta.fill_value, codec, source.path,
                     grid.chunk_key if default else enc.encode_chunk_key)
    with _LAYOUTS_LOCK:
        if len(_LAYOUTS) > 256:
            _LAYOUTS.clear()
        _LAYOUTS[key] = lay
    return lay


# ---------------------------------------------------------------------------------------------------
# planning: selection -> one entry per touched chunk, by grid arithmetic


@dataclass(frozen=True)
class ChunkPart:
    """One touched chunk: ``out`` (slices of the output), ``inner`` (the selection inside the chunk),
    ``whole`` (inner is the entire stored chunk), ``covers`` (inner is every in-bounds element of it)."""

    coords: tuple[int, ...]
    out: tuple[slice, ...]
    inner: tuple[int | slice, ...]
    whole: bool
    covers: bool


def _axis_parts(s: int | slice | np.ndarray, n: int, c: int) -> list[tuple[int, slice | None, Any, bool, bool]]:
    if isinstance(s, np.ndarray):  # ascending distinct indices: their positions in each chunk
        return [(j, slice(i0, i1), s[i0:i1] - j * c, False, False) for j, i0, i1 in grid.runs_by_chunk(s, c)]
    if isinstance(s, int):
        j = s // c
        return [(j, None, s - j * c, c == 1, min(c, n - j * c) == 1)]
    step = s.step or 1
    span = grid.Span(s.start, step, len(range(s.start, s.stop, step)))
    out = []
    for p in grid.pieces(span, c):
        k = p.i1 - p.i0
        inner = slice(p.lo, p.lo + (k - 1) * step + 1, step)
        dense = step == 1 and p.lo == 0
        out.append((p.chunk, slice(p.i0, p.i1), inner, dense and k == c, dense and k == min(c, n - p.chunk * c)))
    return out


def plan(sel: tuple[int | slice, ...], lay: Layout) -> tuple[tuple[int, ...], Iterator[ChunkPart], int]:
    """(output shape, the touched chunks, how many) for an ascending selection: ints, slices and
    ascending distinct index arrays (orthogonal)."""
    axes = [_axis_parts(s, n, c) for s, n, c in zip(sel, lay.shape, lay.chunks)]
    out_shape = tuple(s.size if isinstance(s, np.ndarray) else len(range(s.start, s.stop, s.step or 1))
                      for s in sel if not isinstance(s, int))

    def parts() -> Iterator[ChunkPart]:
        for combo in itertools.product(*axes):
            yield ChunkPart(tuple(a[0] for a in combo), tuple(a[1] for a in combo if a[1] is not None),
                            tuple(a[2] for a in combo), all(a[3] for a in combo), all(a[4] for a in combo))

    return out_shape, parts(), math.prod(len(a) for a in axes)


def _single_part(sel: tuple[int | slice, ...], lay: Layout) -> ChunkPart:
    """The ChunkPart of a selection known to lie inside one chunk (no per-axis planning)."""
    coords, out, inner, whole = [], [], [], True
    for s, c in zip(sel, lay.chunks):
        if isinstance(s, int):
            j = s // c
            coords.append(j)
            inner.append(s - j * c)
            whole = whole and c == 1
        else:
            j, step = s.start // c, s.step or 1
            k = len(range(s.start, s.stop, step))
            coords.append(j)
            inner.append(slice(s.start - j * c, s.stop - j * c, step))
            out.append(slice(0, k))
            whole = whole and step == 1 and k == c
    return ChunkPart(tuple(coords), tuple(out), tuple(inner), whole, whole)


def _whole_part(coords: tuple[int, ...], ndim: int) -> ChunkPart:
    """The part that is a whole chunk decoded into a chunk-shaped buffer."""
    return ChunkPart(coords, (slice(None),) * ndim, (), True, True)


# ---------------------------------------------------------------------------------------------------
# threads


_POOL: ThreadPoolExecutor | None = None
_POOL_PID = -1
_POOL_LOCK = threading.Lock()
_SCRATCH = threading.local()


def pool() -> ThreadPoolExecutor:
    """This process's decode/encode threads (recreated after a fork)."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():
            _POOL = ThreadPoolExecutor(config.io_threads(), thread_name_prefix="hubdask-io")
            _POOL_PID = os.getpid()
        return _POOL


def _scratch(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A per-thread reusable chunk buffer (no page faults per chunk)."""
    nbytes = math.prod(shape) * dtype.itemsize
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = _SCRATCH.buf = np.empty(max(nbytes, 1), np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def _run_threads(fn: Callable[[Any], Any], items: list) -> list:
    """``[fn(x) for x in items]`` on the pool: one worker per thread pulling items (no future per item)."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    results: list = [None] * len(items)
    todo = iter(enumerate(items))  # next() on a list iterator is atomic under the GIL

    def worker() -> None:
        for i, x in todo:
            results[i] = fn(x)

    futures = [pool().submit(worker) for _ in range(min(config.io_threads(), len(items)))]
    for f in futures:
        f.result()
    return results


# ---------------------------------------------------------------------------------------------------
# where a chunk's bytes are


class Resolver:
    """Logical chunk key -> the physical key to read, for one Source and the chunks one call touches.

    At a branch whose open node may hold writes, the newest versions there are listed once per call
    (one LIST of the node, or for a few chunks one LIST of each chunk's versions, concurrently), so every
    write that returned before the call is seen; everything else resolves in memory."""

    def __init__(self, source: Source, lay: Layout, keys: Iterable[str] = (),
                 versions: dict[str, int] | None = None) -> None:
        self.source, self.lay = source, lay
        self.root: Root = source.root
        self.store = source.store()
        self.cache = disk_cache.reader(source.root) if getattr(source, "cache", True) else None
        self.versions: dict[str, int] = {}
        if self.store.reads_node:
            self.versions = versions if versions is not None else sync(_list_versions(source, lay, list(keys)))

    def candidates(self, coords: tuple[int, ...]) -> tuple[str | None, str | None]:
        """(the open node's newest version of the chunk, or None; the committed object, or None): at most
        one of them is set, the one to read."""
        key = self.lay.logical_key(coords)
        seq = self.versions.get(key)
        if seq:
            return self.store.version_key(key, seq), None
        return None, self.store.committed_key(key)

    def missing(self, key: str) -> CorruptChunkError:
        return CorruptChunkError(
            f"dataset {self.source.ds!r}: object {key!r} is missing from storage; the store was modified "
            "outside hubdask")


def node_versions(source: Source) -> dict[str, int]:
    """The newest version of every chunk of ``source``'s array in its open node (one LIST of the node):
    what a Resolver takes as ``versions`` when one listing serves many reads (a dask graph's)."""
    lay = layout(source)
    if lay is None or not source.reads_node:
        return {}
    return sync(_list_versions(source, lay, None))


async def _list_versions(source: Source, lay: Layout, keys: list[str] | None) -> dict[str, int]:
    """The open node's newest versions of ``keys`` (None: of every chunk): a LIST per key for a few, one
    LIST of the node's chunks otherwise; none at all where this process is the node's only writer
    (store.written_here_only)."""
    root, node, ds = source.root, source.node, source.ds
    prefix = f"{lay.prefix}/c" if lay.prefix else "c"
    mine = store_module.written_here_only(root, ds, node, source.node_shared)
    if mine is not None:  # only this process wrote the node: it knows every version there
        wanted = set(keys) if keys is not None else None
        return {k: seq for k, (seq, _) in mine.items()
                if (k in wanted if wanted is not None else k.startswith(prefix))}
    few = LIST_EACH_CHUNK_AT_LOCAL if root.is_local else LIST_EACH_CHUNK_AT
    if keys is not None and len(keys) <= few:
        seqs = await asyncio.gather(*(store_module.newest_version(root, ds, node, k) for k in keys))
        return {k: s for k, s in zip(keys, seqs) if s}
    found = await store_module.node_versions(root, ds, node, prefix)
    return {k: seq for k, (seq, _) in found.items()}


# ---------------------------------------------------------------------------------------------------
# reading


def _decode_into(out: np.ndarray, part: ChunkPart, raw: Any, lay: Layout, name: str) -> None:
    """Put chunk ``part`` (bytes ``raw``, or a shards.Partial; None or a tombstone: the fill value) into ``out``."""
    if raw is None or not isinstance(raw, shards.Partial) and store_module.is_tombstone(raw):
        out[part.out] = lay.fill
        return
    if not part.whole and isinstance(lay.codec, shards.ShardCodec):  # a few inner chunks of a shard
        try:
            box, inner = lay.codec.decode_box(raw, part.inner)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise _corrupt(name, lay, part, exc) from exc
        out[part.out] = _pick(box, inner)
        return
    target = out[(*part.out, ...)] if part.whole else None  # "...": a view even of a 0-d out
    direct = target is not None and target.flags.c_contiguous and target.shape == lay.chunks
    buf = target if direct else _scratch(lay.chunks, lay.dtype)
    try:
        lay.codec.decode(raw, buf)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise _corrupt(name, lay, part, exc) from exc
    if not direct:
        out[part.out] = _pick(buf, part.inner)


def _corrupt(name: str, lay: Layout, part: ChunkPart, exc: Exception) -> CorruptChunkError:
    return CorruptChunkError(
        f"dataset {name!r}: chunk {lay.logical_key(part.coords)!r} is corrupted in storage ({exc}); "
        "expected bytes matching their crc32c checksum that decode to one chunk")


def _pick(chunk: np.ndarray, inner: tuple) -> np.ndarray:
    """``chunk[inner]`` with index arrays applied orthogonally (one axis at a time, as zarr's oindex)."""
    if not any(isinstance(i, np.ndarray) for i in inner):
        return chunk[inner]
    block = chunk[tuple(slice(None) if isinstance(i, np.ndarray) else i for i in inner)]
    axis = 0
    for i in inner:
        if isinstance(i, np.ndarray):
            block = np.take(block, i, axis=axis)
        if not isinstance(i, int):
            axis += 1
    return block


def _put(chunk: np.ndarray, inner: tuple, piece: np.ndarray) -> None:
    """``chunk[inner] = piece`` with index arrays applied orthogonally (the inverse of ``_pick``)."""
    if not any(isinstance(i, np.ndarray) for i in inner):
        chunk[inner] = piece
        return
    sub = chunk[tuple(slice(None) if isinstance(i, np.ndarray) else i for i in inner)]  # ints, slices: a view
    arrays = [i if isinstance(i, np.ndarray) else slice(None) for i in inner if not isinstance(i, (int, np.integer))]
    if sum(isinstance(i, np.ndarray) for i in arrays) == 1:  # one index array among slices stays in place
        sub[tuple(arrays)] = piece
    else:
        sub[np.ix_(*(i if isinstance(i, np.ndarray) else np.arange(n) for i, n in zip(arrays, sub.shape)))] = piece


def read(source: Source, sel: tuple[int | slice, ...], name: str, out: np.ndarray | None = None,
         versions: dict[str, int] | None = None) -> np.ndarray | None:
    """The selection as a new array (or in ``out``, of its shape and dtype), or None when the array's
    codecs need zarr (caller falls back). ``versions``: the open node's listing (node_versions) when the
    caller made it already."""
    lay = layout(source)
    if lay is None:
        return None
    out_shape, parts, n = plan(sel, lay)
    if out is None:
        out = np.empty(out_shape, lay.dtype)
    elif out.shape != out_shape or out.dtype != lay.dtype:
        raise ValueError(f"dataset {name!r}: an output buffer of shape {out.shape} and dtype {out.dtype} for a "
                         f"selection of shape {out_shape} and dtype {lay.dtype}; expected the selection's")
    if n == 0 or out.size == 0:
        return out
    parts = list(parts)
    res = Resolver(source, lay, (lay.logical_key(p.coords) for p in parts), versions)
    jobs = []
    for part in parts:
        mutable, committed = res.candidates(part.coords)
        if mutable is None and committed is None:
            out[part.out] = lay.fill
        else:
            jobs.append((part, mutable, committed))
    if jobs:
        _fetch_all(res, jobs, lambda job, raw: _decode_into(out, job[0], raw, lay, name))
    return out


def read_selection(source: Source, sel: tuple, name: str, out: np.ndarray | None = None,
                   versions: dict[str, int] | None = None) -> np.ndarray:
    """Read a selection of ints, ascending slices and ascending distinct index arrays (orthogonal, like
    zarr's oindex): the engine above (every touched chunk fetched concurrently, threaded decode straight
    into the output: ``out`` when given, e.g. a reused buffer whose pages are already mapped), or zarr for
    codec chains the engine does not run. Only touched chunks are read. Decode failures become a
    CorruptChunkError naming the dataset."""
    got = read(source, sel, name, out, versions)
    if got is not None:
        return got
    try:  # codec chains the engine does not run: zarr reads (the selection is valid: checked by grid)
        arr = source.zarr()
        got = np.asarray(arr.oindex[sel] if any(isinstance(s, np.ndarray) for s in sel) else arr[sel])
        if out is None:
            return got
        out[...] = got
        return out
    except (ValueError, RuntimeError) as exc:  # what zarr's codecs raise for bytes they cannot decode
        raise CorruptChunkError(
            f"dataset {name!r}: a chunk in selection {sel} is corrupted in storage ({exc}); expected bytes "
            "that its codecs decode and whose checksum matches") from exc


def map_chunks(source: Source, sels: list[tuple[int | slice, ...]], name: str,
               fn: Callable[[np.ndarray], Any], *, fresh: bool = False) -> list | None:
    """``[fn(block) for block in sels]``, each selection lying inside one chunk; the chunks are fetched
    concurrently and ``fn`` runs in the decode threads right after each decode, so memory stays bounded
    by the requests in flight. ``fn`` must not keep its block unless ``fresh`` (scratch buffers are
    reused). None when the array's codecs need zarr."""
    lay = layout(source)
    if lay is None:
        return None
    singles = [_single_part(sel, lay) for sel in sels]
    res = Resolver(source, lay, (lay.logical_key(p.coords) for p in singles))
    results: list[Any] = [None] * len(sels)
    jobs = []
    for i, part in enumerate(singles):
        mutable, committed = res.candidates(part.coords)
        jobs.append((part, mutable, committed, i))

    def deliver(job: tuple, raw: Any) -> None:
        part, i = job[0], job[3]
        shape = tuple(s.stop - s.start for s in part.out)
        if raw is None or not isinstance(raw, shards.Partial) and store_module.is_tombstone(raw):
            block = np.full(shape, lay.fill, lay.dtype)
        elif not part.whole and isinstance(lay.codec, shards.ShardCodec):
            block = np.empty(shape, lay.dtype)
            _decode_into(block, dataclasses.replace(part, out=(slice(None),) * len(shape)), raw, lay, name)
        else:
            buf = np.empty(lay.chunks, lay.dtype) if fresh else _scratch(lay.chunks, lay.dtype)
            _decode_into(buf, _whole_part(part.coords, len(lay.chunks)), raw, lay, name)
            block = buf if part.whole else buf[part.inner]
            if fresh and not part.whole:
                block = block.copy()
        results[i] = fn(block)

    _fetch_all(res, jobs, deliver)
    return results


def _fetch_all(res: Resolver, jobs: list, deliver: Callable[[tuple, Any], None]) -> None:
    """For each job ``(part, open-node version key, committed key, ...)`` (one of the two keys set; None
    for both: the fill value): its bytes, handed to ``deliver`` in a decode thread. Committed objects
    of a remote root come through the disk cache."""
    if res.root.is_local:
        local_root = Path(res.root.url)

        def local_job(job: tuple) -> None:
            key = job[1] or job[2]
            if not key:
                raw = None
            elif _is_ranged(res, job[0]):
                raw = _read_inner_chunks(res, local_root / key, job[0])
            else:
                raw = files.read(local_root / key, scratch=True)
            if key and raw is None:
                raise res.missing(key)
            deliver(job, raw)

        _run_threads(local_job, jobs)
        return
    cache = res.cache
    single = len(jobs) == 1

    def from_cache(job: tuple) -> bool:
        raw = cache.get(job[2], verify=not res.lay.codec.crc, scratch=True)  # crc32c chunks: checked by decoding
        if raw is None:
            return False
        try:
            deliver(job, raw)
        except CorruptChunkError:
            cache.discard(job[2])  # a damaged cache entry: refetch, never return it
            return False
        return True

    def finish(job: tuple, raw: Any) -> None:
        deliver(job, raw)
        if cache is not None and job[2] is not None and raw is not None and not isinstance(raw, shards.Partial):
            cache.put(job[2], raw)

    if cache is not None:  # committed chunks first, straight from the disk cache in the threads
        served = _run_threads(lambda job: job[2] is not None and from_cache(job), jobs)
        jobs = [job for job, done in zip(jobs, served) if not done]
        if not jobs:
            return
        single = len(jobs) == 1

    async def in_pool(fn: Callable, *args: Any) -> Any:
        return fn(*args) if single else await asyncio.get_running_loop().run_in_executor(pool(), fn, *args)

    async def fetch_one(job: tuple, loop: asyncio.AbstractEventLoop) -> None:
        """fetch_decode, fetched again once if the bytes fail their checksum (damaged in flight: if
        the second copy fails too, they are damaged in storage); a chunk whose requests keep failing
        past the retry budget (storage.retry) becomes a StorageError naming the dataset and chunk."""
        try:
            try:
                return await fetch_decode(job, loop)
            except CorruptChunkError:
                return await fetch_decode(job, loop)
        except StorageError as exc:
            raise _chunk_error(res, job[0].coords, "read", exc) from exc

    async def fetch_decode(job: tuple, loop: asyncio.AbstractEventLoop) -> None:
        key = job[1] or job[2]
        if key is None:
            return await in_pool(finish, job, None)
        part = job[0]
        raw = await (_fetch_inner_chunks(res, key, part) if _is_ranged(res, part) else res.root.fetch_async(key))
        if raw is None:
            raise res.missing(key)
        return await in_pool(finish, job, raw)

    with cache.reading() if cache is not None else contextlib.nullcontext():
        sync(_bounded(fetch_one, jobs, config.read_concurrency()))


def _shard_index(res: Resolver, part: ChunkPart, tail: Any) -> np.ndarray | None:
    """The index in ``tail``, a shard's last bytes; None when they are not a shard's (absent, deleted,
    too short: the decode says which). A damaged index is a CorruptChunkError."""
    codec = res.lay.codec
    if tail is None or len(tail) < codec.index_nbytes or store_module.is_tombstone(tail):
        return None
    try:
        return codec.index(tail)
    except ValueError as exc:
        raise _corrupt(res.source.ds, res.lay, part, exc) from exc


def _is_ranged(res: Resolver, part: ChunkPart) -> bool:
    """Whether the read of ``part`` fetches only the inner chunks it touches (a shard not read whole)."""
    return isinstance(res.lay.codec, shards.ShardCodec) and not (part.whole or part.covers)


async def _fetch_inner_chunks(res: Resolver, key: str, part: ChunkPart) -> Any:
    """What a small read of a remote shard needs: its index (a suffix GET), then only the inner chunks
    the part touches (ranged GETs, neighbours coalesced) as a shards.Partial; a tombstone as is."""
    tail = await res.root.fetch_range_async(key, None, res.lay.codec.index_nbytes)
    idx = _shard_index(res, part, tail)
    if idx is None:
        return tail
    spans = res.lay.codec.ranges(idx, part.inner)
    pieces = await asyncio.gather(*(res.root.fetch_range_async(key, a, b) for a, b in spans))
    if any(p is None for p in pieces):
        return None  # collected between the two requests: reported as missing
    return shards.Partial(idx, [(a, p) for (a, _), p in zip(spans, pieces)])


def _read_inner_chunks(res: Resolver, path: Path, part: ChunkPart) -> Any:
    """``_fetch_inner_chunks`` of a local shard: the index and the coalesced ranges by pread, from one
    open file."""
    found: list[np.ndarray | None] = []

    def spans(tail: bytes) -> list[tuple[int, int]]:
        found.append(_shard_index(res, part, tail))
        return [] if found[0] is None else res.lay.codec.ranges(found[0], part.inner)

    got = files.read_tail_then(path, res.lay.codec.index_nbytes, spans)
    if got is None:
        return None
    return got[0] if found[0] is None else shards.Partial(found[0], got[1])


def _chunk_error(res: Resolver, coords: tuple[int, ...], op: str, exc: StorageError) -> StorageError:
    return _chunk_error_for(res.source.ds, res.lay.logical_key(coords), op, exc)


async def _bounded(fn: Callable, items: Iterable, concurrency: int) -> None:
    """``await fn(item, loop)`` for every item, at most ``concurrency`` at a time (a worker per slot).
    After a failure no new item starts and the ones in flight finish before the first error is raised:
    cancelling them would not stop the client's own retries (obstore's run on), so a write that raised
    could still land later, over a newer one."""
    loop = asyncio.get_running_loop()
    it = iter(items)
    failed: list[BaseException] = []

    async def worker() -> None:
        for item in it:
            if failed:
                return
            try:
                await fn(item, loop)
            except Exception as exc:
                failed.append(exc)
                return

    workers = [asyncio.ensure_future(worker()) for _ in range(max(1, concurrency))]
    try:
        await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()
    if failed:
        raise failed[0]


# ---------------------------------------------------------------------------------------------------
# writing


def write(source: Source, sel: tuple[int | slice, ...], data: np.ndarray, name: str) -> list[str] | None:
    """Write ``data`` (the selection's shape and dtype) into the branch's open node as new versions of
    the chunks it touches; returns the physical keys created, or None when the array's codecs need zarr
    (the caller writes through zarr instead). A chunk covered whole takes the next free version; a
    partial chunk is read at a version and written as exactly the next one, read again and rebuilt
    whenever another writer got there first (store.put_version), so no update is ever lost. The
    branch's written mark of the node lands with the chunks. Locks and the seal check are the caller's
    (write.write_region)."""
    lay = layout(source)
    if lay is None:
        return None
    assert source.node is not None, "writes go to a branch's open node"
    _, parts, n = plan(sel, lay)
    if n == 0 or data.size == 0:
        return []
    store = source.store()
    root, ds, node = source.root, source.ds, source.node
    is_zero_fill = np.array(lay.fill, lay.dtype).tobytes() == bytes(lay.dtype.itemsize)
    local_root = Path(root.url) if root.is_local else None
    parts = list(parts)
    single = len(parts) == 1
    created: list[str] = []

    def build(part: ChunkPart, old: Any) -> bytes:
        """The encoded chunk (the tombstone when it holds only the fill value, as zarr drops it)."""
        piece = data[part.out]
        if not part.whole and isinstance(lay.codec, shards.ShardCodec):  # only the inner chunks touched
            keep = None if part.whole or old is None or store_module.is_tombstone(old) else old
            try:
                blob = lay.codec.update(keep, part.inner, lambda box, inner: _put(box, inner, piece))
            except (ValueError, RuntimeError, TypeError) as exc:
                raise _corrupt(name, lay, part, exc) from exc
            return store_module.TOMBSTONE if blob is None else blob
        if part.whole and piece.flags.c_contiguous and piece.shape == lay.chunks:
            chunk = piece
        else:
            chunk = _scratch(lay.chunks, lay.dtype)
            if part.whole or old is None or store_module.is_tombstone(old):
                chunk[...] = lay.fill
            else:
                _decode_into(chunk, _whole_part(part.coords, chunk.ndim), old, lay, name)
            _put(chunk, part.inner, piece)
        if _only_fill(chunk, lay.fill, is_zero_fill):
            return store_module.TOMBSTONE
        return lay.codec.encode(chunk)

    async def fetch(key: str) -> Any:
        if local_root is not None:
            return await asyncio.to_thread(files.read, local_root / key)
        return await root.fetch_async(key)

    async def one(part: ChunkPart, loop: asyncio.AbstractEventLoop) -> None:
        key = lay.logical_key(part.coords)
        # an edge chunk cut by the shape is read-modified-written too: a growing array's appenders share it
        based: int | None = None if part.whole else store_module.known_version(root, ds, node, key)
        missing = 0
        while True:
            old = None
            if based:
                old = await fetch(store.version_key(key, based))
                if old is None:  # a node sealed and collected under a late writer: look again (the seal
                    missing += 1  # check after the write sends it to the next open node)
                    if missing > 3:
                        raise CorruptChunkError(f"dataset {name!r}: version {based} of chunk {key!r} is missing "
                                                "from storage; the store was modified outside hubdask")
                    based = await store_module.newest_version(root, ds, node, key)
                    continue
            elif based == 0:
                committed = store.committed_key(key)
                old = await fetch(committed) if committed else None
            blob = build(part, old) if single else await loop.run_in_executor(pool(), build, part, old)
            try:
                seq = await store_module.put_version(root, ds, node, key, blob, based, what=f"dataset {name!r}")
            except store_module.StaleRead:
                based = await store_module.newest_version(root, ds, node, key)
                continue
            except StorageError as exc:
                raise _chunk_error_for(name, key, "written", exc) from exc
            created.append(store.version_key(key, seq))
            return

    async def write_all() -> None:  # the written mark goes out with the first chunks, not before them
        done = await asyncio.gather(_bounded(one, parts, config.read_concurrency()),
                                    store.mark_written(), return_exceptions=True)
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome

    sync(write_all())
    return created


def _chunk_error_for(name: str, key: str, op: str, exc: StorageError) -> StorageError:
    return StorageError(f"dataset {name!r}: chunk {key!r} could not be {op}: {exc}")


def _only_fill(chunk: np.ndarray, fill: Any, is_zero: bool) -> bool:
    if is_zero:
        # max() over the bytes: numpy's fastest full scan here (any() first casts every byte to bool)
        return chunk.reshape(-1).view(np.uint8).max() == 0 if chunk.flags.c_contiguous else not chunk.any()
    if isinstance(fill, (float, np.floating)) and np.isnan(fill):
        return bool(np.isnan(chunk).all())
    return bool((chunk == fill).all())
