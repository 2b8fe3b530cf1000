"""What a new array may be, checked before any byte is written: shape, dtype, chunks, fill value, codecs.

``hd.array``, ``hd.dataset``, ``Dataset.create_array`` and the ingest functions all validate here, so
every creation refuses the same mistakes with the same one-line message naming the dataset and what was
expected, and a refused creation leaves storage untouched (``ArraySpec.check`` even builds the zarr
metadata in memory first, so zarr itself cannot refuse it later, half-way through a creation).

The value rule (``cast``) is the same for fill values and for writes: a value must survive the cast
into the array's dtype. Into an integer or boolean dtype it must be exact (no NaN, no infinity, no
fraction, within range). Into a float or complex dtype precision may be lost (1/3 becomes the nearest
float16) but a finite value may not overflow to infinity (1e10 into float16 is refused); NaN and
infinities themselves stay what they are.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

import numpy as np

from hubdask import config, shards as _shards
from hubdask.errors import InvalidNameError
from hubdask.names import check_part
from hubdask.view import HasView

SUPPORTED_DTYPES = ("bool, int8, int16, int32, int64, uint8, uint16, uint32, uint64, float16, float32, float64, "
                    "complex64, complex128, datetime64[UNIT], timedelta64[UNIT]")


def check_shape(what: str, shape: Any) -> tuple[int, ...]:
    """``shape`` as a tuple of non-negative ints; only integers (Python or numpy, not bool) are lengths."""
    items = shape if isinstance(shape, (tuple, list)) else (shape,)
    out = []
    for s in items:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"{what}: shape must be a tuple of non-negative integers, got {shape!r} "
                            f"({type(s).__name__} {s!r} is not an integer)")
        out.append(operator.index(s))
    if any(s < 0 for s in out):
        raise ValueError(f"{what}: shape {tuple(out)} has a negative length; expected non-negative integers")
    return tuple(out)


def check_dtype(what: str, dtype: Any) -> np.dtype:
    """``dtype`` as a numpy dtype that zarr v3 can store, else TypeError listing the supported ones."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{what}: {dtype!r} is not a numpy dtype; expected one of {SUPPORTED_DTYPES}") from None
    if dt.kind not in "biufcmM" or dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        raise TypeError(f"{what}: dtype {dt} is not supported; expected a numeric or boolean dtype: "
                        f"{SUPPORTED_DTYPES}")
    if dt.kind in "mM" and np.datetime_data(dt)[0] == "generic":
        raise TypeError(f"{what}: dtype {dt} has no time unit; expected one such as {dt.name}[s] or {dt.name}[ns]")
    if (dt.kind == "f" and dt.itemsize > 8) or (dt.kind == "c" and dt.itemsize > 16):
        raise TypeError(f"{what}: dtype {dt} cannot be stored by zarr v3; expected one of {SUPPORTED_DTYPES}")
    return dt.newbyteorder("=") if not dt.isnative else dt


def auto_chunks(shape: tuple[int, ...], itemsize: int, target: int | None = None) -> tuple[int, ...]:
    """Chunks of about ``HUBDASK_CHUNK_MB`` (8 MiB): whole trailing axes, the first axis split first."""
    target = target or config.chunk_target_bytes()
    chunks = list(shape) or []
    for axis in range(len(shape)):
        rest = math.prod(chunks[axis + 1:]) * itemsize
        if rest * chunks[axis] <= target:
            break
        chunks[axis] = max(1, target // max(rest, 1))
        if rest <= target:
            break
    return tuple(max(1, min(c, s)) if s else 1 for c, s in zip(chunks, shape))


def check_chunks(what: str, chunks: Any, shape: tuple[int, ...], dt: np.dtype) -> tuple[int, ...]:
    """``chunks`` (None: automatic) as positive ints, one per axis, each at most the axis length (any
    length on an empty axis: an array made empty to be appended to)."""
    if chunks is None:
        return auto_chunks(shape, dt.itemsize)
    chunks = tuple(chunks) if isinstance(chunks, (tuple, list)) else (chunks,)
    if len(chunks) != len(shape):
        raise ValueError(f"{what}: chunks {chunks} has {len(chunks)} axes but shape {shape} has {len(shape)}")
    if any(isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)) or c <= 0 for c in chunks):
        raise ValueError(f"{what}: chunks {chunks} must be positive integers")
    if any(c > s > 0 for c, s in zip(chunks, shape)):
        raise ValueError(f"{what}: chunks {chunks} are larger than the shape {shape} on some axis; "
                         "expected each chunk length to be at most the axis length")
    return tuple(int(c) for c in chunks)


def check_shape_dtype_chunks(what: str, shape: Any, dtype: Any, chunks: Any) -> tuple:
    """``(shape, dtype, chunks)`` checked (see the three checks above)."""
    shape = check_shape(what, shape)
    dt = check_dtype(what, dtype)
    return shape, dt, check_chunks(what, chunks, shape, dt)


def cast(value: Any, dtype: np.dtype, what: str, label: str = "values") -> np.ndarray:
    """``value`` as an array of ``dtype`` if its values survive the cast (the rule in the module doc),
    else TypeError naming ``what``, ``label`` and the dtype expected."""
    arr = np.asarray(value)
    if isinstance(value, int) and arr.dtype == object:  # a Python int beyond 64 bits
        if dtype.kind not in "fc":
            raise TypeError(f"{what}: {label} would change when cast to the array's dtype {dtype}")
        arr = np.asarray(float(value) if abs(value) < 2**1023 else math.inf)
    if arr.dtype == object or arr.dtype.kind in "OUSV" and dtype.kind not in "OUSV":
        raise TypeError(f"{what}: cannot write {label} of dtype {arr.dtype} into an array of dtype {dtype}")
    if arr.dtype == dtype or np.can_cast(arr.dtype, dtype, "safe"):
        return arr.astype(dtype, copy=False)
    same_kind = np.can_cast(arr.dtype, dtype, "same_kind")
    python_number = not isinstance(value, np.ndarray)
    if not (same_kind or python_number or (arr.dtype.kind in "iub" and dtype.kind in "iuf")):
        raise TypeError(f"{what}: cannot safely cast {label} of dtype {arr.dtype} to the array's dtype {dtype}")
    if dtype.kind in "iub":
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            raise TypeError(f"{what}: NaN or infinity ({label}) cannot be stored in an array of dtype {dtype}")
        with np.errstate(all="ignore"):
            out = arr.astype(dtype)
        if not np.array_equal(out, arr):
            info = np.iinfo(dtype) if dtype.kind in "iu" else None
            rng = f" (range {info.min}..{info.max})" if info else " (False or True, 0 or 1)"
            raise TypeError(f"{what}: {label} would change when cast to the array's dtype {dtype}{rng}")
        return out
    big = isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**1023
    with np.errstate(all="ignore"):
        out = arr.astype(dtype)
    if dtype.kind in "fc" and arr.dtype.kind in "iufc" and np.any(np.isinf(out) & (np.isfinite(arr) | big)):
        info = np.finfo(dtype)
        raise TypeError(f"{what}: {label} would overflow the array's dtype {dtype} (largest finite value {info.max:g}); "
                        "expected values within its range")
    return out


def fill_value(what: str, fill: Any, dt: np.dtype) -> Any:
    """The fill value as a Python scalar of ``dt`` (None: zero), refused if the cast would change it."""
    if fill is None:
        fill = 0
    arr = np.asarray(fill)
    if arr.ndim != 0:
        raise TypeError(f"{what}: fill_value {fill!r} must be one scalar of dtype {dt}")
    try:
        out = cast(fill, dt, what, f"fill_value {fill!r}")
    except TypeError as exc:
        raise TypeError(f"{exc}; expected a fill_value that dtype {dt} holds exactly") from None
    return out.item() if dt.kind not in "mM" else out[()]


def compressors(codecs: Any) -> tuple:
    """zarr bytes-to-bytes codecs for ``codecs`` (``"zstd"``, ``"blosc"``, ``"none"`` or a list), crc32c last."""
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    if codecs is None or codecs == "zstd":
        return (ZstdCodec(level=0), Crc32cCodec())
    if codecs == "lz4":  # blosc's lz4: decodes several times faster than zstd (training reads, docs/ml.md)
        return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec())
    if codecs == "blosc":
        return (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec())
    if codecs == "none":
        return (Crc32cCodec(),)
    if isinstance(codecs, str) or not isinstance(codecs, (list, tuple)):
        raise TypeError(f"codecs {codecs!r}: expected 'zstd', 'blosc', 'none' or a list of zarr bytes-to-bytes codecs")
    return tuple(codecs) + (Crc32cCodec(),)


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """A validated array to create: the arguments of ``zarr.create_array`` plus optional data to write."""

    key: str  # the array's path in a dataset ('' for a single-array dataset)
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    fill_value: Any
    compressors: tuple
    data: Any = None  # numpy / dask / hd.Array / array-like to write after creation, or None
    dims: tuple[str, ...] | None = None  # zarr dimension_names (xarray's dimensions)
    shards: tuple[int, ...] | None = None  # the storage object of a sharded array (zarr's sharding codec)

    @classmethod
    def make(cls, what: str, key: str, shape: Any, dtype: Any, chunks: Any = None, fill: Any = 0,
             codecs: Any = None, dims: Any = None, data: Any = None, shards: Any = None) -> "ArraySpec":
        """Every argument checked, then the zarr metadata built in memory (see ``check``)."""
        shape, dt, chunks = check_shape_dtype_chunks(what, shape, dtype, chunks)
        shards = _shards.check_shards(what, shards, shape, chunks, dt.itemsize)
        try:
            comp = compressors(codecs)
        except TypeError as exc:
            raise TypeError(f"{what}: {exc}") from None
        spec = cls(key, shape, dt, chunks, fill_value(what, fill, dt), comp, data, check_dims(what, dims, len(shape)),
                   shards)
        spec.check(what)
        return spec

    def kwargs(self) -> dict[str, Any]:
        kw = dict(shape=self.shape, chunks=self.chunks, dtype=self.dtype, fill_value=self.fill_value,
                  compressors=self.compressors, zarr_format=3, dimension_names=self.dims)
        if self.shards is not None:
            kw["shards"] = self.shards
        return kw

    def check(self, what: str) -> None:
        """Build the zarr metadata in a throwaway memory store: anything zarr refuses is refused now,
        before the dataset exists, as a TypeError naming ``what``."""
        import zarr
        from zarr.storage import MemoryStore

        try:
            zarr.create_array(MemoryStore(), **self.kwargs())
        except Exception as exc:  # zarr's own refusal, whatever its type: one line, ours
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise TypeError(f"{what}: zarr cannot store an array of dtype {self.dtype} with fill_value "
                            f"{self.fill_value!r} and these codecs ({first}); expected one of {SUPPORTED_DTYPES}"
                            ) from None

    def create(self, store: Any) -> None:
        """Write the array's metadata (a single-array dataset) into ``store``."""
        import zarr

        zarr.create_array(store, **self.kwargs())

    def create_in(self, group: Any) -> None:
        """Add the array to a zarr ``group`` (a dataset of several arrays)."""
        kw = self.kwargs()
        kw.pop("zarr_format")
        group.create_array(self.key, **kw)


_SPEC_KEYS = {"shape", "dtype", "chunks", "shards", "fill_value", "codecs", "dims", "data"}


def check_dims(what: str, dims: Any, ndim: int) -> tuple[str, ...] | None:
    """``dims`` (one name per axis, recorded as zarr ``dimension_names``: xarray's dimensions) or None."""
    if dims is None:
        return None
    dims = (dims,) if isinstance(dims, str) else tuple(dims)
    if len(dims) != ndim or not all(isinstance(d, str) and d for d in dims) or len(set(dims)) != len(dims):
        raise ValueError(f"{what}: dims {dims!r} must be {ndim} distinct non-empty names, one per axis")
    return dims


def array_spec(what: str, key: str, spec: Any) -> ArraySpec:
    """One array of a dataset: ``spec`` is a dict of shape/dtype/chunks/fill_value/codecs[/data], or
    array-like data. Everything is checked here, before any storage is touched."""
    try:
        check_part(key, "array name", key)
    except InvalidNameError:
        raise InvalidNameError(f"{what}: invalid array name {key!r}; expected letters, digits, '.', '_' or '-', "
                               "not empty and not '.' or '..'") from None
    what = f"{what}, array {key!r}"
    if isinstance(spec, dict):
        unknown = set(spec) - _SPEC_KEYS
        if unknown:
            raise TypeError(f"{what}: unknown keys {sorted(unknown)}; expected shape, dtype, chunks, "
                            "shards, fill_value, codecs, dims (or data)")
        data = spec.get("data")
        if "shape" not in spec and data is None:
            raise TypeError(f"{what}: expected dict(shape=..., dtype=...) or array data")
        shape = spec.get("shape", getattr(data, "shape", None))
        dtype = spec.get("dtype", getattr(data, "dtype", "float64"))
        chunks, fill, codecs = spec.get("chunks"), spec.get("fill_value", 0), spec.get("codecs")
        dims, shards = spec.get("dims"), spec.get("shards")
    else:
        dims = None
        data = spec
        if not (hasattr(data, "shape") and hasattr(data, "dtype")):
            data = np.asarray(data)
        shape, dtype, fill, codecs = tuple(data.shape), data.dtype, 0, None
        whole = isinstance(data, HasView) and not data.frozen_view.is_view
        chunks = data.frozen_view.inner_chunks if whole else None
        shards = data.frozen_view.shards if whole else None
    # a dataset's arrays feed training loops, which decode every chunk every epoch: lz4 unless told
    out = ArraySpec.make(what, key, shape, dtype, chunks, fill, "lz4" if codecs is None else codecs, dims, data,
                         shards)
    if data is not None and tuple(data.shape) != out.shape:
        raise ValueError(f"{what}: data has shape {tuple(data.shape)} but the array's shape is {out.shape}")
    return out
