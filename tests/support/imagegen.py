"""Test images made at test time: distinct synthetic 'photos' and their distorted copies."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def synthetic_photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A reproducible picture with a coloured background, blobs and stripes, unique per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, size=3)
    grad = np.linspace(0, 1, w)[None, :, None] * rng.integers(-120, 120, size=3)[None, None, :]
    arr = np.clip(base[None, None, :] + grad + np.zeros((h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 9))):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        x1, y1 = x0 + int(rng.integers(30, w // 2)), y0 + int(rng.integers(30, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    return img.filter(ImageFilter.GaussianBlur(1.0))


def encode(img: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG" and img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def distorted(img: Image.Image, seed: int = 0) -> bytes:
    """A cropped, slightly brightened, JPEG-recompressed copy: the kind of query a phone sends."""
    rng = np.random.default_rng(seed)
    w, h = img.size
    dx, dy = int(w * rng.uniform(0.03, 0.08)), int(h * rng.uniform(0.03, 0.08))
    crop = img.crop((dx, dy, w - dx, h - dy)).resize((w, h))
    arr = np.clip(np.asarray(crop, dtype=np.float32) * rng.uniform(0.93, 1.07), 0, 255).astype(np.uint8)
    return encode(Image.fromarray(arr, "RGB"), "JPEG", quality=int(rng.integers(60, 80)))
