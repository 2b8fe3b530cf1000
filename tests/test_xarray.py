"""xarray: arrays and datasets as lazy, dask-backed xarray objects carrying their version."""

from __future__ import annotations

import numpy as np
import pytest

xr = pytest.importorskip("xarray", reason="xarray is not installed (pip install hubdask[xarray])")

import dask.array as da  # noqa: E402

import hubdask as hd  # noqa: E402


def test_array_and_dataset_to_xarray(tmp_path):
    root = str(tmp_path / "root")
    t = np.random.default_rng(0).random((12, 4, 5))
    ds = hd.dataset("climate/t", temperature=dict(data=t, chunks=(4, 4, 5)), station=np.arange(12), storage=root)
    cid = ds.commit_id
    a = ds["temperature"].to_xarray(dims=("time", "lat", "lon"))
    assert isinstance(a.data, da.Array) and a.dims == ("time", "lat", "lon") and a.name == "temperature"
    assert a.data.numblocks == (3, 1, 1) and a.attrs["hubdask_commit"] == cid
    np.testing.assert_allclose(a.mean("time").compute().values, t.mean(0))
    view = ds["temperature"][2:6, 0].to_xarray()
    assert view.dims == ("dim_0", "dim_1") and view.shape == (4, 5)
    x = ds.to_xarray()
    assert set(x.data_vars) == {"temperature", "station"} and x["station"].dims == ("sample",)
    assert x["temperature"].dims == ("sample", "temperature_dim_1", "temperature_dim_2")
    np.testing.assert_array_equal(x["station"].values, np.arange(12))
    named = ds.to_xarray(dims={"temperature": ("time", "lat", "lon"), "station": ("time",)})
    assert named["temperature"].dims == ("time", "lat", "lon")
    assert float(named["temperature"].sel(time=3).sum()) == pytest.approx(t[3].sum())
    with pytest.raises(ValueError, match="name 1 axes but the array has 3"):
        ds["temperature"].to_xarray(dims=("time",))
    with pytest.raises(KeyError, match="nope"):
        ds.to_xarray(dims={"nope": ("a",)})
