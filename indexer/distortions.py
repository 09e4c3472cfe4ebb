"""Query-like distorted copies of photos (crop, tilt, light, colour, JPEG), in numpy and Pillow.

Serving code (the build's calibration and quality gate) and the training evaluation make their
distorted queries with this one function, so the figures of both mean the same thing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from embedder.preprocess import IMAGE_SIZE, decode


@dataclass(frozen=True)
class Distortion:
    """Ranges of one query distortion level (each side cropped to a fraction, then the rest)."""

    crop_side: tuple[float, float]
    rotation_degrees: float
    brightness: tuple[float, float]
    contrast: tuple[float, float]
    saturation: tuple[float, float]
    jpeg_quality: tuple[int, int]


DISTORTIONS: dict[str, Distortion] = {
    # A careful re-shot: slight crop and tilt, a little light change, ordinary JPEG.
    "moderate": Distortion((0.7, 0.9), 10, (0.8, 1.2), (0.85, 1.15), (1.0, 1.0), (50, 80)),
    # A phone photo of the dish: tighter crop, more tilt, lighting and white balance off, heavy JPEG.
    "strong": Distortion((0.55, 0.85), 20, (0.7, 1.3), (0.7, 1.3), (0.6, 1.4), (35, 75)),
}


def distort(data: bytes, rng: np.random.Generator, level: str = "moderate") -> bytes:
    """A query-like copy of a photo: crop, rotation, light and colour change, JPEG (see DISTORTIONS).

    The bytes do not depend on any model's input size, so every backbone is queried with the same photos.
    """
    d = DISTORTIONS[level]
    img = decode(data, size=2 * IMAGE_SIZE)
    w, h = img.size
    fw, fh = rng.uniform(*d.crop_side), rng.uniform(*d.crop_side)
    cw, ch = max(1, round(w * fw)), max(1, round(h * fh))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    angle = float(rng.uniform(-d.rotation_degrees, d.rotation_degrees))
    img = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False)
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(*d.brightness)))
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(*d.contrast)))
    img = ImageEnhance.Color(img).enhance(float(rng.uniform(*d.saturation)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(d.jpeg_quality[0], d.jpeg_quality[1] + 1)))
    return buf.getvalue()
