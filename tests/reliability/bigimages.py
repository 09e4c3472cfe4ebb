"""Uploads at the pixel limit (40 MP) in every kind the memory figure covers, each far under the byte limit.

Smooth content (gradients and a few flat shapes) keeps the files small while their decoded pixels are as many
as the gateway accepts: what an attacker sends to make a service hold as much memory per request as it can.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT = 8000, 5000  # 40,000,000 pixels: exactly the default limit
KINDS = ("png-1bit", "png-palette", "png-16bit", "png-rgb48", "jpeg-progressive", "webp", "tiff", "gif")


def _shapes(img: Image.Image, fills: list[object]) -> Image.Image:
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for i, fill in enumerate(fills):
        x, y = (i * 997) % (w - w // 4), (i * 613) % (h - h // 4)
        draw.ellipse((x, y, x + w // 5, y + h // 5), fill=fill)  # type: ignore[arg-type]
    return img


def _gradient_rgb(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = x.astype(np.uint8)
    rgb[..., 1] = y.astype(np.uint8)
    rgb[..., 2] = 128
    return _shapes(Image.fromarray(rgb, "RGB"), [(200, 40, 40), (40, 160, 60), (250, 220, 90)])


def _palette(width: int, height: int) -> Image.Image:
    """A 64-colour palette image: vertical bands of a gradient and a few shapes."""
    index = (np.arange(width, dtype=np.int64) * 64 // width).astype(np.uint8)[None, :].repeat(height, 0)
    img = Image.fromarray(index, "L").convert("P")
    img.putpalette([c for i in range(256) for c in (i * 4 % 256, 255 - i * 4 % 256, 128)])
    return _shapes(img, [3, 40, 60])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return struct.pack(">I", len(data)) + kind + data + crc


def _png_rgb48(width: int, height: int) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one), rows filtered with Sub so it compresses."""
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    # Filter type 1 (Sub): every byte is the difference to the byte 6 to its left -> a constant row.
    first = np.array([0x10, 0x00, 0x80, 0x00, 0xF0, 0x00], dtype=np.uint8)
    row = np.zeros(width * 6, dtype=np.uint8)
    row[:6] = first
    row[6::6] = 1  # red rises slowly along the row
    line = b"\x01" + row.tobytes()
    body = zlib.compress(line * height, 6)
    return b"".join(
        (b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", ihdr), _png_chunk(b"IDAT", body), _png_chunk(b"IEND", b""))
    )


def big_upload(kind: str, width: int = WIDTH, height: int = HEIGHT) -> bytes:
    """One upload of ``kind`` with ``width × height`` pixels."""
    out = io.BytesIO()
    if kind == "png-1bit":
        img = _shapes(Image.new("1", (width, height), 1), [0, 1, 0])
        img.save(out, "PNG", optimize=False)
    elif kind == "png-palette":
        _palette(width, height).save(out, "PNG")
    elif kind == "png-16bit":
        grey = np.linspace(0, 65535, width, dtype=np.float64)[None, :].repeat(height, 0).astype(np.uint16)
        _shapes(Image.fromarray(grey), [20000, 60000]).save(out, "PNG")
    elif kind == "png-rgb48":
        return _png_rgb48(width, height)
    elif kind == "jpeg-progressive":
        _gradient_rgb(width, height).save(out, "JPEG", quality=70, progressive=True)
    elif kind == "webp":
        _gradient_rgb(width, height).save(out, "WEBP", quality=50, method=0)
    elif kind == "tiff":
        flat = _shapes(Image.new("RGB", (width, height), (90, 140, 60)), [(200, 40, 40), (250, 220, 90)])
        flat.save(out, "TIFF", compression="tiff_adobe_deflate")
    elif kind == "gif":
        flat = _shapes(Image.new("P", (width, height), 5), [3, 40, 60])  # LZW packs only runs well
        flat.putpalette([c for i in range(256) for c in (i, 255 - i, 90)])
        flat.save(out, "GIF")
    else:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    return out.getvalue()
