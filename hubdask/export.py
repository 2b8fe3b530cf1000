"""``hd.export``: one version of an array or dataset written as a plain zarr v3 hierarchy anywhere fsspec
reaches, for tools that know nothing of hubdask (zarr-python, tensorstore, xarray, other languages).

Everything is read through the version's logical zarr keys (``Source.store()``), never hubdask's own
object layout. A whole array or dataset is copied key by key, bytes unchanged (its chunks are already
zarr v3 encoded); a view is read, re-chunked on the view's grid and encoded by zarr. Chunks go first and
metadata (``zarr.json``) last, so a reader of a half-done export finds no array rather than a wrong
one. It is restartable: a target chunk whose bytes (or, for views, values) already equal the source's
is left alone, and target keys the version does not hold are deleted. The work is a dask graph of
batches of chunks, so it runs on a dask.distributed cluster when one is active, with a progress bar.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import os
import warnings
from typing import Any

import numpy as np

from hubdask.array import Array
from hubdask.errors import AlreadyExistsError
from hubdask.source import Source
from hubdask.storage import Root, open_root, sync

BATCH = 32  # chunks per dask task: small keys cost more in task overhead than in bytes
CONCURRENCY = 16  # requests in flight within one task
METADATA = "zarr.json"


@dataclasses.dataclass
class ExportResult:
    """What an export did: chunks (and metadata objects) written, already equal, and deleted."""

    url: str
    written: int = 0
    unchanged: int = 0
    deleted: int = 0
    bytes_written: int = 0

    def __add__(self, other: "ExportResult") -> "ExportResult":
        return ExportResult(self.url, self.written + other.written, self.unchanged + other.unchanged,
                            self.deleted + other.deleted, self.bytes_written + other.bytes_written)


def write_zarr(obj: Any, url: str | os.PathLike, *, group: bool | str = False, target_options: dict | None = None,
               progress: bool | None = None) -> ExportResult:
    """Write ``obj`` (an ``hd.Array`` or a view of one, or an ``hd.Dataset``) as a plain zarr v3 array
    or group at ``url``; a branch is exported at its state when this starts (``hd.export`` also takes names).

    ``group=True`` (or a name) puts a single array inside a group, as the array of that name (default:
    the dataset's last name part), so xarray can open it. ``target_options``: fsspec/s3fs options of
    ``url``. Returns what was written, already equal and deleted.
    """
    src: Source = obj._fresh_source()  # a branch: pinned to its state now
    target = open_root(url, target_options)
    what = f"export of {obj.name!r} to {target.url}"
    _check_target(target, what)
    if isinstance(obj, Array):
        inner = ""
        if group:
            inner = (group if isinstance(group, str) else src.path or src.ds.rsplit("/", 1)[-1]) + "/"
        if obj.is_view:
            result = _export_view(obj, src, target, inner, progress)
        else:
            result = _export_keys(src, src.chunk_prefix(), target, inner, progress)
        if inner:
            result += _write_group(target, [inner.rstrip("/")])
        return result
    if group:
        raise TypeError(f"{what}: group= is for single arrays; a dataset is always exported as a group")
    result = _export_keys(src, "", target, "", progress)
    return result + _write_group(target, None)


def _check_target(target: Root, what: str) -> None:
    """Refuse a target that holds something other than zarr (an export deletes what it does not own)."""
    keys = target.list_prefix("")
    if keys and target.get(METADATA) is None:
        raise ValueError(f"{what}: the target is not empty and holds no zarr hierarchy ({len(keys)} objects, "
                         f"e.g. {keys[0]!r}); expected an empty location or an earlier export")


# --- whole arrays and datasets: logical keys copied as they are ------------------------------------


def _source_keys(src: Source, prefix: str) -> dict[str, None]:
    """The logical keys under ``prefix`` that the version holds (listed, then a deleted key is one whose
    GET finds nothing: a zero-byte or missing value). Sorted."""
    store = src.store()

    async def run() -> list[str]:
        return [k async for k in store.list_prefix(prefix)]

    return dict.fromkeys(sync(run()))


def _export_keys(src: Source, src_prefix: str, target: Root, dst_prefix: str, progress: bool | None) -> ExportResult:
    import dask

    from hubdask import progress as _progress

    keys = list(_source_keys(src, src_prefix))
    meta = [k for k in keys if k.rsplit("/", 1)[-1] == METADATA]
    chunks = [k for k in keys if k.rsplit("/", 1)[-1] != METADATA]
    rename = [(k, dst_prefix + k[len(src_prefix):]) for k in chunks]
    tasks = [dask.delayed(_copy_batch, pure=False)(src, target.url, target._options, rename[i:i + BATCH])
             for i in range(0, len(rename), BATCH)]
    result = ExportResult(target.url)
    for part in (_progress.compute(tasks, progress) if tasks else []):
        result += part
    result += _copy_batch(src, target.url, target._options, [(k, dst_prefix + k[len(src_prefix):]) for k in meta])
    copied = {d for _, d in rename} | {dst_prefix + k[len(src_prefix):] for k in meta}
    result += _delete_stale(target, dst_prefix, copied)
    return result


def _copy_batch(src: Source, url: str, options: dict, pairs: list[tuple[str, str]]) -> ExportResult:
    """Copy logical key ``s`` of the version to ``d`` in the target, for each pair, unless equal there."""
    from hubdask.storage.cache import immutable_reader
    from zarr.core.buffer import default_buffer_prototype

    store = src.store(immutable_reader(src.root) if src.cache else None)
    target = open_root(url, options)
    proto = default_buffer_prototype()
    out = ExportResult(url)

    async def one(s: str, d: str, gate: asyncio.Semaphore) -> None:
        async with gate:
            buf = await store.get(s, proto)
            if buf is None:  # listed but deleted in this version: not in the export either
                if await target.get_async(d) is not None:
                    await target.delete_async(d)
                    out.deleted += 1
                return
            data = buf.to_bytes()
            if await target.get_async(d) == data:
                out.unchanged += 1
                return
            await target.put_async(d, data)
            out.written += 1
            out.bytes_written += len(data)

    async def run() -> None:
        gate = asyncio.Semaphore(CONCURRENCY)
        await asyncio.gather(*(one(s, d, gate) for s, d in pairs))

    if pairs:
        sync(run())
    return out


def _delete_stale(target: Root, prefix: str, keep: set[str]) -> ExportResult:
    """Delete the target's keys under ``prefix`` that this export did not write (an older export's)."""
    out = ExportResult(target.url)
    for k in target.list_prefix(prefix):
        if k not in keep and not k.endswith(".partial"):
            target.delete(k)
            out.deleted += 1
    return out


def _write_group(target: Root, members: list[str] | None) -> ExportResult:
    """A root group (when ``members`` is given: a plain group holding them) with consolidated metadata,
    so readers without listing (HTTP, xarray) find every array from one ``zarr.json``."""
    import zarr

    store = target.store
    if members is not None:
        doc = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode()
        if target.get(METADATA) != doc:
            target.put(METADATA, doc)
    with warnings.catch_warnings():  # zarr-python's extension to v3; other readers ignore it and list
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(store, zarr_format=3)
    return ExportResult(target.url, written=1)


# --- views: the selection, read and encoded on its own grid ---------------------------------------


def _view_metadata(view: Any) -> dict:
    """The zarr.json of the exported view: its shape, the array's chunk shape along the kept axes
    (clipped to the view), the same codecs, fill value and dimension names of the kept axes."""
    from hubdask import grid

    doc = view.metadata.to_dict()
    kept = [k for k, a in enumerate(view.frozen_view.axes) if isinstance(a, grid.Span)]
    chunks = [max(1, min(c, s)) for c, s in zip(view.frozen_view.blocks, view.shape)]
    doc = json.loads(json.dumps(doc, default=_jsonable))
    codecs = doc.get("codecs") or []
    if view.shards is not None and codecs and codecs[0].get("name") == "sharding_indexed":
        # the kept axes' inner chunks; a shard clipped to the view is one inner chunk along that axis
        inner = [i for i, a in zip(codecs[0]["configuration"]["chunk_shape"], view.frozen_view.axes)
                 if isinstance(a, grid.Span)]
        codecs[0]["configuration"]["chunk_shape"] = [i if c % i == 0 else c for i, c in zip(inner, chunks)]
    doc["shape"] = list(view.shape)
    doc["chunk_grid"] = {"name": "regular", "configuration": {"chunk_shape": chunks}}
    names = doc.get("dimension_names")
    if names is not None:
        doc["dimension_names"] = [names[k] for k in kept]
    doc.pop("storage_transformers", None)
    return doc


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"not JSON: {obj!r}")


def _export_view(view: Any, src: Source, target: Root, inner: str, progress: bool | None) -> ExportResult:
    import dask

    from hubdask import progress as _progress

    doc = _view_metadata(view)
    meta_key = f"{inner}{METADATA}"
    old = target.get(meta_key)
    old_doc = json.loads(old) if old is not None else None
    if old_doc is not None and {k: v for k, v in old_doc.items() if k != "attributes"} != \
            {k: v for k, v in doc.items() if k != "attributes"}:
        target.delete_prefix(inner)  # an earlier export of another shape: nothing of it can be kept
    chunks = doc["chunk_grid"]["configuration"]["chunk_shape"]
    counts = [math.ceil(s / c) if s else 0 for s, c in zip(view.shape, chunks)]
    blocks = list(itertools.product(*(range(n) for n in counts)))
    # The chunks are written through a zarr Array over the new metadata; its zarr.json lands last.
    ref = _ViewRef(src, view.name, view.frozen_view.axes, view.metadata)  # a plain object: dask must not compute the view
    tasks = [dask.delayed(_write_blocks, pure=False)(ref, target.url, target._options, inner.rstrip("/"), doc,
                                                     blocks[i:i + BATCH]) for i in range(0, len(blocks), BATCH)]
    result = ExportResult(target.url)
    for part in (_progress.compute(tasks, progress) if tasks else []):
        result += part
    data = json.dumps(doc, indent=2).encode()
    if target.get(meta_key) != data:
        target.put(meta_key, data)
        result.written += 1
    return result


@dataclasses.dataclass(frozen=True)
class _ViewRef:
    """What a task needs to rebuild the view at the state the export pinned."""

    source: Source
    name: str
    axes: tuple
    meta: Any

    def array(self) -> Any:
        return Array(self.source, self.name, self.axes, self.meta)


def _write_blocks(ref: _ViewRef, url: str, options: dict, path: str, doc: dict, blocks: list) -> ExportResult:
    """Read and write each output chunk of ``blocks`` unless the target already holds those values."""
    view = ref.array()
    import zarr
    from zarr.core.array import AsyncArray
    from zarr.core.metadata import ArrayV3Metadata
    from zarr.storage import StorePath

    target = open_root(url, options)
    arr = zarr.Array(AsyncArray(ArrayV3Metadata.from_dict(dict(doc)), StorePath(target.store, path)))
    chunks = doc["chunk_grid"]["configuration"]["chunk_shape"]
    prefix = f"{path}/" if path else ""
    out = ExportResult(url)
    for block in blocks:
        region = tuple(slice(b * c, min((b + 1) * c, s)) for b, c, s in zip(block, chunks, view.shape))
        data = view[region].read() if region else view.read()
        key = prefix + arr.metadata.encode_chunk_key(block)
        held = target.get(key) is not None
        if held and np.array_equal(arr[region], data, equal_nan=data.dtype.kind in "fc"):
            out.unchanged += 1
            continue
        if not held and _all_fill(data, arr.fill_value):
            continue  # zarr would not write it either
        arr[region] = data
        out.written += 1
    return out


def _all_fill(data: np.ndarray, fill: Any) -> bool:
    if data.dtype.kind in "fc" and np.isnan(fill):
        return bool(np.isnan(data).all())
    return bool((data == fill).all())


def to_zarr(obj: Any, url: str | os.PathLike, progress: bool | None = None,
            storage_options: dict | None = None, overwrite: bool = False) -> None:
    """Write an hd.Array, or every array of a Dataset, as a plain zarr v3 array/group at ``url``, in
    parallel (``write_zarr``), refusing an existing hierarchy unless ``overwrite``."""
    url = os.fspath(url)
    if not overwrite and open_root(url, storage_options).get("zarr.json") is not None:
        raise AlreadyExistsError(f"export of {obj.name!r}: {url} already holds a zarr hierarchy; pass "
                                 "overwrite=True to replace it")
    write_zarr(obj, url, target_options=storage_options, progress=progress)
