"""dask's own test utility on views: ``assert_eq`` after slicing, arithmetic, reductions and numpy
functions, on every kind of root, at a branch and at a commit."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from dask.array.utils import assert_eq

import hubdask as hd

CASES = [
    lambda x: x,
    lambda x: x[1:7, ::3],
    lambda x: x[::-2, 4],
    lambda x: x[[4, 0, 4], 2:],
    lambda x: x[:, np.arange(10) % 3 == 0],
    lambda x: x * 2 - 1,
    lambda x: (x + x[::-1]) / 3,
    lambda x: x.sum(axis=1),
    lambda x: x.mean(axis=0),
    lambda x: x.max(axis=1),
    lambda x: x.sum(),
    lambda x: x.std(),
    lambda x: np.abs(x - 40),
    lambda x: np.where(x > 30, x, 0),
    lambda x: np.concatenate([x, x[:2]]),
    lambda x: np.transpose(x),
    lambda x: x.T @ x,
    lambda x: x.cumsum(axis=0),
]


@pytest.fixture
def filled(root):
    ref = np.arange(9 * 10, dtype="float64").reshape(9, 10)
    a = hd.array(ref.shape, name="c/a", dtype="float64", chunks=(4, 3), storage=root)
    a[...] = ref
    return root, a, ref


@pytest.mark.parametrize("case", range(len(CASES)))
def test_assert_eq_on_a_branch(filled, case):
    root, a, ref = filled
    got = CASES[case](hd.load("c/a", storage=root))
    assert_eq(got, CASES[case](ref))


def test_assert_eq_at_a_commit_and_dask_wrapping(filled):
    root, a, ref = filled
    cid = a.commit("c")
    a[...] = 0  # later writes on the branch: the commit's view never sees them
    v = hd.load(f"c/a:{cid}", storage=root)
    for case in CASES:
        assert_eq(case(v), case(ref))
    x = da.asarray(v)
    assert x.chunks == ((4, 4, 1), (3, 3, 3, 1))  # one block per storage chunk
    assert_eq(v.map_blocks(np.negative), -ref)  # blockwise on the view's storage chunks
    assert v.map_blocks(np.negative).chunks == x.chunks
    # da.map_blocks tests isinstance(arg, dask.array.Array): a view is passed whole, as one value
    np.testing.assert_array_equal(da.map_blocks(np.negative, v).compute(), -ref)
    assert_eq(da.blockwise(np.add, "ij", v, "ij", v, "ij", dtype=v.dtype), 2 * ref)
    assert_eq(da.stack([v, v]), np.stack([ref, ref]))
    assert dask.base.tokenize(v) == dask.base.tokenize(hd.load(f"c/a:{cid}", storage=root))


def test_newaxis_reads(filled):
    root, a, ref = filled
    assert_eq(a[None], ref[None])
    assert_eq(a[:, None, 3], ref[:, None, 3])
    assert_eq(a[..., None], ref[..., None])
    a[None, 0] = np.full((1, 1, 10), 5.0)  # numpy accepts None in assignment too
    ref[None, 0] = 5.0
    assert_eq(hd.load("c/a", storage=root)[0], ref[0])


def test_str_shows_values_up_to_the_documented_size(tmp_path):
    from hubdask.array import STR_MAX_ELEMENTS

    a = hd.array((STR_MAX_ELEMENTS + 1,), name="c/s", dtype="int16", chunks=(100,), storage=str(tmp_path))
    a[...] = np.arange(STR_MAX_ELEMENTS + 1) % 7
    assert str(a[:STR_MAX_ELEMENTS]) == str(np.arange(STR_MAX_ELEMENTS) % 7)
    assert str(a) == repr(a) and repr(a[:3]).startswith("hubdask.Array<")
