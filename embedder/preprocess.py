"""The one preprocessing function: encoded image bytes → 224×224×3 uint8 RGB.

Training, indexing and serving all call :func:`preprocess`, so a photo becomes the same tensor
wherever it goes. Steps, in order:

1. **Decode** with Pillow. Anything Pillow cannot identify raises :class:`ImageDecodeError`.
2. **Pixel limit** (default 40 MP, checked from the header before any pixel is decoded) against
   decompression bombs.
3. **Draft**: JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still yields at
   least ``size`` pixels on both sides — about 3× faster for phone photos, same result everywhere.
4. **First frame** of animated images.
5. **EXIF orientation** applied (``ImageOps.exif_transpose``).
6. **Mode → RGB**: 16-bit and 32-bit greyscale are scaled to 8 bits (not clipped), transparency
   (RGBA, LA, P with a transparent colour) is composited onto white, CMYK/YCbCr/L/1/P converted.
7. **Resize policy**: the whole image is resized to ``size × size`` (no crop, aspect ratio not kept,
   as Keras' ``load_img(target_size=...)`` did in the seed notebooks) with bilinear filtering and
   Pillow's anti-aliasing reduction for large downscales.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SIZE = 224
DEFAULT_MAX_PIXELS = 40_000_000

# We enforce our own limit before decoding; Pillow's own check would only warn below 2x its limit.
Image.MAX_IMAGE_PIXELS = None


class ImageDecodeError(ValueError):
    """The bytes are not an image we can use; the message says why."""


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if mode == "I" and arr.max(initial=0) > 65535:
            top = float(arr.max())
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.nan_to_num(scaled).astype(np.uint8), mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode(data: bytes, *, size: int = IMAGE_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode, check, orient and convert to RGB; JPEGs are drafted towards ``size``."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image Pillow can identify") from None
    except Exception as exc:  # malformed headers raise many different exception types
        raise ImageDecodeError(f"cannot read image header: {exc}") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image too large: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
        )
    try:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))
        if getattr(img, "is_animated", False):
            img.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
            upright: Image.Image = ImageOps.exif_transpose(img)
        return _to_rgb(upright)
    except ImageDecodeError:
        raise
    except Exception as exc:  # truncated data, bad chunks, unsupported codecs
        raise ImageDecodeError(f"cannot decode {img.format or 'image'}: {exc}") from None


def preprocess(data: bytes, *, size: int = IMAGE_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes → ``(size, size, 3)`` uint8 RGB array (see the module docstring)."""
    img = decode(data, size=size, max_pixels=max_pixels)
    resized = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.uint8).copy()


def preprocess_file(
    path: str | Path, *, size: int = IMAGE_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Like :func:`preprocess`, reading a file; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    try:
        return preprocess(data, size=size, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from None
