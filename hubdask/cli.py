"""The ``hubdask`` command: list, inspect, copy, version, picture and view named arrays.

Every command takes ``--storage ROOT`` (else ``HUBDASK_ROOT``, else ``~/.hubdask``) for names without a
URL. User mistakes print one line to stderr and exit 2 (usage: bad arguments, bad names or indices) or
1 (errors: unknown dataset, read-only ref, conflict, ...), never a traceback; ``--debug`` shows one.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import math
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, NoReturn, Sequence

import numpy as np

PROG = "hubdask"


class UsageError(Exception):
    """A mistake in how the command was called (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage dump
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --- arguments ------------------------------------------------------------------------------------


def split_index(text: str) -> tuple[str, tuple]:
    """``'owner/ds:v1[0, 10:20, ...]'`` -> ``('owner/ds:v1', (0, slice(10, 20), Ellipsis))``."""
    if "[" not in text:
        return text, ()
    name, _, rest = text.partition("[")
    if not rest.endswith("]"):
        raise UsageError(f"index in {text!r} must end with ']', e.g. NAME[0] or NAME[0, 100:200]")
    body = rest[:-1].strip()
    if not body:
        raise UsageError(f"empty index in {text!r}: write NAME[0] or leave the brackets out")
    return name, tuple(_index_item(part.strip(), text) for part in body.split(","))


def _index_item(part: str, full: str) -> Any:
    if part == "...":
        return Ellipsis
    try:
        if ":" in part:
            pieces = part.split(":")
            if len(pieces) > 3:
                raise ValueError
            return slice(*(int(ast.literal_eval(p)) if p.strip() else None for p in pieces))
        value = ast.literal_eval(part)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError
        return value
    except (ValueError, SyntaxError):
        raise UsageError(f"bad index item {part!r} in {full!r}: expected integers, start:stop:step slices "
                         "or '...'") from None


def _storage(args: argparse.Namespace) -> str | None:
    return args.storage


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.quiet else (True if args.progress else None)


def _load(name: str, args: argparse.Namespace, storage: str | None = None) -> Any:
    import hubdask as hd

    return hd.load(name, storage=storage or _storage(args))


def _array(name: str, args: argparse.Namespace) -> Any:
    """The array ``name`` names, or ``--array KEY`` of the dataset it names."""
    obj = _load(name, args)
    key = getattr(args, "array", None)
    if hasattr(obj, "shape"):
        if key:
            raise UsageError(f"{name!r} is a single array; --array is for datasets of several arrays")
        return obj
    if not key:
        raise UsageError(f"{name!r} is a dataset of several arrays ({', '.join(obj.keys())}): pick one with --array KEY")
    return obj[key]


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


# --- commands -------------------------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    import hubdask as hd

    names = hd.ls(args.prefix or "", storage=_storage(args))
    if args.json:
        print(json.dumps(names))
        return 0
    for name in names:
        if args.long:
            try:
                a = _load(name, args)
                print(f"{name}\t{'x'.join(map(str, a.shape))}\t{a.dtype}" if hasattr(a, "shape") else f"{name}\tdataset")
            except Exception as exc:  # one broken dataset must not hide the others
                print(f"{name}\t(unreadable: {type(exc).__name__})")
        else:
            print(name)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from hubdask.viz.summary import summarize

    obj = _load(args.name, args)
    if not hasattr(obj, "shape") and not args.array:  # a dataset: every array
        arrays = obj.arrays
        if args.json:
            print(json.dumps({k: summarize(a, max_sized=None).to_dict() for k, a in arrays.items()}, default=str))
            return 0
        for k, a in arrays.items():
            print(f"[{k}]")
            _print_info(summarize(a, max_sized=None))
        return 0
    s = summarize(_array(args.name, args), max_sized=None)
    if args.json:
        print(json.dumps(s.to_dict(), default=str))
        return 0
    _print_info(s)
    return 0


def _dims(shape: Any) -> str:
    return " x ".join(map(str, shape)) or "()"


def _print_info(s: Any) -> None:
    from hubdask.viz.summary import human_bytes

    shape = " x ".join(map(str, s.shape)) or "()"
    last = s.last_commit
    ratio = f" ({100 * s.stored_bytes / s.logical_bytes:.3g}% of logical)" if s.logical_bytes and s.stored_bytes else ""
    rows = [
        ("name", s.name), ("root", s.root),
        ("shape", shape + (f" (resized: {_dims(s.committed_shape)} at the last commit)"
                           if s.committed_shape is not None else "")), ("dtype", s.dtype),
        ("chunks", " x ".join(map(str, s.chunks))),
        *([("shards", " x ".join(map(str, s.shards)))] if s.shards else []),
        ("shard grid" if s.shards else "chunk grid",
         f"{' x '.join(f'{g:,}' for g in s.grid)} = {s.total_chunks:,} {'shards' if s.shards else 'chunks'}, "
         f"{s.written:,} written"),
        ("logical size", f"{human_bytes(s.logical_bytes)} ({s.logical_bytes:,} bytes)"),
        ("stored size", f"{human_bytes(s.stored_bytes)} ({s.stored_bytes:,} bytes){ratio}"),
        ("fill value", str(s.fill_value)),
        ("ref", f"branch {s.branch}" + (f" ({s.uncommitted} uncommitted chunks)" if s.uncommitted else "")
         if s.branch else f"commit {s.commit}"),
        ("last commit", "none" if last is None else f"{last.id}  {_when(last.time)}  {last.message}"),
        ("branches", ", ".join(s.branches) or "none"),
        ("tags", ", ".join(f"{t} -> {c}" for t, c in s.tags.items()) or "none"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def cmd_log(args: argparse.Namespace) -> int:
    obj = _load(args.name, args)
    commits = obj.log()
    tags: dict[str, list[str]] = {}
    for t, c in obj.tags.items():
        tags.setdefault(c, []).append(t)
    if args.n:
        commits = commits[: args.n]
    if args.json:
        print(json.dumps([{"id": c.id, "parents": list(c.parents), "time": c.time, "message": c.message,
                           "changes": len(c.changes), "tags": tags.get(c.id, []),
                           "shapes": {p: [list(o), list(n)] for p, (o, n) in obj.shape_changes(c).items()}}
                          for c in commits]))
        return 0
    for c in commits:
        label = f"  (tag: {', '.join(tags[c.id])})" if c.id in tags else ""
        merge = "  (merge)" if len(c.parents) > 1 else ""
        shapes = "".join(f"  (shape{' of ' + p if p else ''}: {_dims(o)} -> {_dims(n)})"
                         for p, (o, n) in obj.shape_changes(c).items())
        print(f"{c.id}  {_when(c.time)}  {c.message or '(no message)'}  [{len(c.changes)} changed]{label}{merge}"
              f"{shapes}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from hubdask.viz import to_png

    name, index = split_index(args.target)
    a = _array(name, args)
    view = a[index] if index else a
    out = args.output or f"{name.split(':')[0].rstrip('/').rsplit('/', 1)[-1]}.png"
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise UsageError(f"cannot write {out!r}: no folder {folder!r}; expected -o PATH in an existing folder")
    to_png(view, out, vmin=args.vmin, vmax=args.vmax, cmap=args.cmap, max_side=args.max_side,
           min_side=args.min_side)
    print(f"wrote {out} ({'x'.join(map(str, view.shape))} {view.dtype} slice of {a.name})")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    import hubdask as hd

    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"rm deletes every version of {args.name!r}: pass --yes to confirm")
        answer = input(f"delete {args.name!r} with all its branches, tags and commits? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    n = hd.delete(args.name, storage=_storage(args))
    print(f"deleted {args.name} ({n} objects)")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    import hubdask as hd

    dry_run = not args.yes  # as hd.gc: a dry run unless asked to delete
    report = hd.gc(args.name, dry_run=dry_run, grace=args.grace, storage=_storage(args))
    verb = "would delete" if dry_run else "deleted"
    print(f"{verb} {len(report.unreachable)} unreachable objects of {args.name}"
          + (" (a dry run: pass --yes to delete them)" if dry_run and report.unreachable else ""))
    if args.verbose:
        for key in report.unreachable:
            print(f"  {key}")
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    import hubdask as hd

    n = hd.upgrade(args.name, storage=_storage(args))
    print(f"{args.name} is in the current format" + (f" ({n} objects converted)" if n else " already"))
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    import inspect

    obj = _load(args.name, args)
    branch = obj.branch_name
    if branch is None:
        obj.commit(args.message)  # raises the ReadOnlyError that names the tag or commit
    repo = obj._repo
    before = repo.resolve(branch).commit
    if not args.allow_empty and not repo.uncommitted(branch):
        print(f"nothing to commit on {obj.name} (still at {before}; --allow-empty makes an empty commit)")
        return 0
    kwargs = {"allow_empty": True} if args.allow_empty and "allow_empty" in inspect.signature(obj.commit).parameters \
        else {}
    cid = obj.commit(args.message, **kwargs)
    if cid == before:  # the branch's writes were already committed by someone else meanwhile
        print(f"nothing to commit on {obj.name} (still at {before})")
        return 0
    print(cid)
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    obj = _load(args.name, args)
    if args.delete:
        obj.delete_tag(args.delete)
        print(f"deleted tag {args.delete}")
    elif args.tag is None:
        for t, c in obj.tags.items():
            print(f"{t}\t{c}")
    else:
        print(f"{args.tag} -> {obj.tag(args.tag)}")
    return 0


def cmd_branch(args: argparse.Namespace) -> int:
    obj = _load(args.name, args)
    if args.delete:
        obj.delete_branch(args.delete)
        print(f"deleted branch {args.delete}")
    elif args.branch is None:
        current = obj.branch_name
        for b in obj.branches:
            print(f"{'*' if b == current else ' '} {b}")
    else:
        new = obj.branch(args.branch)
        print(f"branch {args.branch} at {new.commit_id}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    obj = _load(args.name, args)
    before = obj.commit_id
    cid = obj.merge(args.ref, strategy=args.strategy, message=args.message)
    if cid == before:
        print(f"nothing to merge: {obj.name} already holds {args.ref}")
    else:
        print(f"merged {args.ref} into {obj.name}: commit {cid}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from hubdask.names import parse

    obj = _load(args.name, args)
    other = args.other
    if other and ":" in other:  # NAME:REF of the same dataset, as in 'hubdask diff o/d:exp o/d:main'
        theirs, ours = parse(other), parse(args.name)
        if theirs.base != ours.base:
            raise UsageError(f"diff compares two refs of one dataset; {other!r} is not a ref of {ours.base!r}: "
                             "expected REF or NAME:REF")
        other = theirs.ref
    changes = obj.diff(other)
    against = other or "its last commit"
    if args.json:
        print(json.dumps([{"key": c.key, "array": c.array, "kind": c.kind, "chunk": list(c.chunk) if c.chunk else None,
                           "region": [[s.start, s.stop] for s in c.region] if c.region else None} for c in changes]))
        return 0
    if not changes:
        print(f"no differences between {against} and {obj.name}")
        return 0
    rows = [(c.kind, c.array or "(root)", "metadata" if c.chunk is None else "/".join(map(str, c.chunk)),
             "" if not c.region else "[" + ", ".join(f"{s.start}:{s.stop}" for s in c.region) + "]") for c in changes]
    header = ("change", "array", "chunk", "region")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for r in [header, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    print(f"{len(changes)} changes from {against} to {obj.name}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hubdask import demo

    return demo.run(storage=_storage(args), keep=not args.cleanup)


def cmd_view(args: argparse.Namespace) -> int:
    from hubdask.viz.server import ViewerServer

    a = _array(args.name, args)
    try:
        server = ViewerServer(a, port=args.port, max_side=args.max_side)
    except OSError as exc:
        raise UsageError(f"cannot serve the viewer on 127.0.0.1 port {args.port} ({exc.strerror or exc}); "
                         "expected a free port: pick another with --port, or --port 0 for any") from None
    print(f"viewing {a.name} at {server.url} (Ctrl-C to stop)", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


# --- export and serve: a version for any zarr tool -------------------------------------------------


def _public_options(args: argparse.Namespace) -> dict | None:
    return {"anon": True} if getattr(args, "anon", False) else None


def cmd_export(args: argparse.Namespace) -> int:
    import hubdask as hd

    done = hd.export(args.name, args.url, group=args.group or False, storage=_storage(args),
                     storage_options=_public_options(args), progress=_progress(args))
    print(f"exported {args.name} to {done.url}: {done.written} objects written, {done.unchanged} already "
          f"equal, {done.deleted} deleted", flush=True)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from hubdask.serve import VersionServer

    server = VersionServer(args.name, host=args.host, port=args.port, storage=_storage(args),
                           storage_options=_public_options(args))
    print(f"serving {args.name} read-only at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _add_zarr_commands(add: Callable) -> None:
    sp = add("export", cmd_export, "write a version as a plain zarr v3 array or group (any fsspec URL), restartably")
    sp.add_argument("name", help="owner/dataset[:REF] or a full URL")
    sp.add_argument("url", help="target folder or URL, e.g. out.zarr or s3://bucket/out.zarr")
    sp.add_argument("--group", nargs="?", const=True, metavar="NAME",
                    help="put a single array in a group (as NAME), so xarray opens it")
    sp.add_argument("--anon", action="store_true", help="read a public S3 root without credentials")
    sp = add("serve", cmd_serve, "serve a version read-only over HTTP as a plain zarr v3 hierarchy")
    sp.add_argument("name", help="owner/dataset[:REF]; a branch serves its current state")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free one)")
    sp.add_argument("--anon", action="store_true", help="read a public S3 root without credentials")


# --- cp -------------------------------------------------------------------------------------------


@dataclass
class Input:
    """A source for cp: its shape and dtype, how to read a region, and (if known) where data is."""

    label: str
    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[tuple[slice, ...]], np.ndarray]
    chunks: tuple[int, ...] | None = None
    written: Callable[[], Iterable[tuple[slice, ...]]] | None = None  # None: anywhere
    fill_value: Any = 0
    close: Callable[[], None] = lambda: None
    shards: tuple[int, ...] | None = None  # the shard shape of a sharded source (hub or zarr)


FILE_SUFFIXES = (".npy", ".h5", ".hdf5", ".zarr")


def _file_part(spec: str) -> tuple[str, str]:
    """``'data.h5:images'`` -> ``('data.h5', 'images')``; a plain path -> ``(path, '')``."""
    for suffix in FILE_SUFFIXES:
        k = spec.find(suffix + ":")
        if k >= 0 and "://" not in spec[:k]:
            return spec[: k + len(suffix)], spec[k + len(suffix) + 1:]
    return spec, ""


def _is_file_source(spec: str) -> bool:
    path, _ = _file_part(spec)
    return "://" not in path and (path.endswith(FILE_SUFFIXES) or os.path.exists(path))


def open_input(spec: str, args: argparse.Namespace) -> Input:
    """A hub name (or URL), a .npy file, an HDF5 file (``FILE.h5:DATASET``) or a zarr array (``DIR[:PATH]``)."""
    if not _is_file_source(spec):
        from hubdask.chunkio import read_selection
        from hubdask.viz.summary import written_chunks

        a = _array(spec, args)
        if a.is_view:
            raise UsageError(f"cp copies whole arrays; {spec!r} is a view")
        src = a.frozen_view.source.current()
        objects = a.storage_chunks

        def regions() -> Iterator[tuple[slice, ...]]:
            for coords in written_chunks(a):
                yield tuple(slice(j * c, min((j + 1) * c, n)) for j, c, n in zip(coords, objects, a.shape))

        return Input(a.name, a.shape, a.dtype, lambda sel: read_selection(src, sel, a.name), a.chunks, regions,
                     a.fill_value, shards=a.shards)
    path, inner = _file_part(spec)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no file or folder {path!r}")
    if path.endswith(".npy"):
        arr = np.load(path, mmap_mode="r")
        return Input(path, arr.shape, arr.dtype, lambda sel: np.array(arr[sel]))
    if path.endswith((".h5", ".hdf5")):
        try:
            import h5py
        except ImportError:
            raise ImportError("copying from HDF5 needs h5py: pip install h5py") from None
        f = h5py.File(path, "r")
        if not inner:
            names: list[str] = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            if len(names) != 1:
                f.close()
                raise UsageError(f"{path!r} holds {len(names)} datasets ({', '.join(names[:5])}): name one as "
                                 f"{path}:DATASET")
            inner = names[0]
        if inner not in f or not isinstance(f[inner], h5py.Dataset):
            f.close()
            raise FileNotFoundError(f"{path!r} has no dataset {inner!r}")
        d = f[inner]
        return Input(f"{path}:{inner}", d.shape, d.dtype, lambda sel: d[sel], d.chunks, close=f.close)
    import zarr

    try:
        z = zarr.open_array(path, path=inner or None, mode="r") if inner else zarr.open_array(path, mode="r")
    except Exception as exc:
        raise FileNotFoundError(f"{spec!r} is not a zarr array ({type(exc).__name__}); for a group name the "
                                "array as DIR:PATH") from None
    return Input(spec, z.shape, z.dtype, lambda sel: np.asarray(z[sel]), tuple(z.chunks),
                 shards=tuple(z.shards) if getattr(z, "shards", None) else None)


def _dst_written(dst: Any) -> set[tuple[int, ...]]:
    from hubdask.viz.summary import written_chunks

    return set(written_chunks(dst))


def _chunks_covering(regions: Iterable[tuple[slice, ...]], chunks: tuple[int, ...]) -> set[tuple[int, ...]]:
    out: set[tuple[int, ...]] = set()
    for region in regions:
        ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(region, chunks)]
        out.update(itertools.product(*ranges))
    return out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def copy(inp: Input, dst: Any, jobs: int = 8, progress: bool | None = None) -> dict[str, int]:
    """Make ``dst`` (a branch of a hub array of inp's shape and dtype) hold ``inp``'s values.

    Restartable: each destination chunk that already holds the right values is read and skipped, so a
    rerun after an interruption writes only what is missing. Only chunks where either side holds data
    are visited (a sparse hub array costs its written chunks, not its shape).
    """
    from hubdask import progress as bars
    from hubdask.chunkio import read_selection
    from hubdask.errors import ReadOnlyError
    from hubdask.write import write_region

    if dst.branch_name is None:  # before any byte is read or written
        raise ReadOnlyError(f"dataset {dst.name!r} is a tag or commit, which is read-only; expected a branch "
                            f"to copy into ('hubdask branch {dst.dataset_name}' lists them)")
    shape, chunks = dst.storage_shape, dst.storage_chunks
    src_dst = dst.frozen_view.source.current()
    present = _dst_written(dst)
    if inp.written is None:
        todo: Iterable[tuple[int, ...]] = itertools.product(*(range(-(-n // c)) for n, c in zip(shape, chunks)))
        total = math.prod(-(-n // c) for n, c in zip(shape, chunks)) if shape else 1
    else:
        todo = sorted(_chunks_covering(inp.written(), chunks) | present)
        total = len(todo)
    fill = np.asarray(dst.fill_value, dtype=dst.dtype)
    counts = {"written": 0, "equal": 0, "empty": 0}

    def one(coords: tuple[int, ...]) -> str:
        sel = tuple(slice(j * c, min((j + 1) * c, n)) for j, c, n in zip(coords, chunks, shape))
        data = np.asarray(inp.read(sel))
        if data.dtype != dst.dtype:
            data = data.astype(dst.dtype)
        if coords in present:
            if _same(read_selection(src_dst, sel, dst.name), data):
                return "equal"
        elif _same(np.broadcast_to(fill, data.shape), data):
            return "empty"  # an unwritten chunk already reads as the fill value
        write_region(src_dst, sel, data, shape, chunks)
        return "written"

    with bars.bar(total, f"cp {inp.label} -> {dst.name}", progress, unit="chunk") as bar, \
            ThreadPoolExecutor(max(1, jobs)) as pool:
        pending: set = set()
        for coords in todo:
            pending.add(pool.submit(one, coords))
            if len(pending) >= 4 * jobs:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    counts[f.result()] += 1
                    bar.update(1)
        for f in pending:
            counts[f.result()] += 1
            bar.update(1)
    return counts


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected integers separated by commas, e.g. 1,512,512,3") from None


def _shards_option(text: str | None, source: tuple[int, ...] | None) -> Any:
    """``--shards``: 'auto', 'none' or a shape; absent: the source's shards (None when it has none)."""
    if text is None:
        return source
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    return _ints(text, "--shards")


def cmd_cp(args: argparse.Namespace) -> int:
    import hubdask as hd
    from hubdask.api import locate
    from hubdask.versioning import repository

    inp = open_input(args.src, args)
    try:
        dst_storage = args.dst_storage or _storage(args)
        root, n = locate(args.dst, dst_storage)
        chunks = _ints(args.chunks, "--chunks") if args.chunks else inp.chunks
        shards = _shards_option(args.shards, inp.shards if not args.chunks else None)
        if repository(root, n.path).exists():
            dst = hd.load(args.dst, storage=root)
            if not hasattr(dst, "shape"):
                raise ValueError(f"{args.dst!r} is a dataset of several arrays, not an array")
            if dst.shape != tuple(inp.shape) or dst.dtype != inp.dtype:
                raise ValueError(f"{dst.name!r} exists with shape {dst.shape} and dtype {dst.dtype}; the source "
                                 f"{inp.label!r} has shape {tuple(inp.shape)} and dtype {inp.dtype}")
        else:
            if chunks is not None:  # keep the source's chunking where it fits hubdask's rules
                fits = tuple(max(1, min(c, s)) for c, s in zip(chunks, inp.shape))
                if isinstance(shards, tuple):  # a chunk cut to the shape: one per shard along that axis
                    shards = tuple(f if f != c else s for f, c, s in zip(fits, chunks, shards))
                chunks = fits
            dst = hd.array(tuple(inp.shape), args.dst, dtype=inp.dtype, chunks=chunks, shards=shards, storage=root,
                           fill_value=inp.fill_value)
        t0 = time.perf_counter()
        counts = copy(inp, dst, jobs=args.jobs, progress=_progress(args))
    finally:
        inp.close()
    seconds = time.perf_counter() - t0
    print(f"copied {inp.label} -> {dst.name}: chunks written {counts['written']}, already equal {counts['equal']}, "
          f"empty {counts['empty']} ({seconds:.1f}s)")
    if args.message:
        print(f"commit {dst.commit(args.message)}")
    return 0


# --- the parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # Options accepted before and after the command; SUPPRESS keeps an absent one from hiding the other.
    common = _Parser(add_help=False)
    common.add_argument("--storage", metavar="ROOT", default=argparse.SUPPRESS,
                        help="root for names without a URL (path or URL such as s3://bucket/prefix; "
                             "default: $HUBDASK_ROOT or ~/.hubdask)")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    common.add_argument("--progress", action="store_true", default=argparse.SUPPRESS,
                        help="progress bars even when not on a terminal")
    p = _Parser(prog=PROG, description="Versioned, named, chunked arrays on object storage.",
                epilog="Names: owner/dataset[:REF] (REF: branch, tag or commit id; default: the "
                       "dataset's first branch, main unless created as NAME:BRANCH) or a full URL "
                       "s3://bucket/prefix/dataset[:REF]. Credentials: the usual AWS variables or profiles.")
    p.add_argument("--storage", metavar="ROOT", help="root for names without a URL (also accepted after the command)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--progress", action="store_true", help="progress bars even when not on a terminal")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, func: Callable, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=help, description=help)
        sp.set_defaults(func=func)
        return sp

    sp = add("ls", cmd_ls, "list dataset names under a prefix")
    sp.add_argument("prefix", nargs="?", default="", help="owner (or owner/dataset); default: everything")
    sp.add_argument("-l", "--long", action="store_true", help="with shape and dtype")
    sp.add_argument("--json", action="store_true")
    sp = add("info", cmd_info, "shape, dtype, chunks, stored vs logical size, branches, tags, last commit")
    sp.add_argument("name")
    sp.add_argument("-a", "--array", metavar="KEY", help="one array of a dataset (default: all)")
    sp.add_argument("--json", action="store_true")
    sp = add("log", cmd_log, "commits of a branch, tag or commit, newest first")
    sp.add_argument("name")
    sp.add_argument("-n", type=int, default=0, help="at most N commits")
    sp.add_argument("--json", action="store_true")
    sp = add("show", cmd_show, "render a 1-D, 2-D or (H, W, 1|3|4) slice to a PNG file")
    sp.add_argument("target", metavar="NAME[INDEX]", help="e.g. 'owner/ds:v1[0]' or 'owner/ds[0, 100:300, :, 0]'")
    sp.add_argument("-o", "--output", help="PNG file (default: DATASET.png)")
    sp.add_argument("-a", "--array", metavar="KEY", help="the array of a dataset to show")
    sp.add_argument("--cmap", choices=("viridis", "gray"), help="colormap for non-uint8 or 2-D slices")
    sp.add_argument("--vmin", type=float)
    sp.add_argument("--vmax", type=float)
    sp.add_argument("--max-side", type=int, default=2048, help="stride larger slices down to this many pixels")
    sp.add_argument("--min-side", type=int, default=256,
                    help="enlarge smaller pictures (sharp pixels) to about this many pixels (0: never)")
    sp = add("cp", cmd_cp, "copy an array between roots, or from a .npy, HDF5 or zarr file, restartably")
    sp.add_argument("src", help="hub name or URL, FILE.npy, FILE.h5[:DATASET] or DIR.zarr[:PATH]")
    sp.add_argument("dst", help="hub name or URL (created if missing)")
    sp.add_argument("--dst-storage", metavar="ROOT", help="root for DST when it has no URL (default: --storage)")
    sp.add_argument("--chunks", help="chunk shape of a new DST, e.g. 10,512,512,3 (default: the source's)")
    sp.add_argument("--shards", help="shard shape of a new DST: a multiple of its chunks, e.g. 1024,512,512,3, "
                                     "'auto' or 'none' (default: the source's when --chunks is not given)")
    sp.add_argument("-j", "--jobs", type=int, default=8, help="chunks copied at once (default 8)")
    sp.add_argument("-m", "--message", help="commit DST with this message after copying")
    sp = add("rm", cmd_rm, "delete a dataset with all its versions")
    sp.add_argument("name")
    sp.add_argument("-y", "--yes", action="store_true", help="do not ask")
    sp = add("gc", cmd_gc, "count (or with --yes delete) objects that no branch or tag reaches")
    sp.add_argument("name")
    sp.add_argument("-y", "--yes", action="store_true", help="delete (default: a dry run that only counts, as hd.gc)")
    sp.add_argument("-n", "--dry-run", action="store_true", help="only count what would be deleted (the default)")
    sp.add_argument("--grace", type=float, default=3600.0, help="spare objects younger than this (s)")
    sp.add_argument("-v", "--verbose", action="store_true", help="list the objects")
    sp = add("upgrade", cmd_upgrade, "convert a dataset of an older format (hubdask/1 or /2) in place; "
                                     "run it while nothing writes to the dataset")
    sp.add_argument("name")
    sp = add("commit", cmd_commit, "commit a branch's writes; prints the commit id")
    sp.add_argument("name", help="owner/dataset[:BRANCH]")
    sp.add_argument("-m", "--message", default="", help="commit message")
    sp.add_argument("--allow-empty", action="store_true", help="commit even when nothing changed")
    sp = add("merge", cmd_merge, "three-way merge of REF into a branch; prints the merge commit")
    sp.add_argument("name", help="owner/dataset[:BRANCH] (the branch merged into)")
    sp.add_argument("ref", help="the branch, tag or commit merged in")
    sp.add_argument("-s", "--strategy", choices=("ours", "theirs"),
                    help="on chunks both sides changed: keep ours or take theirs (default: refuse)")
    sp.add_argument("-m", "--message", help="merge commit message")
    sp = add("diff", cmd_diff, "chunks and metadata that differ between two refs")
    sp.add_argument("name", help="owner/dataset[:REF] (the newer state)")
    sp.add_argument("other", nargs="?", help="the older ref (default: the last commit of NAME's branch)")
    sp.add_argument("--json", action="store_true")
    sp = add("tag", cmd_tag, "tag a ref's commit (no TAG: list tags)")
    sp.add_argument("name", help="owner/dataset[:REF]")
    sp.add_argument("tag", nargs="?")
    sp.add_argument("-d", "--delete", metavar="TAG", help="delete tag TAG")
    sp = add("branch", cmd_branch, "make a branch at a ref's commit (no BRANCH: list branches)")
    sp.add_argument("name", help="owner/dataset[:REF]")
    sp.add_argument("branch", nargs="?")
    sp.add_argument("-d", "--delete", metavar="BRANCH", help="delete branch BRANCH")
    sp = add("demo", cmd_demo, "walk through create, write, load, slice, mean, commit, tag and time travel")
    sp.add_argument("--cleanup", action="store_true", help="delete the demo dataset at the end")
    sp = add("view", cmd_view, "browse an array in a local web page (127.0.0.1 only)")
    sp.add_argument("name")
    sp.add_argument("-a", "--array", metavar="KEY", help="the array of a dataset to view")
    sp.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    sp.add_argument("--max-side", type=int, default=1024, help="pixels per side shown")
    sp.add_argument("--open", action="store_true", help="open a browser")
    _add_zarr_commands(add)
    return p


def _version() -> str:
    from hubdask import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    parser = build_parser()
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args) or 0)
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if debug:
            raise
        code = 2 if isinstance(exc, (UsageError, _usage_errors())) else 1
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return code


def _usage_errors() -> tuple[type, ...]:
    from hubdask.errors import InvalidNameError

    return (InvalidNameError, IndexError)


# The library's advice names Python calls; on the command line the same advice names commands.
_CLI_ADVICE = (
    ("hd.ls() lists what exists", f"'{PROG} ls' lists what exists"),
    ("Open a branch, or make one with .branch(NAME)",
     f"open a branch (NAME:BRANCH), or make one with '{PROG} branch NAME BRANCH'"),
    ("to remove a branch or tag use .delete_branch / .delete_tag",
     f"to remove a branch or tag use '{PROG} branch NAME -d BRANCH' / '{PROG} tag NAME -d TAG'"),
    ("pass strategy='ours' or 'theirs' to resolve", "pass --strategy ours or --strategy theirs to resolve"),
    ("run .commit() on the branch to complete it", f"run '{PROG} commit' on the branch to complete it"),
    ("delete the dataset instead", f"delete the dataset instead ('{PROG} rm')"),
    ("pass exist_ok=True to open it", "name it to open it"),
)


def _one_line(exc: BaseException) -> str:
    """The error as one line, in the CLI's words, with no credentials."""
    from hubdask.names import redact

    text = str(exc) or type(exc).__name__
    if isinstance(exc, (KeyError, OSError)) and not isinstance(exc, FileNotFoundError) and text.startswith("'"):
        text = f"{type(exc).__name__}: {text}"
    elif isinstance(exc, OSError) and exc.errno is not None and text.startswith("["):  # a bare [Errno N] ...
        where = exc.filename or ""
        text = f"{exc.strerror or text}" + (f": {where!r}" if where else "")
    for python, cli in _CLI_ADVICE:
        text = text.replace(python, cli)
    return redact(" ".join(text.split()))


if __name__ == "__main__":
    sys.exit(main())
