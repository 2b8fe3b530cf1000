"""Jupyter's rich repr of arrays: a summary table and a thumbnail read from at most one chunk."""

from __future__ import annotations

import base64
import html
from typing import Any

import numpy as np

from hubdask import grid
from hubdask.view import view_of
from hubdask.viz import png, render
from hubdask.viz.summary import Summary, human_bytes, summarize

THUMB_SIDE = 128
REPR_MAX_SIZED = 1000  # chunks whose stored size the repr asks for; beyond, "not counted"


def _first_chunk_view(view: Any) -> Any:
    """The part of ``view`` that lies in the storage chunk holding its first element."""
    index = []
    for a, c in zip((a for a in view_of(view).axes if isinstance(a, grid.Span)), view.chunks):
        if a.n == 0:
            index.append(slice(0, 0))
            continue
        lo = (a.start // c) * c
        stop = lo + c if a.step > 0 else lo - 1
        index.append(slice(0, max(1, len(range(a.start, stop, a.step)))))
    return view[tuple(index)]


def thumbnail(array: Any, side: int = THUMB_SIDE) -> np.ndarray | None:
    """A uint8 picture of the array's first slice (first index of the leading axes), read from at most
    one storage chunk and strided to at most ``side`` pixels; None if the array is not picture-like."""
    if array.ndim < 2 or min(array.shape, default=0) == 0:
        return None
    view = array[render.leading_index(array.shape)]
    if render.is_color(view.shape) and view.chunks[-1] < view.shape[-1]:
        view = view[..., 0]  # channels split across chunks: one chunk holds one channel
    part = _first_chunk_view(view)
    if min(part.shape[:2]) < 2:
        return None
    data = part.read()
    step = render.stride_for(data.shape, side)
    data = data[::step, ::step]
    return render.to_image(data)


def _img_tag(image: np.ndarray) -> str:
    data = base64.b64encode(png.encode(image)).decode()
    h, w = image.shape[:2]
    scale = max(1, min(4, THUMB_SIDE // max(h, w, 1)))
    return (f'<img src="data:image/png;base64,{data}" width="{w * scale}" height="{h * scale}" '
            f'style="image-rendering: pixelated; border: 1px solid #ccc" alt="first chunk of the first slice"/>')


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return " × ".join(f"{s:,}" for s in shape) if shape else "()"


def _thumb_html(array: Any) -> str:
    try:
        thumb = thumbnail(array)
    except Exception as exc:  # a repr must never fail: say why there is no picture
        return html.escape(f"(no thumbnail: {type(exc).__name__}: {exc})")
    return _img_tag(thumb) if thumb is not None else ""


def _table(rows: list[tuple[str, str]]) -> str:
    e = html.escape
    return "<table>" + "".join(f"<tr><th style='text-align:left;padding-right:1em'>{e(k)}</th>"
                               f"<td style='text-align:left'>{e(str(v))}</td></tr>" for k, v in rows) + "</table>"


def _version_rows(s: Summary) -> list[tuple[str, str]]:
    rows = [
        ("root", s.root),
        ("branch" if s.branch else "commit", s.branch or s.commit or ""),
        ("last commit", "" if s.last_commit is None else f"{s.last_commit.id} {s.last_commit.message}"),
        ("branches", ", ".join(s.branches)),
        ("tags", ", ".join(s.tags) or "none"),
    ]
    if s.branch and s.uncommitted:
        rows.append(("uncommitted", f"{s.uncommitted:,} chunks"))
    return rows


def _stored(s: Summary) -> str:
    if s.stored_bytes is not None:
        return human_bytes(s.stored_bytes)
    return f"not counted here ({s.written:,} chunks): hubdask info counts it"


def repr_html(obj: Any) -> str:
    """The HTML Jupyter shows for an array or a dataset: what it is, where it lives (no credentials),
    its version, what it holds, and thumbnails of picture-like arrays."""
    if not hasattr(obj, "shape") and hasattr(obj, "arrays"):
        return dataset_html(obj)
    array = obj
    s = summarize(array, max_sized=REPR_MAX_SIZED)
    view = array.is_view
    rows = [
        ("shape", _fmt_shape(array.shape) + ("" if not view else f" (view of {_fmt_shape(s.shape)})")
         + ("" if s.committed_shape is None else f" (resized; {_fmt_shape(s.committed_shape)} at the last commit)")),
        ("dtype", str(s.dtype)),
        ("chunks", _fmt_shape(array.chunks) + ("" if not view or array.chunks == s.chunks
                                                else f" (stored array: {_fmt_shape(s.chunks)})")),
        *([("shards", _fmt_shape(s.shards) + " (one stored object each)")] if s.shards else []),
        ("stored chunk grid" if view else "chunk grid",
         f"{_fmt_shape(s.grid)} = {s.total_chunks:,} chunks, {s.written:,} written"),
        ("logical size", human_bytes(s.logical_bytes)),
        ("stored size", _stored(s)),
    ] + _version_rows(s)
    return (f"<div class='hubdask-array'><b>hubdask.Array</b> <code>{html.escape(array.name)}</code>"
            f"<div style='display:flex;gap:1.5em;align-items:flex-start'>{_table(rows)}"
            f"<div>{_thumb_html(array)}</div></div></div>")


def dataset_html(ds: Any, max_thumbs: int = 4) -> str:
    """A dataset: its version rows, then one row per array with a thumbnail for the first few."""
    e = html.escape
    arrays = ds.arrays
    head = None
    cells = []
    for k, (key, a) in enumerate(arrays.items()):
        s = summarize(a, max_sized=REPR_MAX_SIZED // max(1, len(arrays)))
        head = head or s
        pic = _thumb_html(a) if k < max_thumbs else ""
        values = (f"<code>{e(key)}</code>", e(_fmt_shape(a.shape)), e(str(a.dtype)), e(_fmt_shape(a.chunks)),
                  f"{s.written:,} / {s.total_chunks:,}", e(human_bytes(s.logical_bytes)), e(_stored(s)), pic)
        cells.append("<tr>" + "".join(f"<td style='text-align:left;padding-right:1em'>{v}</td>" for v in values)
                     + "</tr>")
    header = "".join(f"<th style='text-align:left;padding-right:1em'>{h}</th>" for h in
                     ("array", "shape", "dtype", "chunks", "chunks written", "logical", "stored", ""))
    version = _table(_version_rows(head)) if head is not None else ""
    return (f"<div class='hubdask-dataset'><b>hubdask.Dataset</b> <code>{e(ds.name)}</code>{version}"
            f"<table><tr>{header}</tr>{''.join(cells)}</table></div>")
