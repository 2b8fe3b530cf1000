"""Regression tests for issue 13's numbered items: a view behaves as a dask array wherever a dask user looks."""

from __future__ import annotations

import operator

import dask
import dask.array as da
import numpy as np
import pytest

import hubdask as hd

from helpers import run_python


def _filled(root: str, name: str = "r/a", shape=(6, 8), chunks=(4, 3), dtype="int32") -> tuple:
    ref = np.arange(np.prod(shape), dtype=dtype).reshape(shape)
    a = hd.array(shape, name=name, dtype=dtype, chunks=chunks, storage=root)
    a[...] = ref
    return a, ref


# --- 1. never stale -------------------------------------------------------------------------------


def test_branch_view_sees_every_returned_write_through_every_path(root):
    a = hd.array((4, 6), name="s/a", dtype="int32", chunks=(2, 3), storage=root)
    v = hd.load("s/a", storage=root)
    assert v.compute().sum() == 0 and int(v.sum().compute()) == 0
    a[:] = 1
    assert v.compute().sum() == 24
    assert dask.compute(v)[0].sum() == 24
    assert int(v.sum().compute()) == 24
    assert int((v + 0).sum().compute()) == 24
    assert np.asarray(v.persist()).sum() == 24
    assert v.to_dask().compute().sum() == 24
    other = hd.load("s/a", storage=root)
    other.commit("ones")
    other[:] = 2  # after another object's commit, into the next open node
    assert v.compute().sum() == 48 and np.asarray(v).sum() == 48 and int(v.sum().compute()) == 48


def test_branch_view_token_changes_with_writes_and_commits(tmp_path):
    root = str(tmp_path)
    a = hd.array((4, 6), name="s/t", dtype="int32", chunks=(2, 3), storage=root)
    v = hd.load("s/t", storage=root)
    assert dask.base.tokenize(v) == dask.base.tokenize(v)  # no write in the open node: the head state decides
    tokens, names = [dask.base.tokenize(v)], [v.to_dask().name]
    a[0] = 1
    tokens.append(dask.base.tokenize(v))
    names.append(v.to_dask().name)
    a[1] = 1  # a second write into the same open node
    tokens.append(dask.base.tokenize(v))
    names.append(v.to_dask().name)
    a.commit("c")
    tokens.append(dask.base.tokenize(v))
    names.append(v.to_dask().name)
    assert len(set(tokens)) == 4 and len(set(names)) == 4
    assert dask.base.tokenize(v) == dask.base.tokenize(v)  # just committed: the new node is empty
    a[2] = 1
    assert dask.base.tokenize(v) != dask.base.tokenize(v)  # the node may change at any moment now


def test_commit_view_tokens_are_deterministic_across_processes(tmp_path):
    root = str(tmp_path)
    a, _ = _filled(root, "s/c")
    cid = a.commit("c")
    v1, v2 = hd.load(f"s/c:{cid}", storage=root)[1:5], hd.load(f"s/c:{cid}", storage=root)[1:5]
    assert dask.base.tokenize(v1) == dask.base.tokenize(v2)
    assert v1.to_dask().name == v2.to_dask().name
    assert dask.base.tokenize(v1) != dask.base.tokenize(v1[1:])
    out = run_python(f"""
        import dask, hubdask as hd
        v = hd.load("s/c:{cid}", storage={root!r})[1:5]
        print(dask.base.tokenize(v), v.to_dask().name)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [dask.base.tokenize(v1), v1.to_dask().name]


@pytest.mark.slow
def test_distributed_persist_is_not_reused_after_a_write(tmp_path):
    distributed = pytest.importorskip("distributed")
    root = str(tmp_path)
    a = hd.array((4, 6), name="s/d", dtype="int32", chunks=(2, 3), storage=root)
    v = hd.load("s/d", storage=root)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        kept = client.persist(v)
        assert int(kept.sum().compute()) == 0
        a[:] = 3
        assert client.compute(v).result().sum() == 72
        assert int(client.persist(v).sum().compute()) == 72
        assert int(v.sum().compute()) == 72


# --- 2. dask's _meta ------------------------------------------------------------------------------


def test_meta_is_an_empty_ndarray_and_dask_functions_work(tmp_path):
    a, ref = _filled(str(tmp_path))
    assert isinstance(a._meta, np.ndarray) and a._meta.shape == (0, 0) and a._meta.dtype == ref.dtype
    np.testing.assert_array_equal(da.map_blocks(lambda b: b + 1, a).compute(), ref + 1)
    np.testing.assert_array_equal(np.asarray(np.where(a > 3, a, 0)), np.where(ref > 3, ref, 0))
    np.testing.assert_array_equal(da.blockwise(np.negative, "ij", a, "ij", dtype=a.dtype).compute(), -ref)


# --- 3. assert_eq, asarray, stack -------------------------------------------------------------------


def test_assert_eq_asarray_and_stack(tmp_path):
    from dask.array.utils import assert_eq

    a, ref = _filled(str(tmp_path))
    assert_eq(a, ref)
    assert_eq(a[1:5, ::2], ref[1:5, ::2])
    assert_eq(a[::-1] * 2 + 1, ref[::-1] * 2 + 1)
    assert_eq(a.sum(axis=0), ref.sum(axis=0))
    wrapped = da.asarray(a)
    assert wrapped.chunks == ((4, 2), (3, 3, 2))
    np.testing.assert_array_equal(da.stack([a, a[::-1]]).compute(), np.stack([ref, ref[::-1]]))
    np.testing.assert_array_equal(da.concatenate([a, a]).compute(), np.concatenate([ref, ref]))


# --- 4. numpy functions dispatch to dask -----------------------------------------------------------


@pytest.mark.parametrize("fn", [
    lambda x: np.concatenate([x, x]), lambda x: np.stack([x, x]), np.transpose,
    lambda x: np.clip(x, 3, 9), lambda x: np.cumsum(x, axis=1), lambda x: np.sqrt(x), np.mean,
])
def test_numpy_functions_stay_lazy(tmp_path, fn):
    a, ref = _filled(str(tmp_path))
    out = fn(a)
    assert isinstance(out, da.Array), type(out)
    np.testing.assert_allclose(out.compute(), fn(ref))


def test_xarray_wraps_a_view_lazily(tmp_path):
    xr = pytest.importorskip("xarray")
    a, ref = _filled(str(tmp_path))
    x = xr.DataArray(a)
    assert not isinstance(x.data, np.ndarray)
    np.testing.assert_array_equal((x + 1).values, ref + 1)


# --- 5. dask Array methods --------------------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda x: x if isinstance(x, np.ndarray) else x.rechunk(2), lambda x: x.T, lambda x: x.transpose(), lambda x: x.reshape(48), lambda x: x.ravel(),
    lambda x: x.prod(axis=0), lambda x: x.any(), lambda x: x.all(), lambda x: x.argmax(), lambda x: x.cumsum(0),
    lambda x: x.round(), lambda x: x.clip(2, 5), lambda x: x.squeeze(), lambda x: x.swapaxes(0, 1),
])
def test_dask_array_methods(tmp_path, call):
    a, ref = _filled(str(tmp_path))
    out = call(a)
    assert isinstance(out, da.Array), type(out)
    np.testing.assert_array_equal(out.compute(), call(ref))
    if call(a.to_dask()).ndim:
        assert call(a).chunks == call(a.to_dask()).chunks


# --- 6. 0-d views -----------------------------------------------------------------------------------


def test_zero_d_conversions(tmp_path):
    a, ref = _filled(str(tmp_path))
    assert float(a[2, 3]) == float(ref[2, 3]) and int(a[2, 3]) == int(ref[2, 3])
    assert bool(a[2, 3]) is True and bool(a[0, 0]) is False
    assert complex(a[2, 3]) == complex(ref[2, 3]) and operator.index(a[2, 3]) == int(ref[2, 3])
    assert [10, 20, 30, 40][a[0, 1]] == 20
    with pytest.raises(ValueError, match="ambiguous"):
        bool(a[0])


# --- 7. integer arrays and masks ------------------------------------------------------------------


def test_integer_array_and_mask_indices(tmp_path):
    a, ref = _filled(str(tmp_path))
    idx = np.array([5, 0, 2, 2, -1])
    mask = np.array([True, False, True, True, False, False, True, False])
    np.testing.assert_array_equal(np.asarray(a[idx]), ref[idx])
    np.testing.assert_array_equal(np.asarray(a[:, mask]), ref[:, mask])
    np.testing.assert_array_equal(a[1:, [7, 1]].compute(), ref[1:, [7, 1]])
    np.testing.assert_array_equal(np.asarray(a[None, 2]), ref[None, 2])
    a[[0, 4], 1:3] = -1
    ref[[0, 4], 1:3] = -1
    a[:, mask] = 7
    ref[:, mask] = 7
    np.testing.assert_array_equal(np.asarray(hd.load("r/a", storage=str(tmp_path))), ref)
    with pytest.raises(IndexError, match="out of bounds"):
        a[[0, 6]]
    with pytest.raises(IndexError, match="mask"):
        a[np.array([True, False])]


# --- 8. the seed's lines --------------------------------------------------------------------------


def test_seed_lines_verbatim(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBDASK_ROOT", str(tmp_path))
    mnist = hd.array((50000, 28, 28, 1), name="name/random_name:v1")
    img = np.random.random((1, 28, 28, 1))
    mnist[0, :, :, :] = img
    np.testing.assert_array_equal(np.asarray(mnist[0]), img[0])
    assert str(mnist[0]) == str(img[0])
    assert repr(mnist[0]).startswith("hubdask.Array<")
    with pytest.raises(ValueError, match="broadcast"):
        mnist[0] = np.zeros((2, 28, 28, 1))


def test_too_large_for_one_graph_says_how_many_chunks_and_what_to_do(tmp_path):
    a = hd.array((10**10, 4), name="r/big", dtype="uint8", chunks=(10, 4), storage=str(tmp_path))
    with pytest.raises(ValueError, match=r"1,000,000,000 chunks.*slice"):
        a.to_dask()
    with pytest.raises(ValueError, match=r"1,000,000,000 chunks"):
        np.concatenate([a, a])
    assert int(a.sum().compute()) == 0  # the bounded waves still work


def test_demo_walks_the_seed_lines(tmp_path):
    from hubdask import demo

    lines: list[str] = []
    assert demo.run(storage=str(tmp_path), keep=False, out=lines.append, other_process=False) == 0
    text = "\n".join(lines)
    assert all(f">>> {line}" in text for line in demo.SEED.splitlines())
    assert "e-0" in text or "0." in text  # the values were printed, not a lazy repr


def test_cache_false_survives_writes_commits_and_checkouts(tmp_path):
    _filled(str(tmp_path), "r/nc")
    a = hd.load("r/nc", storage=str(tmp_path), cache=False)
    a[0] = 5
    assert a.frozen_view.source.cache is False
    a.commit("c")
    assert a.frozen_view.source.cache is False
    a.tag("t")
    assert a.checkout("t").frozen_view.source.cache is False
    assert a.branch("exp").frozen_view.source.cache is False


def test_iteration_and_len(tmp_path):
    a, ref = _filled(str(tmp_path))
    rows = list(a)
    assert len(rows) == 6 and all(isinstance(r, hd.Array) for r in rows)
    np.testing.assert_array_equal(np.asarray(rows[4]), ref[4])
    with pytest.raises(TypeError, match="0-d"):
        iter(a[0, 0]).__next__()


def test_codec_chains_the_engine_does_not_run_read_through_zarr(tmp_path):
    from zarr.codecs import GzipCodec, ZstdCodec
    from zarr.core.buffer import default_buffer_prototype

    from hubdask.storage import sync

    a = hd.array((6, 8), name="r/z", dtype="int32", chunks=(4, 3), codecs=[ZstdCodec(), GzipCodec()],
                 storage=str(tmp_path))
    ref = np.arange(48, dtype="int32").reshape(6, 8)
    a[...] = ref
    a[[0, 5], ::3] = -1
    ref[np.ix_([0, 5], [0, 3, 6])] = -1
    np.testing.assert_array_equal(np.asarray(a[[5, 0, 1]]), ref[[5, 0, 1]])
    assert_eq = pytest.importorskip("dask.array.utils").assert_eq
    assert_eq(a[:, [7, 0]], ref[:, [7, 0]])
    store = a.frozen_view.source.store()
    sync(store.set("c/0/0", default_buffer_prototype().buffer.from_bytes(b"not a chunk at all")))
    with pytest.raises(hd.CorruptChunkError, match="r/z"):
        np.asarray(a[0:2, 0:2])
    np.testing.assert_array_equal(np.asarray(a[4:, 3:]), ref[4:, 3:])


def test_branch_view_sees_another_process_write(root):
    if root.startswith("memory://"):
        pytest.skip("a memory root lives in one process")
    a = hd.array((4, 6), name="s/p", dtype="int32", chunks=(2, 3), storage=root)
    v = hd.load("s/p", storage=root)[1:]
    assert v.compute().sum() == 0 and dask.base.tokenize(v) == dask.base.tokenize(v)
    before = v.to_dask().name
    out = run_python(f"""
        import hubdask as hd
        hd.load("s/p", storage={root!r})[:] = 5
    """)
    assert out.returncode == 0, out.stderr
    assert v.compute().sum() == 90 and int(v.sum().compute()) == 90 and v.to_dask().name != before
    assert a[0].compute().sum() == 30
