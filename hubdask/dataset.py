"""Multi-array datasets: one repository whose root zarr node is a group of arrays ("images", "labels").

The arrays live in the same repository, so a dataset has one version history: commit, tag, branch and
merge act on every array at once (``history.Versioned``), and ``ds["images"]`` is an ``hd.Array`` at the
dataset's state. Arrays are created in the dataset's first node by ``hd.dataset`` (or later with
``create_array``); arrays given as data (numpy, dask, ``hd.Array``) are then written in parallel with
``hd.store`` and committed. Samples are rows along axis 0, so arrays meant to be read together (the
PyTorch/TensorFlow streams) have the same length. Every sample of an array has one shape: variable-size
samples are out of scope (pad them, or keep one array per size).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from hubdask.array import Array
from hubdask.history import Versioned
from hubdask.source import Source
from hubdask.spec import ArraySpec, array_spec
from hubdask.errors import AlreadyExistsError, NotFoundError


class Dataset(Versioned):
    """Named arrays with one version history; ``ds["images"]`` is an ``hd.Array`` at the dataset's state."""

    def __init__(self, source: Source, name: str) -> None:
        if source.path:
            raise ValueError(f"dataset {name!r}: a Dataset is the repository's root group, not {source.path!r}")
        self._source = source
        self._name = name

    # --- what it holds -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    def _opened(self, source: Source, name: str) -> "Dataset":
        return Dataset(source, name)  # history.Versioned.checkout: the dataset at another state

    def _fresh_source(self) -> Source:
        """The state to read now: a branch follows its head (so it sees every returned write and new arrays)."""
        return self._source.current()

    def _group(self, src: Source) -> Any:
        import zarr

        from hubdask.storage.cache import immutable_reader

        store = src.store(immutable_reader(src.root) if src.cache else None)
        return zarr.open_group(store=store, mode="r" if src.node is None else "r+", zarr_format=3)

    @property
    def arrays(self) -> dict[str, Array]:
        """Every array of the dataset at its state, by name (sorted)."""
        src = self._fresh_source()
        out = {}
        for key, zarray in sorted(self._group(src).arrays()):
            out[key] = Array(src.for_array(key), self._array_name(key), meta=None if src.meta_changed else zarray.metadata)
        return out

    def keys(self) -> list[str]:
        return sorted(self._group(self._fresh_source()).array_keys())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.keys()

    def _array_name(self, key: str) -> str:
        return f"{self._name}[{key}]"

    def __getitem__(self, key: str) -> Array:
        if not isinstance(key, str):
            raise TypeError(f"dataset {self._name!r}: index by array name (one of {self.keys()}), got "
                            f"{type(key).__name__}; for samples use ds[name][i] or ds.pytorch()")
        src = self._fresh_source()
        try:
            return Array(src.for_array(key), self._array_name(key))
        except FileNotFoundError:
            pass
        except Exception as exc:  # zarr raises different errors for a missing node across versions
            if "not found" not in str(exc).lower() and "no array" not in str(exc).lower():
                raise
        raise NotFoundError(f"dataset {self._name!r} has no array {key!r}; arrays: {', '.join(self.keys()) or 'none'}")

    def append(self, samples: dict[str, Any], axis: int = 0, *, lock: bool | str | None = None) -> tuple[slice, ...]:
        """Append one batch to every array of the dataset together (``{"images": batch, "labels": labels}``):
        sample i is the same sample in every array, even with concurrent appenders. Returns the rows written
        along ``axis`` (a 1-tuple of slices)."""
        from hubdask import grow

        arrays = self.arrays
        if not isinstance(samples, dict) or set(samples) != set(arrays):
            got = sorted(samples) if isinstance(samples, dict) else type(samples).__name__
            raise ValueError(f"dataset {self._name!r}: append a dict with one batch for every array "
                             f"({', '.join(arrays)}), got {got}")
        parts = [(a.frozen_view.source, a.name, samples[k], a.dtype, a.storage_chunks) for k, a in arrays.items()]
        start, k, _ = grow.append_together(parts, axis, f"dataset {self._name!r}", lock)
        return (slice(start, start + k),)

    @property
    def num_samples(self) -> int:
        """The common length of the arrays along axis 0 (ValueError if they differ)."""
        lengths = {k: a.shape[0] if a.ndim else 1 for k, a in self.arrays.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"dataset {self._name!r}: arrays have different lengths along axis 0: {lengths}")
        return next(iter(lengths.values()), 0)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        lines = [f"hubdask.Dataset<{self._name!r}>"]
        for key, a in self.arrays.items():
            lines.append(f"  {key}: shape={a.shape}, dtype={a.dtype}, chunks={a.chunks}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from hubdask.viz import repr_html

        return repr_html(self)

    # --- changing it -------------------------------------------------------------------------------

    def create_array(self, key: str, shape: Any = None, dtype: Any = None, chunks: Any = None,
                     fill_value: Any = 0, codecs: Any = None, data: Any = None,
                     progress: bool | None = None, shards: Any = None) -> Array:
        """Add an array on this branch (uncommitted, like any write); ``data`` is written with hd.store."""
        spec = dict(shape=shape, dtype=dtype, chunks=chunks, shards=shards, fill_value=fill_value, codecs=codecs,
                    data=data)
        spec = {k: v for k, v in spec.items() if v is not None}
        parsed = array_spec(f"dataset {self._name!r}", key, spec)
        self._writable_branch(f"add array {key!r}")
        if key in self:
            raise AlreadyExistsError(f"dataset {self._name!r} already has an array {key!r}")
        parsed.create_in(self._group(self._fresh_source()))
        write_data(self, [parsed], progress)
        return self[key]

    # --- other faces -------------------------------------------------------------------------------

    def pytorch(self, batch_size: int | None = None, shuffle: bool = False, seed: int | None = None,
                transform: Any = None, num_workers: int = 0, **kwargs: Any) -> Any:
        """A ``torch.utils.data.DataLoader`` streaming this dataset's samples (see integrations.torch)."""
        from hubdask.integrations.torch import dataloader

        return dataloader(self, batch_size=batch_size, shuffle=shuffle, seed=seed, transform=transform,
                          num_workers=num_workers, **kwargs)

    def tensorflow(self, batch_size: int | None = None, shuffle: bool = False, seed: int | None = None,
                   **kwargs: Any) -> Any:
        """A ``tf.data.Dataset`` of this dataset's samples (see integrations.tensorflow)."""
        from hubdask.integrations.tensorflow import tf_dataset

        return tf_dataset(self, batch_size=batch_size, shuffle=shuffle, seed=seed, **kwargs)

    def to_xarray(self, dims: dict[str, tuple[str, ...]] | None = None) -> Any:
        """An ``xarray.Dataset`` backed lazily by dask (see integrations.xarray_view)."""
        from hubdask.integrations.xarray_view import dataset_to_xarray

        return dataset_to_xarray(self, dims)

    def to_numpy(self, keys: Any = None) -> dict[str, np.ndarray]:
        """Every array (or ``keys``) read into memory."""
        return {k: np.asarray(a) for k, a in self.arrays.items() if keys is None or k in keys}

    def to_zarr(self, url: str | os.PathLike, progress: bool | None = None, **kwargs: Any) -> None:
        """Export the dataset's state as a plain zarr v3 group at ``url`` (see hubdask.export)."""
        from hubdask.export import to_zarr

        to_zarr(self, url, progress=progress, **kwargs)


def write_data(ds: Dataset, specs: list[ArraySpec], progress: bool | None) -> bool:
    """Write the data of ``specs`` that carry some into ``ds``'s branch, in parallel; True if any did."""
    import dask.array as da

    from hubdask.write import store_all

    stores = []
    for spec in specs:
        if spec.data is None:
            continue
        data = spec.data
        if isinstance(data, Array):
            data = data.to_dask()
        elif not isinstance(data, da.Array):
            data = da.from_array(data, chunks=spec.shards or spec.chunks)
        stores.append((data, ds[spec.key], None))
    if stores:
        store_all(stores, progress=progress)
    return bool(stores)
