"""Ingest into a dataset from numpy arrays, ``.npy`` files, HDF5, zarr and folders of images; export back.

Every ingest builds dask arrays over its input and writes them with ``hd.store`` (one task per storage
chunk), so it runs in parallel: on the dask.distributed cluster when a client is active (files must then
be readable from the workers at the same path), else on local threads, with a progress bar
(hubdask.progress). The data is committed when written. Inputs are checked before the dataset is
created: a bad input leaves storage unchanged.

Folders of images (Pillow): one subfolder per class, ``ROOT/CLASS/*.png|jpg|...`` becomes ``images``
(n, h, w[, c]) uint8 and ``labels`` (n,) int64, classes numbered in sorted order (their names are kept
in the labels array's attributes: ``class_names(ds)``). Every image is decoded once to check it first:
an unreadable file is named and stops the ingest (``on_error="raise"``) or is skipped with a warning
(``"skip"``); an image whose size differs from the first is an error naming it, unless ``resize=(h, w)``.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hubdask.api import dataset
from hubdask.dataset import Dataset
from hubdask.export import to_zarr  # noqa: F401  (where callers used to find it)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
PROBE_BATCH = 256  # images per scan task
_DATASET_OPTIONS = {"storage", "storage_options", "exist_ok", "commit", "progress"}  # hd.dataset's own keywords


# --- numpy, .npy, HDF5, zarr --------------------------------------------------------------------------


def _laid_out(arrays: dict[str, Any], chunks: Any, shards: Any) -> dict[str, Any]:
    """``arrays`` as hd.dataset specs with ``chunks`` and ``shards`` (as for hd.array; a dict gives them
    per array name, anything else applies to every array)."""
    if chunks is None and shards is None:
        return arrays

    def pick(value: Any, key: str) -> Any:
        return value.get(key) if isinstance(value, dict) else value

    return {key: dict(data=data, chunks=pick(chunks, key), shards=pick(shards, key)) for key, data in arrays.items()}


def from_arrays(name: str, chunks: Any = None, shards: Any = None, **arrays: Any) -> Dataset:
    """``hd.dataset(name, images=np_array, labels=...)``: arrays (numpy, dask, hd.Array) written and committed.

    ``chunks`` and ``shards`` as for hd.array (``shards="auto"`` shards every array; a dict gives them
    per array). Keywords of hd.dataset (``storage``, ``exist_ok``, ``commit``, ``progress``) pass through.
    """
    options = {k: arrays.pop(k) for k in _DATASET_OPTIONS & set(arrays)}
    return dataset(name, **_laid_out(arrays, chunks, shards), **options)


class FileArray:
    """A lazy, picklable array in a file (``.npy`` or an HDF5 dataset), opened once per process on first read.

    dask slices it like a numpy array, so each task reads only its rows, in whichever process runs it.
    """

    _open: dict[tuple, Any] = {}
    _lock = threading.Lock()

    def __init__(self, kind: str, path: str | os.PathLike, key: str | None = None) -> None:
        self.kind, self.path, self.key = kind, os.path.abspath(os.fspath(path)), key
        arr = self._array()
        self.shape, self.dtype = tuple(arr.shape), np.dtype(arr.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getstate__(self) -> dict:
        return {"kind": self.kind, "path": self.path, "key": self.key, "shape": self.shape, "dtype": self.dtype}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def _array(self) -> Any:
        k = (os.getpid(), self.kind, self.path, self.key)
        with self._lock:
            arr = self._open.get(k)
            if arr is None:
                if self.kind == "npy":
                    arr = np.load(self.path, mmap_mode="r")
                else:
                    import h5py

                    arr = h5py.File(self.path, "r")[self.key]
                self._open[k] = arr
            return arr

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self._array()[index])

    def __dask_tokenize__(self) -> tuple:
        return ("hubdask.FileArray", self.kind, self.path, self.key, os.stat(self.path).st_mtime_ns)

    def __repr__(self) -> str:
        return f"FileArray({self.kind}, {self.path!r}{', ' + repr(self.key) if self.key else ''}, {self.shape}, {self.dtype})"


def from_npy(name: str, files: dict[str, str | os.PathLike] | None = None, chunks: Any = None,
             shards: Any = None, **kwargs: Any) -> Dataset:
    """One array per ``.npy`` file: ``from_npy(name, {"images": "x.npy", "labels": "y.npy"})`` (``chunks``,
    ``shards`` as for from_arrays)."""
    if not files:
        raise TypeError(f"dataset {name!r}: expected files={{array name: path.npy}}")
    arrays = {}
    for key, path in files.items():
        try:
            arrays[key] = FileArray("npy", path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"dataset {name!r}: cannot read {os.fspath(path)!r} as a .npy file ({exc})") from exc
    return dataset(name, **_laid_out(arrays, chunks, shards), **kwargs)


def from_hdf5(name: str, path: str | os.PathLike, keys: Any = None, chunks: Any = None, shards: Any = None,
              **kwargs: Any) -> Dataset:
    """HDF5 datasets as arrays: ``keys`` is a list of HDF5 paths, a dict {array name: HDF5 path}, or None
    for every dataset at the file's top level (``chunks``, ``shards`` as for from_arrays)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            top = sorted(k for k, v in f.items() if isinstance(v, h5py.Dataset))
    except OSError as exc:
        raise ValueError(f"dataset {name!r}: cannot open {os.fspath(path)!r} as HDF5 ({exc})") from exc
    if keys is None:
        keys = {k: k for k in top}
    elif not isinstance(keys, dict):
        keys = {k.strip("/").replace("/", "_"): k for k in ([keys] if isinstance(keys, str) else keys)}
    arrays = {}
    for key, h5path in keys.items():
        try:
            arrays[key] = FileArray("hdf5", path, h5path)
        except (KeyError, TypeError) as exc:
            raise KeyError(f"dataset {name!r}: {os.fspath(path)!r} has no HDF5 dataset {h5path!r}; "
                           f"top-level datasets: {', '.join(top) or 'none'}") from exc
    if not arrays:
        raise ValueError(f"dataset {name!r}: {os.fspath(path)!r} holds no HDF5 datasets at its top level")
    return dataset(name, **_laid_out(arrays, chunks, shards), **kwargs)


def from_zarr(name: str, url: str | os.PathLike, keys: Any = None, storage_options: dict | None = None,
              chunks: Any = None, shards: Any = None, **kwargs: Any) -> Dataset:
    """The arrays of a zarr group (v2 or v3; ``keys`` picks some), or a single zarr array as ``data``;
    ``chunks``, ``shards`` as for from_arrays (default: hubdask's automatic chunks, unsharded)."""
    import dask.array as da
    import zarr

    url = os.fspath(url)
    try:
        node = zarr.open(url, mode="r", storage_options=storage_options)
    except Exception as exc:
        raise ValueError(f"dataset {name!r}: no zarr group or array at {url!r} ({exc})") from exc
    if isinstance(node, zarr.Array):
        components = {"data": None}
    else:
        found = sorted(node.array_keys())
        wanted = found if keys is None else ([keys] if isinstance(keys, str) else list(keys))
        missing = sorted(set(wanted) - set(found))
        if missing:
            raise KeyError(f"dataset {name!r}: zarr group {url!r} has no arrays {missing}; arrays: {found}")
        components = {k: k for k in wanted}
    arrays = {key: da.from_zarr(url, component=comp, storage_options=storage_options)
              for key, comp in components.items()}
    return dataset(name, **_laid_out(arrays, chunks, shards), **kwargs)


# --- folders of images --------------------------------------------------------------------------------


def _probe(paths: list[str], mode: str | None) -> list[tuple[str, Any]]:
    """(path, (height, width, mode)) for each readable image, (path, error text) for the others."""
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as img:
                img.load()
                out.append((p, (img.height, img.width, img.mode)))
        except Exception as exc:  # Pillow raises many types for bad files
            out.append((p, f"{type(exc).__name__}: {exc}"))
    return out


def _decode(paths: list[str], mode: str, size: tuple[int, int], resize: bool, dtype: np.dtype) -> np.ndarray:
    from PIL import Image

    rows = []
    for p in paths:
        try:
            with Image.open(p) as img:
                if img.mode != mode:
                    img = img.convert(mode)
                if resize and (img.height, img.width) != size:
                    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                rows.append(np.asarray(img, dtype=dtype))
        except Exception as exc:
            raise ValueError(f"image {p!r} could not be decoded during ingest ({exc}); it was readable when "
                             "the folder was scanned: was it changed?") from exc
    return np.stack(rows)


def _list_images(name: str, folder: Path, extensions: tuple[str, ...]) -> tuple[list[str], list[str], np.ndarray]:
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset {name!r}: image folder {str(folder)!r} does not exist")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"dataset {name!r}: {str(folder)!r} has no subfolders; expected one subfolder of "
                         "images per class (ROOT/CLASS/IMAGE.png)")
    paths, labels = [], []
    for i, c in enumerate(classes):
        files = sorted(f for f in (folder / c).iterdir() if f.is_file() and f.suffix.lower() in extensions)
        paths += [str(f) for f in files]
        labels += [i] * len(files)
    if not paths:
        raise ValueError(f"dataset {name!r}: no images ({', '.join(extensions)}) in the class folders of "
                         f"{str(folder)!r}")
    return classes, paths, np.asarray(labels, np.int64)


def from_image_folder(name: str, folder: str | os.PathLike, *, resize: tuple[int, int] | None = None,
                      mode: str | None = None, on_error: str = "raise", chunks: Any = None, shards: Any = None,
                      images_key: str = "images", labels_key: str = "labels",
                      extensions: tuple[str, ...] = IMAGE_EXTENSIONS, progress: bool | None = None,
                      commit: str | bool = True, storage: Any = None,
                      storage_options: dict | None = None) -> Dataset:
    """A folder of images, one subfolder per class, as ``images`` (uint8) and ``labels`` (int64).

    ``mode``: the Pillow mode every image is converted to ("RGB", "L"...; default: the first image's).
    ``resize=(h, w)`` resizes every image; without it all images must have the first image's size.
    ``on_error``: "raise" (default) stops at an unreadable image, naming it; "skip" leaves it out and warns.
    ``chunks``, ``shards``: of the images (as for hd.array; e.g. ``chunks=(1, h, w, c), shards="auto"``).
    """
    import dask
    import dask.array as da

    from hubdask import progress as _progress

    if on_error not in ("raise", "skip"):
        raise ValueError(f"dataset {name!r}: on_error must be 'raise' or 'skip', got {on_error!r}")
    classes, paths, labels = _list_images(name, Path(folder), tuple(e.lower() for e in extensions))
    batches = [paths[i:i + PROBE_BATCH] for i in range(0, len(paths), PROBE_BATCH)]
    probed = _progress.compute([dask.delayed(_probe)(b, mode) for b in batches], progress)
    info = dict(item for batch in probed for item in batch)
    bad = [(p, info[p]) for p in paths if isinstance(info[p], str)]
    if bad and on_error == "raise":
        listed = "; ".join(f"{p}: {err}" for p, err in bad[:5])
        raise ValueError(f"dataset {name!r}: {len(bad)} unreadable image(s): {listed}"
                         f"{' ...' if len(bad) > 5 else ''}; pass on_error='skip' to leave them out")
    if bad:
        warnings.warn(f"dataset {name!r}: skipped {len(bad)} unreadable image(s): "
                      + "; ".join(f"{p}: {err}" for p, err in bad), stacklevel=2)
        keep = [i for i, p in enumerate(paths) if not isinstance(info[p], str)]
        paths, labels = [paths[i] for i in keep], labels[keep]
    if not paths:
        raise ValueError(f"dataset {name!r}: no readable images in {os.fspath(folder)!r}")
    first_h, first_w, first_mode = info[paths[0]]
    mode = mode or first_mode
    size = tuple(resize) if resize is not None else (first_h, first_w)
    if resize is None:
        odd = [(p, info[p][:2]) for p in paths if info[p][:2] != size]
        if odd:
            listed = "; ".join(f"{p} is {h}x{w}" for p, (h, w) in odd[:5])
            raise ValueError(f"dataset {name!r}: images differ in size: expected {size[0]}x{size[1]} (height x "
                             f"width, as {paths[0]!r}) but {listed}{' ...' if len(odd) > 5 else ''}; pass "
                             "resize=(h, w) to resize every image")
    from PIL import Image

    bands = len(Image.new(mode, (1, 1)).getbands())
    shape = (len(paths), *size) + ((bands,) if bands > 1 else ())
    dtype = np.dtype("uint8") if mode not in ("I", "I;16", "F") else np.dtype("int32" if mode == "I" else
                                                                              "uint16" if mode == "I;16" else "float32")
    from hubdask.shards import check_shards
    from hubdask.spec import check_shape_dtype_chunks

    _, _, chunks = check_shape_dtype_chunks(f"dataset {name!r}", shape, dtype, chunks)
    shards = check_shards(f"dataset {name!r}, array {images_key!r}", shards, shape, chunks, dtype.itemsize)
    step = (shards or chunks)[0]  # one decode task per storage object
    pieces = [da.from_delayed(dask.delayed(_decode)(paths[i:i + step], mode, size, resize is not None, dtype),
                              shape=(len(paths[i:i + step]),) + shape[1:], dtype=dtype)
              for i in range(0, len(paths), step)]
    images = da.concatenate(pieces, axis=0)
    ds = dataset(name, **{images_key: dict(data=images, chunks=chunks, shards=shards), labels_key: labels},
                 progress=progress, commit=False, storage=storage, storage_options=storage_options)
    ds[labels_key].frozen_view.source.zarr().attrs.update({"class_names": classes})
    if commit:
        ds.commit(commit if isinstance(commit, str) else
                  f"ingest {len(paths)} images of {len(classes)} classes from {Path(folder).name}")
    return ds


def class_names(ds: Dataset, labels_key: str = "labels") -> list[str]:
    """The class names of a dataset ingested from an image folder, in label order."""
    return list(ds[labels_key].frozen_view.source.zarr().attrs.get("class_names", []))


# --- export -------------------------------------------------------------------------------------------


def to_npy(ds: Dataset, folder: str | os.PathLike, progress: bool | None = None) -> dict[str, str]:
    """Write each array of ``ds`` as ``FOLDER/NAME.npy`` (streamed chunk by chunk); returns the paths."""
    import dask
    import dask.array as da

    from hubdask import progress as _progress

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sources, targets, paths = [], [], {}
    for key, a in ds.arrays.items():
        paths[key] = str(folder / f"{key}.npy")
        sources.append(a.to_dask())
        targets.append(np.lib.format.open_memmap(paths[key], mode="w+", dtype=a.dtype, shape=a.shape))
    job = da.store(sources, targets, lock=False, compute=False)
    if _progress.enabled(progress):  # memmaps are written here, by local threads (not a cluster)
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            dask.compute(job, scheduler="threads")
    else:
        dask.compute(job, scheduler="threads")
    for t in targets:
        t.flush()
    return paths
