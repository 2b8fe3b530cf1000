"""xarray's ``engine="hubdask"``: a named version opened as a lazy ``xarray.Dataset`` (the conversions of
opened arrays and datasets are ``integrations.xarray_view``).

``HubdaskBackend`` is xarray's ``engine="hubdask"`` (an entry point of the installed package):
``xr.open_dataset("owner/ds:REF", engine="hubdask")`` and ``xr.open_datatree(...)`` at any ref.
"""

from __future__ import annotations

import os
from typing import Any

import xarray as xr
from xarray.backends import BackendEntrypoint

from hubdask.api import load
from hubdask.dataset import Dataset
from hubdask.integrations.xarray_view import attrs_of, dataset_to_xarray, to_xarray  # noqa: F401 (also found here)


class HubdaskBackend(BackendEntrypoint):
    """``xr.open_dataset("owner/ds:REF", engine="hubdask", storage=ROOT)``: a version, lazily."""

    description = "Open a hubdask version (owner/dataset[:REF] or a full URL) lazily, one dask task per chunk"
    url = "https://github.com/hubdask/hubdask"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "storage", "storage_options", "cache")

    def open_dataset(self, filename_or_obj: Any, *, drop_variables: Any = None, storage: Any = None,
                     storage_options: dict | None = None, cache: bool = True) -> xr.Dataset:
        obj = load(os.fspath(filename_or_obj), storage=storage, storage_options=storage_options, cache=cache)
        if isinstance(obj, Dataset):
            out = dataset_to_xarray(obj)
        else:
            out = to_xarray(obj).to_dataset()
            out.attrs.update(attrs_of(obj))
        if drop_variables:
            out = out.drop_vars([drop_variables] if isinstance(drop_variables, str) else list(drop_variables),
                                errors="ignore")
        return out

    def open_datatree(self, filename_or_obj: Any, **kwargs: Any) -> Any:
        return xr.DataTree(self.open_dataset(filename_or_obj, **kwargs))

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        return False  # a name like "owner/ds" is also a path: only engine="hubdask" opens it
