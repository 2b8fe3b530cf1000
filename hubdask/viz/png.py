"""A minimal PNG encoder (zlib only), so pictures need neither Pillow nor matplotlib."""

from __future__ import annotations

import struct
import zlib

import numpy as np

_COLOR_TYPE = {1: 0, 3: 2, 4: 6}  # gray, RGB, RGBA


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode(image: np.ndarray, level: int = 6) -> bytes:
    """PNG bytes of a uint8 image of shape (H, W), (H, W, 3) or (H, W, 4)."""
    img = np.ascontiguousarray(image)
    if img.dtype != np.uint8:
        raise TypeError(f"PNG encoding takes uint8 pixels, got {img.dtype}")
    channels = 1 if img.ndim == 2 else img.shape[2] if img.ndim == 3 else 0
    if channels not in _COLOR_TYPE:
        raise ValueError(f"PNG encoding takes an (H, W), (H, W, 3) or (H, W, 4) image, got shape {img.shape}")
    h, w = img.shape[:2]
    raw = np.zeros((h, 1 + w * channels), np.uint8)  # filter byte 0 (None) per row
    raw[:, 1:] = img.reshape(h, w * channels)
    header = struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPE[channels], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
            + _chunk(b"IEND", b""))
