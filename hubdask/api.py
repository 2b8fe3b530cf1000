"""The public entry points: create, load, list, delete and store named arrays."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from hubdask.array import Array
from hubdask.dataset import Dataset, write_data
from hubdask.history import resolve
from hubdask.errors import AlreadyExistsError, InvalidNameError, NotFoundError
from hubdask.export import ExportResult, write_zarr
from hubdask.names import Name, parse
from hubdask.source import Source
from hubdask.spec import ArraySpec, array_spec, auto_chunks  # noqa: F401  (auto_chunks: public here too)
from hubdask.storage import Root, open_root
from hubdask.versioning import repository
from hubdask.versioning import layout
from hubdask.versioning.repository import forget

Storage = str | os.PathLike | Root | None
DEFAULT_BRANCH = "main"


def locate(name: str, storage: Storage = None, storage_options: dict | None = None) -> tuple[Root, Name]:
    """Parse ``name`` (before any I/O) and find its root: the URL in the name, ``storage=``, or the default."""
    n = parse(name)
    if isinstance(storage, Root):
        root = storage if n.root is None else open_root(n.root, storage_options)
    else:
        root = open_root(n.root if n.root is not None else storage, storage_options)
    return root, n


def _display(root: Root, n: Name, ref: str) -> str:
    return n.with_ref(ref)


@contextlib.contextmanager
def creating(root: Root, what: str) -> Iterator[None]:
    """Around a creation's first writes: a missing bucket becomes one line naming it and the root."""
    try:
        yield
    except NotFoundError as exc:
        if not getattr(exc, "missing_bucket", None):
            raise
        bucket = root.url.split("://", 1)[-1].split("/", 1)[0]
        raise NotFoundError(f"{what}: the bucket {bucket!r} of the root {root.url} does not exist; expected an "
                            f"existing bucket: create it first (e.g. aws s3 mb s3://{bucket})") from None


def array(shape: Any, name: str, dtype: Any = "float64", chunks: Any = None, fill_value: Any = 0,
          codecs: Any = None, exist_ok: bool = False, storage: Storage = None,
          storage_options: dict | None = None, dims: Any = None, shards: Any = None) -> Array:
    """Create the named array (metadata only: O(1) for any shape) and return it opened on its branch.

    ``name`` is ``owner/dataset[:BRANCH]``; the branch (default ``main``) is the dataset's first.
    ``codecs``: ``"zstd"`` (default), ``"blosc"``, ``"none"`` or a list of zarr bytes-to-bytes codecs;
    a crc32c checksum is always appended so corrupted bytes are detected. ``dims``: a name per axis,
    stored as zarr ``dimension_names`` (what xarray and other zarr tools call the dimensions).
    ``shards``: store whole shards of ``chunks`` as one object each (zarr v3's sharding codec; a shape
    that is a multiple of ``chunks``, or ``"auto"``: about ``HUBDASK_SHARD_MB``, 128 MiB, per shard).
    """
    root, n = locate(name, storage, storage_options)
    what = f"dataset {str(n)!r}"
    spec = ArraySpec.make(what, "", shape, dtype, chunks, fill_value, codecs, dims, shards=shards)  # everything, before any I/O
    shape, dt = spec.shape, spec.dtype
    repo = repository(root, n.path)
    branch = n.ref or DEFAULT_BRANCH
    if repo.exists(refresh=True):
        if not exist_ok:
            raise AlreadyExistsError(f"{what} already exists in {root.url}; pass exist_ok=True to open it")
        existing = load(name, storage=root)
        if existing.shape != shape or existing.dtype != dt:
            raise ValueError(f"{what} exists with shape {existing.shape} and dtype {existing.dtype}, "
                             f"not {shape} {dt}")
        return existing

    with creating(root, what):
        state = repo.create(branch, spec.create)
    return open_at(root, n, repo, state)


def dataset(name: str, *, storage: Any = None, storage_options: dict | None = None, exist_ok: bool = False,
            commit: str | bool = True, progress: bool | None = None, **arrays: Any) -> Dataset:
    """Create the named multi-array dataset and return it opened on its branch.

    Each keyword is an array: ``images=dict(shape=(n, 28, 28), dtype="uint8", chunks=...)`` (metadata
    only), or data (numpy, dask, ``hd.Array``, anything array-like) that is written in parallel and
    committed (``commit=`` the message, or False to leave it uncommitted). With ``exist_ok=True`` an
    existing dataset is returned after checking that it has these arrays with these shapes and dtypes
    (its data is not rewritten).
    """
    import zarr

    root, n = locate(name, storage, storage_options)
    what = f"dataset {str(n)!r}"
    if not arrays:
        raise TypeError(f"{what}: name at least one array, e.g. hd.dataset(name, images=dict(shape=..., "
                        "dtype=...), labels=...)")
    specs = [array_spec(what, key, spec) for key, spec in arrays.items()]
    repo = repository(root, n.path)
    if repo.exists(refresh=True):
        if not exist_ok:
            raise AlreadyExistsError(f"{what} already exists in {root.url}; pass exist_ok=True to open it")
        existing = load(name, storage=root)
        if not isinstance(existing, Dataset):
            raise ValueError(f"{what} exists as a single array, not a dataset of {sorted(arrays)}")
        have = existing.arrays
        for s in specs:
            a = have.get(s.key)
            if a is None or a.shape != s.shape or a.dtype != s.dtype:
                found = "no such array" if a is None else f"shape {a.shape} and dtype {a.dtype}"
                raise ValueError(f"{what} exists, and its array {s.key!r} has {found}, not {s.shape} {s.dtype}")
        return existing

    def write_group(store: Any) -> None:
        group = zarr.create_group(store=store, zarr_format=3)
        for s in specs:
            s.create_in(group)

    with creating(root, what):
        state = repo.create(n.ref or DEFAULT_BRANCH, write_group)
    ds = open_at(root, n, repo, state)
    if write_data(ds, specs, progress) and commit:
        keys = ", ".join(s.key for s in specs if s.data is not None)
        ds.commit(commit if isinstance(commit, str) else f"ingest {keys}")
    return ds


def load(name: str, storage: Storage = None, storage_options: dict | None = None, *, _path: str = "",
         cache: bool = True) -> Any:
    """Open a named array or dataset lazily (metadata only) at a branch (default) , tag or commit.
    ``cache=False`` reads committed chunks of a remote root from storage, bypassing the local disk cache."""
    root, n = locate(name, storage, storage_options)
    repo = repository(root, n.path)
    if n.ref is None and not repo.exists():  # the default branch is in the marker: read it first
        _not_found(repo, n.base)
    try:
        state = resolve(repo, n.ref)  # a REF's lookups and the marker's GET go out together
    except NotFoundError:
        if not repo.exists():
            _not_found(repo, n.base)
        raise
    if not repo.exists():
        _not_found(repo, n.base)
    return open_at(root, n, repo, state, _path, cache)


def _not_found(repo, name: str) -> None:
    """NotFoundError for a dataset that does not exist (or one in an older format, saying how to convert)."""
    legacy = repo.legacy_format()
    if legacy is not None:
        raise NotFoundError(f"dataset {name!r} in {repo.root.url} is stored in the older format {legacy}; "
                            f"convert it once with `hubdask upgrade {name}` (hd.upgrade), then open it")
    raise NotFoundError(f"no dataset {name!r} in {repo.root.url}; hd.ls() lists what exists")


def open_at(root: Root, n: Name, repo, state, path: str = "", cache: bool = True) -> Any:
    """The Array (or Dataset) at the resolved ``state``: one metadata read (from the disk cache if seen)."""
    display = _display(root, n, state.ref)
    meta = _node_metadata(repo, state, path, display, cache)
    src = Source.at(root, n.path, path, state.commit, state.head, cache=cache)
    if meta.get("node_type") == "group":
        return Dataset(src, display)
    return Array(src, display, meta=src.zarr(None if src.meta_seq else meta).metadata)  # no second GET


def _node_metadata(repo, state, path: str, display: str, cache: bool = True) -> dict:
    """The zarr.json of ``path`` at ``state`` (committed metadata through the disk cache: it never changes)."""
    from hubdask.storage import sync
    from hubdask.storage.cache import immutable_reader
    from zarr.core.buffer import default_buffer_prototype

    key = f"{path}/zarr.json" if path else "zarr.json"
    store = repo.store(state, immutable_get=immutable_reader(repo.root) if cache else None)
    buf = sync(store.get(key, default_buffer_prototype()))
    if buf is None:
        raise NotFoundError(f"dataset {display!r} has no array {path or '(root)'!r} at this ref")
    try:
        meta = json.loads(buf.to_bytes())
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3:
        from hubdask.errors import CorruptChunkError

        raise CorruptChunkError(f"dataset {display!r}: its metadata {key!r} is damaged in storage; expected "
                                "zarr v3 metadata (JSON with zarr_format 3)")
    return meta


def ls(prefix: str = "", storage: Storage = None, storage_options: dict | None = None) -> list[str]:
    """Names of the datasets under ``prefix`` (an owner, or '' for everything at the root)."""
    root = storage if isinstance(storage, Root) else open_root(storage, storage_options)
    prefix = prefix.strip("/")
    if prefix:
        for part in prefix.split("/"):
            from hubdask.names import check_part

            check_part(part, "prefix part", prefix)
    found: list[str] = []

    def walk(pre: str, depth: int) -> None:
        for entry in root.list_dir(f"{pre}/" if pre else ""):
            entry = entry.rstrip("/")
            path = f"{pre}/{entry}" if pre else entry
            if entry.startswith(("@", ".")):
                continue  # a dataset's internals (@hub), the root's lock files (@locks)
            if root.get(layout.marker_key(path)) is not None:
                found.append(path)
            if depth < 1:
                walk(path, depth + 1)  # 'p' and 'p/x' may both be datasets

    walk(prefix, prefix.count("/") + (1 if prefix else 0))
    if prefix and root.get(layout.marker_key(prefix)) is not None:
        found.append(prefix)
    return sorted(found)


def delete(name: str, storage: Storage = None, storage_options: dict | None = None) -> int:
    """Delete a whole dataset (every branch, tag and commit); returns the number of objects removed."""
    root, n = locate(name, storage, storage_options)
    if n.ref:
        raise InvalidNameError(f"delete takes a dataset name without ':REF' (got {name!r}); "
                               "to remove a branch or tag use .delete_branch / .delete_tag")
    repo = repository(root, n.path)
    if not repo.exists(refresh=True):
        _not_found(repo, name)
    removed = repo.delete()  # only this dataset's @hub/ folder: datasets named under it are untouched
    forget(root, n.path)
    return removed


def upgrade(name: str, storage: Storage = None, storage_options: dict | None = None) -> int:
    """Convert a dataset stored in an older format (hubdask/1 or /2) to the current one, in place;
    returns the number of objects converted (0 if it is current already). Run it while nothing writes."""
    from hubdask import progress as _progress
    from hubdask.versioning.upgrade import upgrade as convert

    root, n = locate(name, storage, storage_options)
    with _progress.bar(total=None, desc=f"upgrade {n.path}") as bar:
        done = convert(root, n.path, progress=bar.update)
    forget(root, n.path)
    return done


def gc(name: str, dry_run: bool = True, grace: float = 3600.0, storage: Storage = None,
       storage_options: dict | None = None):
    """Objects of a dataset that no branch, tag or open node reaches; deleted unless ``dry_run``.

    Nodes younger than ``grace`` seconds are spared (they may be in flight)."""
    from hubdask.versioning.gc import gc as collect

    root, n = locate(name, storage, storage_options)
    repo = repository(root, n.path)
    if not repo.exists(refresh=True):
        _not_found(repo, name)
    return collect(repo, dry_run=dry_run, grace=grace)


def store(source: Any, target: str | Array, region: Any = None, *, storage: Storage = None,
          storage_options: dict | None = None, chunks: Any = None, compute: bool = True,
          lock: bool | str | None = None, progress: bool | None = None, shards: Any = None,
          grow: bool = False) -> Any:
    """Write a dask (or numpy) array into ``target`` in parallel: one task per storage chunk, lock-free.

    ``target`` is an Array or a name; a name that does not exist is created with the source's shape
    and dtype (``chunks`` or automatic, ``shards`` as for ``hd.array``). With ``compute=False`` returns the lazy dask array to compute.
    ``grow=True``: a ``region`` (slices with explicit stops) reaching past the array's end grows it first
    (concurrent growers agree on the largest shape), for pipelines of one task per output block.
    """
    import dask.array as da

    from hubdask.write import store as plan, store_all

    if not isinstance(source, da.Array):
        source = da.from_array(np.asarray(source), chunks="auto")
    if isinstance(target, str):
        root, n = locate(target, storage, storage_options)
        if repository(root, n.path).exists():
            target = load(target, storage=root)
        else:
            target = array(source.shape, target, dtype=source.dtype, chunks=chunks, shards=shards,
                           storage=root)
    if grow:
        target = _grown(target, region, lock)
    if not compute:
        return plan(source, target, region, lock=lock)
    store_all([(source, target, region)], lock=lock, progress=progress)
    return target


def _grown(target: Array, region: Any, lock: bool | str | None) -> Array:
    """``target`` grown so that ``region`` lies inside it (hd.store's ``grow=True``)."""
    what = f"dataset {target.name!r}"
    region = region if isinstance(region, tuple) else (region,)
    if not region or not all(isinstance(r, slice) and r.stop is not None and (r.start or 0) >= 0
                             and r.stop >= 0 and r.step in (None, 1) for r in region):
        raise ValueError(f"{what}: store(..., grow=True) needs region= as a tuple of slices with non-negative "
                         f"starts and explicit stops, got {region!r}")
    ends = tuple(r.stop for r in region) + tuple(target.shape[len(region):])
    return target.grow_to(ends, lock=lock)


def export(obj: Any, url: str | os.PathLike, *, group: bool | str = False, storage: Storage = None,
           storage_options: dict | None = None, target_options: dict | None = None,
           progress: bool | None = None) -> ExportResult:
    """Write ``obj`` (a name ``owner/ds:REF``, an ``hd.Array`` or a view of one, or an ``hd.Dataset``)
    as a plain zarr v3 array or group at ``url``; a branch is exported at its state when this starts.

    ``group=True`` (or a name) puts a single array inside a group, as the array of that name (default:
    the dataset's last name part), so xarray can open it. ``target_options``: fsspec/s3fs options of
    ``url``. Returns what was written, already equal and deleted (see hubdask.export).
    """
    if isinstance(obj, str):
        obj = load(obj, storage=storage, storage_options=storage_options)
    return write_zarr(obj, url, group=group, target_options=target_options, progress=progress)
