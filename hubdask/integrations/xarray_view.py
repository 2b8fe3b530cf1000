"""xarray objects of views: an array as an ``xarray.DataArray``, a dataset as an ``xarray.Dataset``, lazy.

Nothing is read until the xarray object is computed; each dask task reads one storage chunk. The
dataset's name, ref and commit travel in ``attrs`` so results can say which version they came from.
Dimension names default to the zarr ``dimension_names`` recorded at creation (``hd.array(..., dims=)``).
(xarray's ``engine="hubdask"``, which opens names, is ``integrations.xarray``.)
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from hubdask import grid
from hubdask.view import view_of


def attrs_of(obj: Any) -> dict[str, Any]:
    """The version an array or dataset shows, as xarray ``attrs``."""
    return {"hubdask_name": obj.name, "hubdask_ref": obj.ref, "hubdask_commit": obj.commit_id or ""}


def _dims(what: str, ndim: int, dims: Any, default: list[str]) -> tuple[str, ...]:
    if dims is None:
        return tuple(default)
    dims = (dims,) if isinstance(dims, str) else tuple(dims)
    if len(dims) != ndim:
        raise ValueError(f"{what}: dims {dims} name {len(dims)} axes but the array has {ndim}")
    return dims


def recorded_dims(array: Any) -> list[str] | None:
    """The zarr ``dimension_names`` of the view's axes, or None where any is unnamed."""
    names = getattr(array.metadata, "dimension_names", None)
    if not names:
        return None
    kept = [n for n, a in zip(names, view_of(array).axes) if isinstance(a, grid.Span)]
    return kept if all(kept) else None


def to_xarray(array: Any, dims: Any = None, name: str | None = None, coords: Any = None,
              attrs: dict[str, Any] | None = None) -> xr.DataArray:
    """``array`` (an hd.Array or a view of one) as a lazy DataArray; ``dims`` default to the recorded
    dimension names, else dim_0, dim_1..."""
    default = recorded_dims(array) or [f"dim_{i}" for i in range(array.ndim)]
    dims = _dims(f"dataset {array.name!r}", array.ndim, dims, default)
    if name is None:
        src = view_of(array).source
        name = src.path or src.ds.rsplit("/", 1)[-1]
    return xr.DataArray(array.to_dask(), dims=dims, coords=coords, name=name,
                        attrs={**attrs_of(array), **(attrs or {})})


def dataset_to_xarray(ds: Any, dims: dict[str, Any] | None = None) -> xr.Dataset:
    """Every array of ``ds`` as a variable of one lazy xarray.Dataset.

    ``dims`` maps an array name to its dimension names. By default axis 0 is ``"sample"`` when every
    array has the same length along it, and the other axes are ``NAME_dim_1``, ``NAME_dim_2``...
    """
    dims = dict(dims or {})
    arrays = ds.arrays
    unknown = set(dims) - set(arrays)
    if unknown:
        raise KeyError(f"dataset {ds.name!r} has no arrays {sorted(unknown)}; arrays: {', '.join(arrays)}")
    lengths = {a.shape[0] for a in arrays.values() if a.ndim}
    shared = len(lengths) == 1 and all(a.ndim for a in arrays.values())
    variables = {}
    for key, a in arrays.items():
        default = recorded_dims(a) or [("sample" if shared and i == 0 else f"{key}_dim_{i}") for i in range(a.ndim)]
        names = _dims(f"dataset {ds.name!r}, array {key!r}", a.ndim, dims.get(key), default)
        variables[key] = to_xarray(a, names, name=key)
    return xr.Dataset(variables, attrs=attrs_of(ds))
