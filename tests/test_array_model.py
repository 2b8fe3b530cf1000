"""Views against a numpy model (hypothesis): basic, orthogonal integer-array and mask indexing, reads
(np.asarray, dask, views of views) and writes, with chunk shapes that do not divide the array."""

from __future__ import annotations

import uuid

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hubdask as hd


@st.composite
def arrays(draw):
    """(shape, chunks, shards): chunks that need not divide the shape, and half the time shards of 1 to 3
    chunks per axis (partial shards at the edges)."""
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
    chunks = tuple(draw(st.integers(1, n)) for n in shape)
    shards = tuple(c * draw(st.integers(1, 3)) for c in chunks) if draw(st.booleans()) else None
    return shape, chunks, shards


@st.composite
def axis_index(draw, n: int, unique: bool):
    kind = draw(st.sampled_from(["int", "slice", "slice", "array", "mask"] if n else ["slice", "mask"]))
    if kind == "int":
        return draw(st.integers(-n, n - 1))
    if kind == "slice":
        start = draw(st.none() | st.integers(-n - 2, n + 2))
        stop = draw(st.none() | st.integers(-n - 2, n + 2))
        step = draw(st.none() | st.sampled_from([1, 2, 3, -1, -2, 5]))
        return slice(start, stop, step)
    if kind == "mask":
        return np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    values = st.integers(-n, n - 1)
    if unique:  # distinct positions (negative and positive forms of one position count once)
        picked = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
        return np.array([p - n if draw(st.booleans()) else p for p in picked], dtype=np.int64)
    return np.array(draw(st.lists(values, max_size=6)), dtype=np.int64)


def index_for(draw, shape: tuple[int, ...], unique: bool = False) -> tuple:
    k = draw(st.integers(0, len(shape)))
    return tuple(draw(axis_index(n, unique)) for n in shape[:k])


def oindex(ref: np.ndarray, index: tuple) -> tuple[tuple, tuple]:
    """The model's orthogonal index: (basic part with ints, np.ix_ part over the remaining axes)."""
    index = index + (slice(None),) * (ref.ndim - len(index))
    basic = tuple(i if isinstance(i, int) else slice(None) for i in index)
    rest = [(i, n) for i, n in zip(index, ref.shape) if not isinstance(i, int)]
    grids = [np.arange(n)[i] if isinstance(i, slice) else (np.flatnonzero(i) if i.dtype == bool else i) for i, n in rest]
    return basic, np.ix_(*grids) if grids else ()


def model_read(ref: np.ndarray, index: tuple) -> np.ndarray:
    basic, grids = oindex(ref, index)
    sub = ref[basic]
    return sub[grids] if grids else sub


def model_write(ref: np.ndarray, index: tuple, value) -> None:
    basic, grids = oindex(ref, index)
    sub = ref[basic]
    if grids:
        sub[grids] = value
    else:
        ref[basic] = value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(), st.data())
def test_views_match_the_numpy_model(spec, data):
    shape, chunks, shards = spec
    root = f"memory://m{uuid.uuid4().hex}"
    ref = np.arange(int(np.prod(shape)), dtype="int32").reshape(shape) + 1
    a = hd.array(shape, name="h/a", dtype="int32", chunks=chunks, shards=shards, fill_value=-7, storage=root)
    a[...] = ref
    for _ in range(3):  # writes, with scalar or array values
        index = index_for(data.draw, shape, unique=True)
        target = model_read(ref, index)
        if data.draw(st.booleans()):
            value = data.draw(st.integers(-1000, 1000))
        else:
            value = np.arange(target.size, dtype="int32").reshape(target.shape) * -3
            if value.ndim and data.draw(st.booleans()):
                value = value[None]  # a leading length-1 axis, as numpy accepts
        a[index] = value
        model_write(ref, index, value if np.ndim(value) <= target.ndim else value[0])
    b = hd.load("h/a", storage=root)
    np.testing.assert_array_equal(np.asarray(b), ref)
    for _ in range(3):  # reads: direct, through dask, and a view of a view
        index = index_for(data.draw, shape)
        want = model_read(ref, index)
        view = b[index]
        assert view.shape == want.shape
        np.testing.assert_array_equal(np.asarray(view), want, err_msg=str(index))
        np.testing.assert_array_equal(view.compute(), want, err_msg=str(index))
        if want.ndim:
            second = index_for(data.draw, want.shape)
            np.testing.assert_array_equal(np.asarray(view[second]), model_read(want, second),
                                          err_msg=f"{index} then {second}")


def test_composed_orthogonal_views_match_the_model_seeded(tmp_path):
    """Many views of views (index arrays over stepped and reversed spans, masks, ints), one array."""
    rng = np.random.default_rng(7)
    ref = np.arange(11 * 7 * 4, dtype="int32").reshape(11, 7, 4)
    a = hd.array(ref.shape, name="h/s", dtype="int32", chunks=(3, 4, 3), storage=str(tmp_path))
    a[...] = ref

    def draw(n: int):
        kind = rng.integers(5) if n else 1
        if kind == 0:
            return int(rng.integers(-n, n))
        if kind in (1, 2):
            step = int(rng.choice([1, 2, 3, -1, -2]))
            lo, hi = sorted(rng.integers(-n - 1, n + 1, size=2))
            return slice(int(lo), int(hi), step) if step > 0 else slice(int(hi), int(lo), step)
        if kind == 3:
            return rng.integers(-n, n, size=int(rng.integers(0, 5)))
        return rng.random(n) < 0.5

    for _ in range(150):
        first = tuple(draw(n) for n in ref.shape)
        want = model_read(ref, first)
        view = a[first]
        np.testing.assert_array_equal(np.asarray(view), want, err_msg=str(first))
        second = tuple(draw(n) for n in want.shape)
        np.testing.assert_array_equal(np.asarray(view[second]), model_read(want, second), err_msg=f"{first} {second}")
        np.testing.assert_array_equal(view[second].compute(), model_read(want, second), err_msg=f"{first} {second}")
