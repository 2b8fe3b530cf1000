"""Multi-array datasets: creation (specs or data), arrays at the dataset's state, one history for all."""

from __future__ import annotations

import numpy as np
import pytest

import hubdask as hd

from helpers import snapshot


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "root")


def test_create_from_specs_and_data(root):
    x = np.random.default_rng(0).integers(0, 255, (40, 6, 5), dtype=np.uint8)
    ds = hd.dataset("ml/mnist", images=dict(data=x, chunks=(16, 6, 5)), labels=np.arange(40),
                    masks=dict(shape=(40, 2), dtype="bool"), storage=root)
    assert isinstance(ds, hd.Dataset) and ds.keys() == ["images", "labels", "masks"]
    assert len(ds) == 40 and ds.num_samples == 40
    images = ds["images"]
    assert isinstance(images, hd.Array) and images.chunks == (16, 6, 5) and images.dtype == np.uint8
    np.testing.assert_array_equal(images.read(), x)
    np.testing.assert_array_equal(ds["labels"][5:8].compute(), [5, 6, 7])
    assert not ds["masks"].read().any()
    assert [c.message for c in ds.log()] == ["ingest images, labels", "created"]
    again = hd.load("ml/mnist", storage=root)
    assert isinstance(again, hd.Dataset) and set(again.arrays) == {"images", "labels", "masks"}
    text = repr(again)
    assert "ml/mnist:main" in text and "images: shape=(40, 6, 5), dtype=uint8" in text
    assert hd.ls("ml", storage=root) == ["ml/mnist"]


def test_one_history_for_every_array(root):
    ds = hd.dataset("ml/d", images=np.zeros((20, 3), "f4"), labels=np.zeros(20, "i8"), storage=root)
    v1 = ds.tag("v1")
    ds["images"][0] = 1.0
    ds["labels"][0] = 7
    c2 = ds.commit("both arrays")
    assert ds.commit_id == c2 and [c.message for c in ds.log()][:1] == ["both arrays"]
    old = hd.load("ml/d:v1", storage=root)
    assert old.commit_id == v1
    assert old["images"][0].read().sum() == 0 and old["labels"][0].read() == 0
    with pytest.raises(hd.ReadOnlyError, match="ml/d"):
        old["labels"][0] = 1
    exp = ds.branch("exp")
    assert isinstance(exp, hd.Dataset) and exp.branch_name == "exp"
    exp["labels"][1] = 3
    exp.commit("relabel on exp")
    ds["images"][2] = 5.0
    ds.commit("images on main")
    ds.merge("exp")
    merged = hd.load("ml/d", storage=root)
    assert merged["labels"][1].read() == 3 and merged["images"][2].read().sum() == 15.0
    assert isinstance(ds.checkout("v1"), hd.Dataset)


def test_branch_view_follows_new_writes_and_arrays(root):
    ds = hd.dataset("ml/e", images=dict(shape=(10, 2), dtype="int32"), storage=root)
    other = hd.load("ml/e", storage=root)
    other["images"][3] = 9
    assert ds["images"][3].read().tolist() == [9, 9]
    added = other.create_array("labels", data=np.arange(10, dtype="int16"))
    assert added.dtype == np.int16 and "labels" in ds and ds["labels"][4].read() == 4
    with pytest.raises(FileExistsError, match="labels"):
        other.create_array("labels", shape=(10,))


def test_bad_input_is_refused_and_storage_unchanged(root):
    hd.dataset("ml/f", images=dict(shape=(4, 2), dtype="uint8"), storage=root)
    before = snapshot(root)
    with pytest.raises(FileExistsError, match="exist_ok"):
        hd.dataset("ml/f", images=dict(shape=(4, 2), dtype="uint8"), storage=root)
    with pytest.raises(ValueError, match="'images' has shape"):
        hd.dataset("ml/f", images=dict(shape=(5, 2), dtype="uint8"), storage=root, exist_ok=True)
    assert hd.dataset("ml/f", images=dict(shape=(4, 2), dtype="uint8"), storage=root, exist_ok=True).keys() == ["images"]
    with pytest.raises(TypeError, match="unknown keys \\['chunk'\\]"):
        hd.dataset("ml/g", images=dict(shape=(4,), chunk=2), storage=root)
    with pytest.raises(hd.InvalidNameError, match="bad/key"):
        hd.dataset("ml/g", **{"bad/key": dict(shape=(4,))}, storage=root)
    with pytest.raises(TypeError, match="not supported"):
        hd.dataset("ml/g", images=dict(shape=(4,), dtype=object), storage=root)
    with pytest.raises(ValueError, match="data has shape"):
        hd.dataset("ml/g", images=dict(shape=(5,), data=np.zeros(4)), storage=root)
    with pytest.raises(TypeError, match="at least one array"):
        hd.dataset("ml/g", storage=root)
    assert snapshot(root) == before
    ds = hd.load("ml/f", storage=root)
    with pytest.raises(hd.NotFoundError, match="no array 'nope'; arrays: images"):
        ds["nope"]
    with pytest.raises(TypeError, match="index by array name"):
        ds[0]


def test_export_numpy_and_zarr(root, tmp_path):
    import zarr

    x = np.arange(24, dtype="f8").reshape(6, 4)
    ds = hd.dataset("ml/x", a=x, b=np.arange(6), storage=root)
    out = ds.to_numpy()
    np.testing.assert_array_equal(out["a"], x)
    ds.to_zarr(tmp_path / "out.zarr")
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    np.testing.assert_array_equal(group["a"][:], x)
    np.testing.assert_array_equal(group["b"][:], np.arange(6))


def test_checkout_reopens_the_same_kind_at_the_ref(tmp_path):
    """checkout opens through the handle itself (no api.load): a dataset's array stays that array, a
    missing ref is a NotFoundError naming it, and the checked-out object reads the ref's values."""
    root = str(tmp_path)
    ds = hd.dataset("ml/k", images=dict(shape=(4, 2), dtype="int32"), labels=dict(shape=(4,), dtype="int8"),
                    storage=root)
    ds["labels"][...] = 1
    ds.tag("v1")
    ds["labels"][...] = 2
    old = ds["labels"].checkout("v1")
    assert isinstance(old, hd.Array) and old.name == "ml/k:v1" and old.branch_name is None
    np.testing.assert_array_equal(np.asarray(old), np.ones(4, "int8"))
    back = old.checkout("main")
    assert back.branch_name == "main" and back.frozen_view.source.path == "labels"
    np.testing.assert_array_equal(np.asarray(back), np.full(4, 2, "int8"))
    whole = ds.checkout("v1")
    assert isinstance(whole, hd.Dataset) and sorted(whole.keys()) == ["images", "labels"]
    with pytest.raises(hd.NotFoundError, match="nope"):
        ds.checkout("nope")


def test_dataset_writes_repeat_when_a_commit_seals_the_node_mid_write(root, monkeypatch):
    from hubdask import write

    images = np.random.default_rng(3).integers(0, 255, (32, 4), dtype=np.uint8)
    labels = np.arange(32)
    committed: list = []
    real = write.write_once

    def then_commit(src, *args, **kwargs):
        created = real(src, *args, **kwargs)
        if not committed:  # a second actor commits right after the first block of the dataset's data landed
            other = hd.load("ml/sealed", storage=root)
            committed.append((other.commit("mid-write"), {k: a.read() for k, a in other.arrays.items()}))
        return created

    monkeypatch.setattr(write, "write_once", then_commit)
    ds = hd.dataset("ml/sealed", images=dict(data=images, chunks=(4, 4)), labels=dict(data=labels, chunks=(8,)),
                    storage=root)
    again = hd.load("ml/sealed", storage=root)
    np.testing.assert_array_equal(again["images"].read(), images)  # every block on the branch
    np.testing.assert_array_equal(again["labels"].read(), labels)
    assert [c.message for c in ds.log()] == ["ingest images, labels", "mid-write", "created"]
    cid, seen = committed[0]
    at_commit = hd.load(f"ml/sealed:{cid}", storage=root)
    for key, values in seen.items():  # the commit made mid-write unchanged
        np.testing.assert_array_equal(at_commit[key].read(), values)
    np.testing.assert_array_equal(hd.load(f"ml/sealed:{ds.log()[0].id}", storage=root)["images"].read(), images)
