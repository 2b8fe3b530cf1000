"""Images of slices: PNG files (no matplotlib needed for 2-D and color slices) and matplotlib plots."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from hubdask.viz import png, render

MAX_SIDE = 2048  # pixels per side read for a picture; larger slices are strided down before reading
MIN_SIDE = 256  # `hubdask show` enlarges smaller pictures (nearest neighbour) to about this many pixels


def _matplotlib():
    """pyplot (matplotlib picks a non-interactive backend by itself where there is no display)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from None
    return plt


def picture_data(view: Any, max_side: int = MAX_SIDE) -> np.ndarray:
    """The values of a 1-D, 2-D or (H, W, 1|3|4) view, strided to at most ``max_side`` per side *before*
    reading, so only the pixels shown are fetched."""
    shape = tuple(view.shape)
    if not (len(shape) in (1, 2) or (len(shape) == 3 and render.has_channels(shape))):
        name = getattr(view, "name", "the array")
        raise ValueError(f"dataset {name!r}: a picture is a 1-D, 2-D or (H, W, 1|3|4) slice, but this one has shape "
                         f"{shape}; index it further, e.g. [{', '.join(['0'] * (len(shape) - render.picture_ndim(shape)))}]")
    if len(shape) == 1:
        return np.asarray(view)
    return np.asarray(view[render.downsample_index(shape, max_side)])


def to_png(view: Any, path: str | os.PathLike | None = None, *, vmin: float | None = None,
           vmax: float | None = None, cmap: str | None = None, max_side: int = MAX_SIDE,
           min_side: int = 0) -> bytes:
    """PNG bytes of a slice (an hd.Array view or a numpy array); written to ``path`` when given.

    2-D and color slices are encoded directly (one pixel per value; with ``min_side``, e.g. ``MIN_SIDE``,
    smaller pictures are enlarged by a whole factor with nearest-neighbour pixels); a 1-D slice is drawn
    as a line with matplotlib.
    """
    data = picture_data(view, max_side)
    if data.ndim == 1:
        import io

        plt = _matplotlib()
        fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
        _draw(ax, data, getattr(view, "name", ""), vmin, vmax, cmap)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        plt.close(fig)
        out = buf.getvalue()
    else:
        out = png.encode(render.upscale(render.to_image(data, vmin, vmax, cmap), min_side))
    if path is not None:
        with open(path, "wb") as f:
            f.write(out)
    return out


def _draw(ax: Any, data: np.ndarray, title: str, vmin: Any, vmax: Any, cmap: Any, **kw: Any) -> Any:
    if data.ndim == 1:
        ax.plot(np.arange(data.size), np.abs(data) if data.dtype.kind == "c" else data, **kw)
        ax.set_xlabel("index")
        if vmin is not None or vmax is not None:
            ax.set_ylim(vmin, vmax)
    elif data.ndim == 3:
        ax.imshow(render.to_image(data, vmin, vmax), interpolation="nearest", **kw)
    else:
        shown = np.abs(data) if data.dtype.kind == "c" else data
        shown = shown.astype(np.uint8) if shown.dtype == np.bool_ else shown
        im = ax.imshow(shown, vmin=vmin, vmax=vmax, cmap=cmap or ("gray" if data.dtype == np.uint8 else "viridis"),
                       interpolation="nearest", **kw)
        ax.figure.colorbar(im, ax=ax)
    ax.set_title(title)
    return ax


def show(array: Any, index: Any = (), ax: Any = None, *, vmin: float | None = None, vmax: float | None = None,
         cmap: str | None = None, max_side: int = MAX_SIDE, **kwargs: Any) -> Any:
    """Draw ``array[index]`` with matplotlib: a line for 1-D, an image for 2-D (with a colorbar) or
    (H, W, 1|3|4) slices. Returns the matplotlib Axes."""
    view = array[index] if index != () else array
    data = picture_data(view, max_side)
    plt = _matplotlib()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3) if data.ndim == 1 else (5, 5))
    label = index if isinstance(index, tuple) else (index,)
    title = f"{array.name}[{', '.join(_fmt(i) for i in label)}]" if index != () else array.name
    return _draw(ax, data, title, vmin, vmax, cmap, **kwargs)


plot = show


def _fmt(i: Any) -> str:
    if isinstance(i, slice):
        parts = ["" if p is None else str(p) for p in (i.start, i.stop, i.step)]
        return ":".join(parts[:2] if i.step is None else parts)
    return "..." if i is Ellipsis else str(i)
