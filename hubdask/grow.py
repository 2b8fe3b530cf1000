"""Arrays that change shape on a branch: resize, append and growing stores, under version control.

The shape is versioned state: the array's ``zarr.json`` is a key of the branch's open node like any chunk,
so a commit pins the shape it saw and older commits and tags keep theirs. Every change of shape is one
mechanism, ``change_shape``: under the lock of the array's metadata (the scheduler's on a cluster, a file
lock locally, as for chunk writes) it reads the newest version of ``zarr.json`` in the open node and
creates exactly the next version (an exclusive create: the fence that makes the change atomic even
without the lock), after putting the node's meta mark (versioning.refs) so that readers of the head know
the node's metadata is current. An append's rows are reserved that way, so concurrent appenders get
disjoint regions; a commit that sealed the node meanwhile either holds the reservation (its record names
the version) or not, in which case the rows are reserved again on the next open node.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from hubdask.errors import ReadOnlyError, refusing_read_only
from hubdask.locks import chunk_locks, lock_name
from hubdask.source import Source
from hubdask.storage import sync
from hubdask.versioning import refs, repository
from hubdask.versioning.diff import outside
from hubdask.versioning.store import (StaleRead, begin_write, keep_small_version, known_version, newest_version,
                                      put_version)
from hubdask.write import coerce, write_region

Shape = tuple[int, ...]


def _writable(src: Source, what: str, action: str) -> None:
    if src.branch is None:
        raise ReadOnlyError(f"{what} is opened at commit {src.commit} (a tag or commit id) and is read-only; "
                            f"cannot {action}: open a branch")


CHANGE_FIELD = "hubdask_change"


def change_shape(src: Source, what: str, decide: Callable[[Shape], Shape], lock: bool | str | None = None
                 ) -> tuple[Source, Shape, Shape]:
    """Set the array's shape to ``decide(current shape)`` in the branch's open node, atomically; returns
    (the source at the version made, the shape before, the shape after). ``decide`` may raise (bad input:
    nothing is written) and is called again whenever another writer changed the shape first."""
    _writable(src, what, "change its shape")
    repo = repository(src.root, src.ds)
    root, ds, key = src.root, src.ds, src.meta_key
    listed = False  # whether this node's versions of zarr.json were listed (else: the newest one seen here)
    while True:
        node, branch = src.node, src.branch
        with refusing_read_only(what, root.url), chunk_locks([lock_name(root.url, ds, branch, key)], lock, root=root):
            begin_write(root, ds, node)
            store = src.store()
            sync(_marks(root, ds, branch, node, store))  # before the version they announce
            # the newest version seen here is a hint: creating the next one fails if another writer went
            # further (StaleRead), and the versions are listed then
            seq = sync(newest_version(root, ds, node, key)) if listed else known_version(root, ds, node, key)
            raw = store.small_bytes(key, seq)
            meta = json.loads(raw)
            old = tuple(meta["shape"])
            new = tuple(int(n) for n in decide(old))
            if new == old:  # nothing to change (an append of no rows, a grow already reached)
                return src if not seq else _pinned(src, seq), old, new
            meta["shape"] = list(new)
            # the version's bytes name this change alone: a create whose answer was lost counts as ours
            # when the object holds our bytes (storage.retry), and two appenders growing 6 -> 9 rows would
            # otherwise write the very same bytes and both take rows 6:9 (a zarr v3 extension field)
            meta[CHANGE_FIELD] = {"must_understand": False, "id": uuid.uuid4().hex}
            data = json.dumps(meta).encode()
            try:
                made = sync(put_version(root, ds, node, key, data, based_on=seq, what=what))
            except StaleRead:
                listed = True
                continue
            keep_small_version(root, ds, node, key, made, data)
        seal = repo.seal(node)
        if seal is None:
            return _pinned(src, made), old, new
        head = repo.after_write(branch, node)  # the head after the commit that sealed the node
        if _holds(repo, seal, key, node, made):
            return src.at_head(head), old, new
        src, listed = src.at_head(head), False  # the commit missed it: change the shape again on the new node


async def _marks(root: Any, ds: str, branch: str, node: str, store: Any) -> None:
    """The node's meta mark and this process's written mark, together (each once per process and node)."""
    import asyncio

    done = await asyncio.gather(refs.mark_meta(root, ds, branch, node), store.mark_written(), return_exceptions=True)
    for outcome in done:
        if isinstance(outcome, BaseException):
            raise outcome


def _pinned(src: Source, seq: int) -> Source:
    return dataclasses.replace(src.written_here(), meta_seq=seq, meta_changed=True)


def _holds(repo: Any, seal: dict, key: str, node: str, seq: int) -> bool:
    """Whether the commit named by ``seal`` holds version ``seq`` (or a later one) of ``key`` in ``node``."""
    rec = repo.graph.get(seal.get("commit") or "")
    held = rec.changes.get(key) if rec is not None else None
    if not held or not held.startswith(f"{node}@"):
        return False
    return int(held.partition("@")[2]) >= seq


def check_shape(shape: Any, ndim: int, what: str) -> Shape:
    """``shape`` as a tuple of ``ndim`` non-negative ints, or ValueError/TypeError naming the dataset."""
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        out = tuple(operator.index(n) for n in shape)
    except TypeError:
        raise TypeError(f"{what}: a shape is a tuple of integers, got {shape!r}") from None
    if len(out) != ndim or any(n < 0 for n in out):
        raise ValueError(f"{what}: expected a shape of {ndim} non-negative integers (the array has {ndim} axes), "
                         f"got {shape!r}")
    return out


def resize(src: Source, what: str, new_shape: Any, fill: Any, chunks: Shape,
           lock: bool | str | None = None) -> Source:
    """Set the array's shape on its branch; chunks wholly outside a smaller shape are deleted and the cut
    part of the edge chunks is reset to the fill value, so that growing again reads the fill value."""
    src, old, new = change_shape(src, what, lambda cur: check_shape(new_shape, len(cur), what), lock)
    if all(n >= o for n, o in zip(new, old)):
        return src
    dtype = src.zarr().metadata.dtype.to_native_dtype()
    for key in src.stored_keys(f"{src.chunk_prefix()}c"):
        coords = tuple(int(x) for x in key[len(src.chunk_prefix()) + 1:].split("/")[1:])
        if len(coords) != len(new):
            continue
        for sel in outside(coords, chunks, new):
            data = np.full(tuple(s.stop - s.start for s in sel), fill, dtype)
            src = write_region(src, sel, data, new, chunks, lock)
    return src


def append_region(old: Shape, k: int, axis: int) -> tuple[slice, ...]:
    """The region an append of ``k`` rows along ``axis`` writes into an array of shape ``old``."""
    return tuple(slice(old[axis], old[axis] + k) if i == axis else slice(0, n) for i, n in enumerate(old))


def append(src: Source, what: str, values: Any, axis: int, dtype: np.dtype, chunks: Shape,
           lock: bool | str | None = None, at_least: Callable[[Shape], None] | None = None
           ) -> tuple[tuple[slice, ...], Source]:
    """Append ``values`` along ``axis``: reserve rows (change_shape), then write them; returns (the
    region written, the source the write landed in)."""
    _writable(src, what, "append")
    ndim = len(src.zarr().metadata.shape)
    axis = _axis(axis, ndim, what)
    data = coerce(values, dtype, np.shape(values), what)
    if data.ndim != ndim:
        raise ValueError(f"{what}: appended values must have {ndim} axes like the array, got shape {data.shape}")
    k = data.shape[axis]

    def grown(cur: Shape) -> Shape:
        other = cur[:axis] + cur[axis + 1:]
        if data.shape[:axis] + data.shape[axis + 1:] != other:
            raise ValueError(f"{what}: appended values of shape {data.shape} must match the array's shape {cur} "
                             f"on every axis but {axis}")
        return cur[:axis] + (cur[axis] + k,) + cur[axis + 1:]

    src, old, new = change_shape(src, what, grown, lock)
    region = append_region(old, k, axis)
    if k:
        src = write_region(src, region, data, new, chunks, lock)
    return region, src


def grow_to(src: Source, what: str, ends: Shape, lock: bool | str | None = None) -> Source:
    """Grow the array so that every axis reaches at least ``ends`` (never shrinks: concurrent growers
    of one array agree on the largest)."""
    src, _, _ = change_shape(src, what, lambda cur: tuple(max(c, e) for c, e in zip(cur, ends)), lock)
    return src


def _axis(axis: Any, ndim: int, what: str) -> int:
    if not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ValueError(f"{what}: axis must be an integer in [{-ndim}, {ndim}), got {axis!r}")
    return int(axis) % ndim


def append_together(parts: list[tuple[Source, str, Any, np.dtype, Shape]], axis: int, what: str,
                    lock: bool | str | None = None) -> tuple[int, int, list[Source]]:
    """Append to several arrays of one dataset so that row i is the same sample in each, with any number
    of concurrent appenders: the rows are reserved on the first array alone (change_shape, its length is
    the dataset's counter), and every other array is grown to at least the reserved end (grow_to never
    shrinks) and written at the same rows. ``parts``: (source, name, values, dtype, storage chunks) per
    array. Returns (first row, rows appended, the sources the writes landed in)."""
    datas, ks = [], set()
    for src, name, values, dtype, _ in parts:
        _writable(src, name, "append")
        shape = tuple(src.zarr().metadata.shape)
        ax = _axis(axis, len(shape), name)
        data = coerce(values, dtype, np.shape(values), name)
        if data.ndim != len(shape) or data.shape[:ax] + data.shape[ax + 1:] != shape[:ax] + shape[ax + 1:]:
            raise ValueError(f"{name}: appended values of shape {data.shape} must match the array's shape {shape} "
                             f"on every axis but {ax}")
        datas.append((data, ax))
        ks.add(data.shape[ax])
    if len(ks) != 1:
        raise ValueError(f"{what}: append the same number of samples to every array, got "
                         f"{ {p[1]: d.shape[a] for p, (d, a) in zip(parts, datas)} }")
    (k,) = ks
    first_src, first_name, _, _, first_chunks = parts[0]
    region, landed = append(first_src, first_name, datas[0][0], datas[0][1], parts[0][3], first_chunks, lock)
    start = region[datas[0][1]].start
    out = [landed]
    for (src, name, _, _, chunks), (data, ax) in zip(parts[1:], datas[1:]):
        ends = tuple(start + k if i == ax else 0 for i in range(data.ndim))
        src = grow_to(src, name, ends, lock)
        sel = tuple(slice(start, start + k) if i == ax else slice(0, n) for i, n in enumerate(data.shape))
        out.append(write_region(src, sel, data, tuple(src.zarr().metadata.shape), chunks, lock) if k else src)
    return start, k, out
