"""The core data path on every kind of root: local folder, memory and a moto S3 server."""

from __future__ import annotations

import json
import uuid

import dask
import dask.array as da
import numpy as np
import pytest

import hubdask as hd
from hubdask.storage import open_root

from helpers import chunk_blocks, chunk_reads, committed_object, internal, run_python, snapshot


def test_seed_workflow_petabyte_array(root):
    big = hd.array((10**10, 512, 512, 3), name="test/bigarray:v0", dtype="uint8", storage=root)
    assert big.shape == (10**10, 512, 512, 3) and big.dtype == np.uint8
    img = (np.random.default_rng(0).random((512, 512, 3)) * 255).astype("uint8")
    big[0, :, :, :] = img
    x = hd.load("test/bigarray:v0", storage=root)
    assert x.shape == (10**10, 512, 512, 3)
    assert x.chunks[1:] == (512, 512, 3) and 1 <= x.chunks[0] <= 64
    view = x[0:10, 100:200, 100:200]
    assert chunk_reads(view.to_dask()) <= 4
    expected = img[100:200, 100:200].astype("float64").sum() / (10 * 100 * 100 * 3)
    assert view.mean().compute() == pytest.approx(expected, rel=1e-12)
    np.testing.assert_array_equal(np.asarray(x[0]), img)
    np.testing.assert_array_equal(x[1].read(), np.zeros((512, 512, 3), "uint8"))


def test_views_compose_like_numpy(root, layout):
    ref = np.arange(23 * 17 * 5, dtype="int32").reshape(23, 17, 5)
    a = hd.array(ref.shape, name="v/a", dtype="int32", **layout((4, 5, 2)), storage=root)
    a[...] = ref
    b = hd.load("v/a", storage=root)
    rng = np.random.default_rng(1)
    for _ in range(40):
        idx = []
        for n in ref.shape:
            kind = rng.integers(4)
            if kind == 0:
                idx.append(int(rng.integers(-n, n)))
            else:
                start, stop = sorted(rng.integers(-n - 2, n + 2, size=2))
                step = int(rng.choice([1, 2, 3, -1, -2, 7]))
                idx.append(slice(int(start), int(stop), step) if step > 0 else slice(int(stop), int(start), step))
        idx = tuple(idx)
        np.testing.assert_array_equal(np.asarray(b[idx]), ref[idx], err_msg=str(idx))
        second = (slice(None, None, -1),) + (Ellipsis,)
        if ref[idx].ndim:
            np.testing.assert_array_equal(b[idx][second].compute(), ref[idx][second], err_msg=str(idx))
    assert b[..., 1].shape == ref[..., 1].shape
    assert b[3:1].shape == (0, 17, 5) and np.asarray(b[3:1]).shape == (0, 17, 5)


def test_dask_collection_protocol(root, layout):
    a = hd.array((40, 6), name="d/a", dtype="float32", **layout((8, 3)), storage=root)
    ref = np.random.default_rng(2).random((40, 6)).astype("float32")
    a[:] = ref
    v = hd.load("d/a", storage=root)[5:33, 1:]
    assert dask.is_dask_collection(v)
    (out,) = dask.compute(v)
    np.testing.assert_array_equal(out, ref[5:33, 1:])
    d = v.to_dask()
    assert d.chunks == ((3, 8, 8, 8, 1), (2, 3))
    assert chunk_blocks(d) == 10 and chunk_reads(d) == 10  # one key and one read per touched chunk
    np.testing.assert_allclose(v.std().compute(), ref[5:33, 1:].std(), rtol=1e-5)
    np.testing.assert_allclose((v * 2 + 1).sum().compute(), (ref[5:33, 1:] * 2 + 1).sum(), rtol=1e-5)
    np.testing.assert_array_equal(v.astype("int8").compute(), ref[5:33, 1:].astype("int8"))
    assert v.max().compute() == ref[5:33, 1:].max()


def test_unwritten_chunks_cost_no_read_task(root, layout):
    a = hd.array((100, 10), name="u/a", dtype="int16", **layout((10, 10)), fill_value=7, storage=root)
    a[15] = 1
    cid = a.commit("one row")
    v = hd.load(f"u/a:{cid}", storage=root)
    assert chunk_reads(v.to_dask()) == 1 and chunk_blocks(v.to_dask()) == 10
    out = v.compute()
    assert (out[15] == 1).all() and (np.delete(out, 15, axis=0) == 7).all()


def test_partial_and_whole_chunk_writes(root, layout):
    a = hd.array((10, 10), name="w/a", dtype="int64", **layout((4, 4)), storage=root)
    model = np.zeros((10, 10), "int64")
    for idx, val in [((slice(0, 4), slice(0, 4)), 5), ((slice(3, 9), 2), [1, 2, 3, 4, 5, 6]),
                     ((slice(None, None, 3), slice(None, None, -2)), 9), ((-1, -1), np.int8(-3)),
                     ((slice(8, 10),), np.arange(20).reshape(2, 10))]:
        a[idx] = val
        model[idx] = val
        np.testing.assert_array_equal(hd.load("w/a", storage=root).read(), model)


def test_store_misaligned_dask_array(root, layout):
    ref = np.random.default_rng(3).integers(0, 1000, size=(37, 29)).astype("int32")
    src = da.from_array(ref, chunks=(7, 11))
    out = hd.store(src, "s/out", storage=root, **layout((5, 6)))
    assert out.chunks == layout((5, 6))["chunks"] and out.storage_chunks == (5, 6)
    np.testing.assert_array_equal(hd.load("s/out", storage=root).read(), ref)
    big = hd.array((50, 40), name="s/region", dtype="int32", **layout((8, 8)), fill_value=-1, storage=root)
    hd.store(src, big, region=(slice(3, 40), slice(5, 34)))
    model = np.full((50, 40), -1, "int32")
    model[3:40, 5:34] = ref
    np.testing.assert_array_equal(hd.load("s/region", storage=root).read(), model)
    lazy = hd.store(src * 0, big, region=(slice(3, 40), slice(5, 34)), compute=False)
    np.testing.assert_array_equal(hd.load("s/region", storage=root).read(), model)  # nothing written yet
    lazy.compute()
    model[3:40, 5:34] = 0
    np.testing.assert_array_equal(hd.load("s/region", storage=root).read(), model)


def test_ls_delete_repr(root):
    hd.array((4,), name="alice/one", dtype="uint8", storage=root)
    hd.array((4,), name="alice/two", dtype="uint8", storage=root)
    hd.array((4,), name="bare", dtype="uint8", storage=root)
    assert hd.ls("alice", storage=root) == ["alice/one", "alice/two"]
    assert hd.ls(storage=root) == ["alice/one", "alice/two", "bare"]
    r = repr(hd.load("alice/one", storage=root))
    assert "alice/one:main" in r and "shape=(4,)" in r and "uint8" in r and "\n" not in r
    hd.delete("alice/one", storage=root)
    assert hd.ls("alice", storage=root) == ["alice/two"]
    with pytest.raises(hd.NotFoundError, match="alice/one"):
        hd.load("alice/one", storage=root)


def test_a_dataset_deleted_by_another_process_can_be_made_again(tmp_path):
    root = str(tmp_path / "root")
    a = hd.array((4,), name="alice/re", dtype="uint8", storage=root)
    a[:] = 1
    assert hd.load("alice/re", storage=root).read().tolist() == [1, 1, 1, 1]  # this process has seen it
    done = run_python(f"import hubdask as hd; hd.delete('alice/re', storage={root!r})")
    assert done.returncode == 0, done.stderr
    b = hd.array((3,), name="alice/re", dtype="int16", fill_value=7, storage=root)
    assert (b.shape, b.dtype, b.read().tolist()) == ((3,), np.int16, [7, 7, 7])


def test_corrupted_chunk_is_detected(root, layout):
    a = hd.array((8, 8), name="c/a", dtype="float64", **layout((4, 4)), storage=root)
    a[:] = np.ones((8, 8))
    cid = a.commit("data")
    r = open_root(root)
    key = committed_object(a, cid, "c/1/0")
    data = bytearray(r.get(key))
    data[len(data) // 2] ^= 0xFF
    r.put(key, bytes(data))
    b = hd.load("c/a", storage=root)
    np.testing.assert_array_equal(np.asarray(b[:4]), np.ones((4, 8)))  # untouched chunks still read
    with pytest.raises(hd.CorruptChunkError, match="c/a"):
        np.asarray(b[4:, :4])
    with pytest.raises(hd.CorruptChunkError, match="c/a"):
        b[4:, :4].compute()


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_second_process_reads_what_first_wrote(kind, tmp_path, request, layout):
    root = str(tmp_path / "root") if kind == "local" else request.getfixturevalue("s3_root")
    a = hd.array((6, 5), name="p/shared", dtype="int32", **layout((2, 5)), storage=root)
    a[:] = np.arange(30).reshape(6, 5)
    proc = run_python(f"""
        import numpy as np, hubdask as hd
        x = hd.load("p/shared", storage={root!r})
        print(int(np.asarray(x[1:5]).sum()), x.shape)
        x[5] = -1
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == str(np.arange(30).reshape(6, 5)[1:5].sum())
    np.testing.assert_array_equal(hd.load("p/shared", storage=root)[5].read(), [-1] * 5)


# --- bad input: a clear error and storage unchanged ---------------------------------------------------

@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "a//b", "..", "a/./b", "a b", "x/y/z", "ds:", "ds:a:b",
                                  "ds:..", "caf\u00e9", "a/b\u202e", "x" * 300, "s3://bucket"])
def test_invalid_names_touch_no_storage(name, tmp_path):
    root = tmp_path / "never"
    with pytest.raises(hd.InvalidNameError):
        hd.array((3,), name=name, dtype="uint8", storage=str(root))
    with pytest.raises(hd.InvalidNameError):
        hd.load(name, storage=str(root))
    assert not root.exists()


def test_bad_writes_leave_storage_unchanged(root, layout):
    a = hd.array((10, 10), name="bad/a", dtype="uint8", **layout((5, 5)), storage=root)
    a[0] = 3
    before = snapshot(root)
    cases = [
        ((slice(0, 3),), np.ones((2, 10), "uint8"), ValueError, "broadcast"),
        ((11,), 1, IndexError, "out of bounds"),
        ((0, 0, 0), 1, IndexError, "too many"),
        ((0,), 300, TypeError, "uint8"),
        ((0,), -1, TypeError, "uint8"),
        ((0,), 1.5, TypeError, "uint8"),
        ((0,), np.nan, TypeError, "NaN"),
        ((0,), np.ones(10, "float64"), TypeError, "float64"),
        ((0,), np.array(["a"] * 10), TypeError, "dtype"),
        ((0,), [object()] * 10, TypeError, "object"),
        ((np.array([[1, 2]]),), 1, IndexError, "2-d integer array .* not supported"),
        ((np.array([True, False]),), 1, IndexError, "mask of shape"),
        (([1, 12],), 1, IndexError, "out of bounds"),
    ]
    for idx, value, exc, text in cases:
        with pytest.raises(exc, match=text) as info:
            a[idx] = value
        assert "bad/a" in str(info.value)
    assert snapshot(root) == before


def test_bad_creation_leaves_storage_unchanged(root):
    hd.array((4,), name="bad/exists", dtype="uint8", storage=root)
    before = snapshot(root)
    cases = [
        (dict(shape=(4,), name="bad/exists", dtype="uint8"), FileExistsError),
        (dict(shape=(4,), name="bad/obj", dtype=object), TypeError),
        (dict(shape=(-1,), name="bad/neg", dtype="uint8"), ValueError),
        (dict(shape=(4,), name="bad/ch0", dtype="uint8", chunks=(0,)), ValueError),
        (dict(shape=(4,), name="bad/chneg", dtype="uint8", chunks=(-2,)), ValueError),
        (dict(shape=(4,), name="bad/chbig", dtype="uint8", chunks=(8,)), ValueError),
        (dict(shape=(4, 4), name="bad/chnd", dtype="uint8", chunks=(2,)), ValueError),
        (dict(shape=(4,), name="bad/dt", dtype="notadtype"), TypeError),
    ]
    for kwargs, exc in cases:
        with pytest.raises(exc) as info:
            hd.array(storage=root, **kwargs)
        assert kwargs["name"] in str(info.value)
    assert snapshot(root) == before
    same = hd.array((4,), name="bad/exists", dtype="uint8", exist_ok=True, storage=root)
    assert same.shape == (4,)


def test_unknown_dataset_and_ref(root):
    hd.array((4,), name="k/a", dtype="uint8", storage=root)
    with pytest.raises(hd.NotFoundError, match="k/nope"):
        hd.load("k/nope", storage=root)
    with pytest.raises(hd.NotFoundError, match="nobranch"):
        hd.load("k/a:nobranch", storage=root)


def test_credentials_never_shown(moto_server):
    secret = "SuPeRsEcReT" + uuid.uuid4().hex
    opts = {"key": "AKIAFAKE", "secret": secret}
    root = open_root("s3://no-such-bucket-hubdask/prefix", opts)
    assert secret not in repr(root)
    with pytest.raises(Exception) as info:
        hd.array((4,), name="s3://no-such-bucket-hubdask/prefix/ds", dtype="uint8", storage_options=opts)
    text = str(info.value) + repr(info.value) + "".join(str(a) for a in info.value.args)
    assert secret not in text


def test_metadata_is_standard_zarr(tmp_path):
    root = str(tmp_path / "r")
    a = hd.array((8, 3), name="z/a", dtype="float32", chunks=(4, 3), storage=root)
    a[:] = np.arange(24, dtype="float32").reshape(8, 3)
    cid = a.commit("x")
    meta_keys = [k for k in open_root(root).list_prefix(internal("z/a", "nodes/")) if "zarr.json@" in k]
    meta = json.loads(open_root(root).get(meta_keys[0]))
    assert meta["zarr_format"] == 3 and meta["shape"] == [8, 3]
    assert [c["name"] for c in meta["codecs"]][-2:] == ["zstd", "crc32c"]
    assert hd.load(f"z/a:{cid}", storage=root).read().sum() == sum(range(24))
