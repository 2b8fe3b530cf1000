"""Turn array slices into pictures: which axes form the image, value scaling, colormaps, histograms.

An *image-like* slice is (H, W) or (H, W, C) with C in 1 (gray, as MNIST-style arrays store it), 3 or 4
(RGB, RGBA). uint8 images and uint8 or boolean gray slices are shown as they are; every other dtype is scaled to its value range (or
``vmin``/``vmax``) and colored with a colormap (viridis by default, ``gray`` on request).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# viridis sampled at 17 points (matplotlib's data), interpolated linearly: no matplotlib needed.
_VIRIDIS = np.array([
    (68, 1, 84), (72, 24, 106), (71, 45, 123), (66, 64, 134), (59, 82, 139), (51, 99, 141), (44, 114, 142),
    (38, 130, 142), (33, 145, 140), (31, 160, 136), (40, 174, 128), (63, 188, 115), (94, 201, 98),
    (132, 212, 75), (173, 220, 48), (216, 226, 25), (253, 231, 37)], dtype=np.float64)
CMAPS = ("viridis", "gray")


def _lut(cmap: str) -> np.ndarray:
    x = np.linspace(0, 1, 256)
    if cmap == "gray":
        return np.repeat((x * 255).round().astype(np.uint8)[:, None], 3, axis=1)
    if cmap == "viridis":
        at = np.linspace(0, 1, len(_VIRIDIS))
        return np.stack([np.interp(x, at, _VIRIDIS[:, k]) for k in range(3)], axis=1).round().astype(np.uint8)
    raise ValueError(f"unknown colormap {cmap!r}; expected one of {', '.join(CMAPS)}")


def is_color(shape: tuple[int, ...]) -> bool:
    """Whether the trailing axis of ``shape`` is color channels (an (H, W, 3|4) picture)."""
    return len(shape) >= 3 and shape[-1] in (3, 4)


def has_channels(shape: tuple[int, ...]) -> bool:
    """Whether the trailing axis of ``shape`` is channels: an (H, W, 1|3|4) picture."""
    return len(shape) >= 3 and shape[-1] in (1, 3, 4)


def picture_ndim(shape: tuple[int, ...]) -> int:
    """How many trailing axes of ``shape`` form one picture: 3 for (.., H, W, 1|3|4), else up to 2."""
    return 3 if has_channels(shape) else min(len(shape), 2)


def leading_index(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Zeros for the axes before the picture: ``view[leading_index(view.shape)]`` is one picture."""
    return (0,) * (len(shape) - picture_ndim(shape))


def stride_for(shape: tuple[int, ...], max_side: int) -> int:
    """The step that brings the picture's larger side (H or W) to at most ``max_side`` pixels."""
    sides = shape[:2] if has_channels(shape) or len(shape) == 2 else shape[:1]
    return max(1, math.ceil(max(sides, default=1) / max_side))


def downsample_index(shape: tuple[int, ...], max_side: int) -> tuple[slice, ...]:
    """A strided index of a picture-shaped view that keeps at most ``max_side`` pixels per side."""
    step = stride_for(shape, max_side)
    n = 2 if has_channels(shape) or len(shape) == 2 else len(shape)
    return (slice(None, None, step),) * n


def value_range(data: np.ndarray) -> tuple[float, float]:
    """(min, max) over finite values; (0, 0) when there are none."""
    if data.dtype.kind == "c":
        data = np.abs(data)
    if data.size == 0:
        return 0.0, 0.0
    if data.dtype.kind == "f":
        finite = data[np.isfinite(data)]
        if finite.size == 0:
            return 0.0, 0.0
        return float(finite.min()), float(finite.max())
    return float(data.min()), float(data.max())


def _scale(data: np.ndarray, vmin: float | None, vmax: float | None) -> np.ndarray:
    """Values mapped to [0, 1] (NaN stays NaN)."""
    data = np.abs(data) if data.dtype.kind == "c" else data
    lo, hi = value_range(data)
    lo = lo if vmin is None else vmin
    hi = hi if vmax is None else vmax
    out = data.astype(np.float64)
    if hi > lo:
        out = (out - lo) / (hi - lo)
    else:
        out = np.where(np.isnan(out), np.nan, 0.5 if data.size and hi != 0 else 0.0)
    return np.clip(out, 0, 1)


def upscale(image: np.ndarray, min_side: int) -> np.ndarray:
    """``image`` enlarged by a whole factor with nearest-neighbour pixels so that its larger side reaches
    about ``min_side`` (a 28x28 digit becomes a 252x252 picture of sharp squares); large ones unchanged."""
    h, w = image.shape[:2]
    k = min_side // max(h, w, 1)
    if k <= 1:
        return image
    return np.repeat(np.repeat(image, k, axis=0), k, axis=1)


def to_image(data: Any, vmin: float | None = None, vmax: float | None = None, cmap: str | None = None) -> np.ndarray:
    """A uint8 picture of a 1-D, 2-D or (H, W, 1|3|4) slice: (H, W), (H, W, 3) or (H, W, 4)."""
    data = np.asarray(data)
    if cmap is not None and cmap not in CMAPS:
        raise ValueError(f"unknown colormap {cmap!r}; expected one of {', '.join(CMAPS)}")
    if data.ndim == 1:
        data = data[None, :]
    if data.ndim == 3 and data.shape[-1] == 1:  # one channel: a gray picture
        data = data[..., 0]
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        if data.dtype == np.uint8 and vmin is None and vmax is None:
            return data
        if data.dtype == np.bool_:
            return data.astype(np.uint8) * 255
        if data.dtype.kind == "f" and vmin is None and vmax is None:
            lo, hi = value_range(data)
            if lo >= 0 and hi <= 1:  # float images in [0, 1], as matplotlib takes them
                vmin, vmax = 0.0, 1.0
        return np.nan_to_num(_scale(data, vmin, vmax) * 255).round().astype(np.uint8)
    if data.ndim != 2:
        raise ValueError(f"a picture is a 1-D, 2-D or (H, W, 1|3|4) slice; this slice has shape {data.shape}: "
                         "index it down further, e.g. NAME[0]")
    if cmap in (None, "gray") and vmin is None and vmax is None:
        if data.dtype == np.uint8:
            return data
        if data.dtype == np.bool_:
            return data.astype(np.uint8) * 255
    scaled = _scale(data, vmin, vmax)
    idx = np.nan_to_num(scaled * 255).round().astype(np.uint8)
    return _lut(cmap or "viridis")[idx]


@dataclass(frozen=True)
class Stats:
    """Value range and histogram of a slice (finite values; complex as magnitude)."""

    min: float
    max: float
    mean: float
    nan: int
    counts: list[int]
    edges: list[float]

    def to_dict(self) -> dict:
        return {"min": self.min, "max": self.max, "mean": self.mean, "nan": self.nan, "counts": self.counts,
                "edges": self.edges}


def stats(data: np.ndarray, bins: int = 64) -> Stats:
    """Min, max, mean, NaN count and a ``bins``-bin histogram of ``data``."""
    data = np.abs(data) if data.dtype.kind == "c" else np.asarray(data)
    nan = int(np.isnan(data).sum()) if data.dtype.kind == "f" else 0
    values = data[np.isfinite(data)] if data.dtype.kind == "f" else data.ravel()
    if values.size == 0:
        return Stats(0.0, 0.0, 0.0, nan, [0] * bins, list(np.linspace(0, 1, bins + 1)))
    values = values.astype(np.float64) if values.dtype.kind == "b" else values
    lo, hi = float(values.min()), float(values.max())
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi) if hi > lo else (lo - 0.5, hi + 0.5))
    return Stats(lo, hi, float(values.mean(dtype=np.float64)), nan, counts.tolist(), edges.tolist())
