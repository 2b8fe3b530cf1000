"""Ingest from .npy, HDF5, zarr and image folders (with bad files), in parallel; export back."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import zarr

import hubdask as hd
from hubdask.integrations import ingest

from helpers import snapshot

PIL = pytest.importorskip("PIL", reason="Pillow is not installed (pip install hubdask[ingest])")
from PIL import Image  # noqa: E402


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "root")


def test_npy_hdf5_zarr(root, tmp_path):
    h5py = pytest.importorskip("h5py", reason="h5py is not installed (pip install hubdask[ingest])")
    x = np.random.default_rng(1).integers(0, 255, (50, 4, 4), dtype=np.uint8)
    y = np.arange(50)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    ds = ingest.from_npy("in/npy", {"images": tmp_path / "x.npy", "labels": tmp_path / "y.npy"}, storage=root)
    np.testing.assert_array_equal(ds["images"].read(), x)
    assert ds.log()[0].message == "ingest images, labels"
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"] = x
        f.create_group("meta")["y"] = y
    ds = ingest.from_hdf5("in/h5", tmp_path / "d.h5", keys={"images": "x", "labels": "meta/y"}, storage=root)
    np.testing.assert_array_equal(ds["labels"].read(), y)
    with pytest.raises(KeyError, match="no HDF5 dataset 'nope'"):
        ingest.from_hdf5("in/h5b", tmp_path / "d.h5", keys=["nope"], storage=root)
    group = zarr.open_group(str(tmp_path / "src.zarr"), mode="w")
    group.create_array("images", data=x, chunks=(7, 4, 4))
    ds = ingest.from_zarr("in/z", tmp_path / "src.zarr", storage=root)
    np.testing.assert_array_equal(ds["images"].read(), x)
    paths = ingest.to_npy(ds, tmp_path / "back")
    np.testing.assert_array_equal(np.load(paths["images"]), x)
    assert hd.ls("in", storage=root) == ["in/h5", "in/npy", "in/z"]


def _folder(tmp_path, size=(6, 8)):
    top = tmp_path / "imgs"
    for c, cls in enumerate(["cat", "dog", "eel"]):
        (top / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full(size + (3,), 10 * i + 100 * c, np.uint8)).save(top / cls / f"{i}.png")
    return top


def test_image_folder_on_a_cluster(root, tmp_path):
    distributed = pytest.importorskip("distributed")
    top = _folder(tmp_path)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        ds = ingest.from_image_folder("in/pets", top, chunks=(5, 6, 8, 3), storage=root)
    assert ds["images"].shape == (12, 6, 8, 3) and ds["images"].chunks == (5, 6, 8, 3)
    np.testing.assert_array_equal(ds["labels"].read(), np.repeat([0, 1, 2], 4))
    np.testing.assert_array_equal(ds["images"].read()[:, 0, 0, 0], [0, 10, 20, 30, 100, 110, 120, 130, 200, 210, 220, 230])
    assert ingest.class_names(ds) == ["cat", "dog", "eel"]
    assert ds.log()[0].message == "ingest 12 images of 3 classes from imgs"


def test_image_folder_bad_input(root, tmp_path):
    top = _folder(tmp_path)
    (top / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    before = snapshot(root) if (tmp_path / "root").exists() else {}
    with pytest.raises(ValueError, match="unreadable image.*dog/broken.png.*on_error='skip'"):
        ingest.from_image_folder("in/bad", top, storage=root)
    assert hd.ls("in", storage=root) == [] and (snapshot(root) if (tmp_path / "root").exists() else {}) == before
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ingest.from_image_folder("in/skip", top, storage=root, on_error="skip")
    assert len(ds) == 12 and any("broken.png" in str(w.message) for w in caught)
    Image.fromarray(np.zeros((7, 8, 3), np.uint8)).save(top / "eel" / "tall.png")
    with pytest.raises(ValueError, match="expected 6x8.*eel/tall.png is 7x8.*resize="), pytest.warns(UserWarning):
        ingest.from_image_folder("in/odd", top, storage=root, on_error="skip")
    with pytest.warns(UserWarning, match="broken.png"):
        ds = ingest.from_image_folder("in/resized", top, storage=root, on_error="skip", resize=(3, 4), mode="L")
    assert ds["images"].shape == (13, 3, 4) and ds["images"].dtype == np.uint8
    with pytest.raises(ValueError, match="one subfolder of images per class"):
        ingest.from_image_folder("in/none", top / "cat", storage=root)


def test_ingest_into_sharded_arrays(root, tmp_path):
    """Every ingest takes chunks= and shards= ('auto', a shape, or per array); one object per shard."""
    x = np.random.default_rng(2).integers(0, 255, (40, 4, 4), dtype=np.uint8)
    y = np.arange(40)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    ds = ingest.from_npy("sh/npy", {"images": tmp_path / "x.npy", "labels": tmp_path / "y.npy"}, storage=root,
                         chunks={"images": (2, 4, 4), "labels": (8,)}, shards={"images": (10, 4, 4), "labels": "auto"})
    assert (ds["images"].chunks, ds["images"].shards) == ((2, 4, 4), (10, 4, 4))
    assert ds["labels"].shards == (40,)
    np.testing.assert_array_equal(ds["images"].read(), x)
    np.testing.assert_array_equal(ds["labels"].read(), y)
    objects = [p for p in (tmp_path / "root/sh/npy/@hub/nodes").rglob("images/c/*/*/*") if p.is_file()]
    assert len(objects) == 4  # four shards of 10 images, not twenty chunks
    group = zarr.open_group(str(tmp_path / "src.zarr"), mode="w")
    group.create_array("images", data=x, chunks=(7, 4, 4))
    ds = ingest.from_zarr("sh/z", tmp_path / "src.zarr", storage=root, chunks=(1, 4, 4), shards="auto")
    assert ds["images"].chunks == (1, 4, 4) and ds["images"].shards == (40, 4, 4)
    np.testing.assert_array_equal(ds["images"].read(), x)
    ds = ingest.from_arrays("sh/arr", images=x, chunks=(4, 4, 4), shards=(8, 4, 4), storage=root, commit="m")
    assert ds["images"].shards == (8, 4, 4) and ds.log()[0].message == "m"
    ds = ingest.from_image_folder("sh/pets", _folder(tmp_path), chunks=(1, 6, 8, 3), shards=(4, 6, 8, 3),
                                  storage=root)
    assert ds["images"].shards == (4, 6, 8, 3)
    np.testing.assert_array_equal(ds["images"].read()[:, 0, 0, 0], [0, 10, 20, 30, 100, 110, 120, 130, 200, 210, 220, 230])
    before = snapshot(root)
    with pytest.raises(ValueError, match=r"'sh/bad'.*'images'.*multiple of chunks"):
        ingest.from_image_folder("sh/bad", tmp_path / "imgs", chunks=(2, 6, 8, 3), shards=(3, 6, 8, 3), storage=root)
    assert snapshot(root) == before
