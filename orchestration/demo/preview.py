"""PNG previews of images with numpy and zlib only (no matplotlib, no Pillow).

A PNG is an 8-byte signature and chunks (length, type, data, CRC-32 of type + data): ``IHDR``
(width, height, bit depth 8, colour type 0 = grayscale), ``IDAT`` (zlib-compressed scanlines,
each prefixed by its filter byte; filter 0 = none) and ``IEND``. Float images are mapped to 8 bits
with an asinh stretch (Lupton et al. 2004): linear near the sky, logarithmic for bright stars.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any

import numpy as np

__all__ = ["asinh_stretch", "write_png", "write_preview"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def asinh_stretch(image: Any, *, softening: float | None = None, maximum: float | None = None) -> np.ndarray:
    """uint8 image: ``asinh((x - sky) / softening) / asinh((max - sky) / softening)``; NaN -> 0.

    ``sky`` is the median; ``softening`` defaults to twice the robust noise (from the inter-
    quartile range) and ``maximum`` to the 99.9th percentile of the finite pixels.
    """
    data = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(data)
    out = np.zeros(data.shape, np.uint8)
    if not finite.any():
        return out
    values = data[finite]
    q25, sky, q75, top = np.percentile(values, [25, 50, 75, 99.9])
    noise = (q75 - q25) / 1.349
    soft = softening if softening is not None else max(2.0 * noise, 1e-12)
    high = maximum if maximum is not None else top
    scale = np.arcsinh(max(high - sky, soft) / soft)
    stretched = np.arcsinh((values - sky) / soft) / scale
    out[finite] = np.clip(np.rint(stretched * 255.0), 0, 255).astype(np.uint8)
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(array: Any, path: str | os.PathLike[str], *, flip: bool = True) -> str:
    """Write a 2-D array as an 8-bit grayscale PNG; returns the path.

    A ``uint8`` array is written as is; anything else goes through `asinh_stretch` first. With
    ``flip`` (default) row 0 is at the bottom, so an image with y towards the north has north up.
    """
    data = np.asarray(array)
    if data.ndim != 2 or data.size == 0:
        raise ValueError(f"write_png needs a non-empty 2-D array, got shape {data.shape}")
    pixels = data if data.dtype == np.uint8 else asinh_stretch(data)
    if flip:
        pixels = pixels[::-1]
    height, width = pixels.shape
    raw = np.zeros((height, width + 1), np.uint8)  # filter byte 0 then the row
    raw[:, 1:] = pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    blob = PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) \
        + _chunk(b"IEND", b"")
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)
    return path


def write_preview(exposure: Any, path: str | os.PathLike[str]) -> str:
    """A PNG preview of an exposure's image (or of an array), asinh-stretched, north up."""
    image = getattr(exposure, "image", exposure)
    return write_png(np.asarray(image, dtype=np.float64), path)
