"""The one preprocessing function: encoded image bytes → 224×224×3 uint8 RGB.

Training, indexing and serving all call :func:`preprocess`, so a photo becomes the same tensor
wherever it goes. Steps, in order:

1. **Decode** with Pillow. Anything Pillow cannot identify raises :class:`ImageDecodeError`.
2. **Pixel limit** (default 40 MP, checked from the header before any pixel is decoded) against
   decompression bombs.
3. **Draft**: JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still yields at
   least ``size`` pixels on both sides — about 3× faster for phone photos, same result everywhere.
4. **First frame** of animated images.
5. **Decoding budget**: the decode's peak memory, estimated from the header (:func:`decode_cost`), is
   reserved from the process-wide :data:`embedder.memory.decode_budget` (waiting for its turn, or
   :class:`~embedder.memory.DecodeBudgetBusy`); one larger than the whole budget is
   :class:`ImageTooLargeError`. Pixels are decoded at the file's own depth (1-bit, palette, 8/16-bit grey).
6. **EXIF orientation** applied (``ImageOps.exif_transpose``, only when the tag asks for a turn).
7. **Mode → RGB**: 16-bit and 32-bit greyscale are scaled to 8 bits (not clipped), transparency
   (RGBA, LA, P with a transparent colour) is composited onto white, CMYK/YCbCr/L/1/P converted.
8. **Resize policy**: the whole image is resized to ``size × size`` (no crop, aspect ratio not kept,
   as Keras' ``load_img(target_size=...)`` did in the seed notebooks) with bilinear filtering and
   Pillow's anti-aliasing reduction for large downscales (``reducing_gap=3``).

Steps 7 and 8 run strip by strip for large images (:func:`_resize_to_rgb`): each strip of about
:data:`STRIP_PIXELS` is converted and at once box-reduced by the whole factor Pillow's resize would
first reduce by, so the full-size RGB copy never exists — and the tensor is exactly the whole-image one.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from embedder.memory import decode_budget

IMAGE_SIZE = 224
DEFAULT_MAX_PIXELS = 40_000_000

# We enforce our own limit before decoding; Pillow's own check would only warn below 2x its limit.
Image.MAX_IMAGE_PIXELS = None


class ImageDecodeError(ValueError):
    """The bytes are not an image we can use; the message says why."""


class ImageTooLargeError(ImageDecodeError):
    """The image is over a size limit (pixels, or memory its decode would need); the message says which."""


_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = frozenset(range(2, 9))
_REDUCING_GAP = 3.0
# Conversion to RGB runs over horizontal strips of about this many pixels (a few MB each).
STRIP_PIXELS = 1 << 20
# Strips, their conversion intermediates and the reduced image, beside the decoded pixels.
_WORKING_BYTES = 32 << 20


def _pixel_bytes(mode: str) -> int:
    """Bytes per pixel in Pillow's memory: 1 for 1/L/P, 2 for 16-bit grey, 4 for everything else."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation, read without decoding pixels (PNG keeps it in info once its header is read)."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # PngImageFile.getexif() would decode the whole image to look further
    try:
        value = img.getexif().get(_ORIENTATION, 1)
    except Exception:  # garbage EXIF is ignored, as exif_transpose ignores it
        return 1
    return value if isinstance(value, int) else 1


def decode_cost(img: Image.Image, full_size: tuple[int, int]) -> int:
    """Bytes a decode of the opened (and drafted) ``img`` holds at its peak, from the header alone."""
    width, height = img.size
    native = width * height * _pixel_bytes(img.mode)
    cost = native + _WORKING_BYTES
    if _orientation(img) in _TRANSPOSED_ORIENTATIONS:
        cost += native  # the transposed copy
    if img.format in ("JPEG", "MPO") and ("progressive" in img.info or "progression" in img.info):
        # libjpeg buffers every DCT coefficient (2 bytes) of a progressive scan at full resolution.
        layers = getattr(img, "layer", None) or [("", 1, 1, 0)] * 3
        h_max = max(h for _, h, _, _ in layers)
        v_max = max(v for _, _, v, _ in layers)
        share = sum(h * v for _, h, v, _ in layers) / (h_max * v_max)
        cost += int(full_size[0] * full_size[1] * share * 2)
    elif img.format == "WEBP":
        # Pillow decodes through libwebp's animation decoder: two RGBA canvases and a bytes copy of one.
        cost += width * height * 4 * 3
    return cost


def over_budget(img: Image.Image, full_size: tuple[int, int]) -> str | None:
    """Why the opened ``img`` is refused because its decode needs more than the whole budget, or None."""
    cost = decode_cost(img, full_size)
    if cost <= decode_budget.limit_bytes:
        return None
    return (
        f"image too large: decoding this {full_size[0]}x{full_size[1]} {img.format} needs about "
        f"{cost >> 20} MiB, more than the whole decoding budget of {decode_budget.limit_bytes >> 20} MiB"
    )


def _rgb_converter(img: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """A function turning any strip of ``img`` into RGB exactly as the whole image would be converted.

    Scaling of 32-bit and float images depends on the whole image's range, so that is measured first.
    """
    mode = img.mode
    if mode == "RGB":
        return lambda strip: strip
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):

        def scale_16(strip: Image.Image) -> Image.Image:
            # round(v / 65535 * 255) = floor(v / 257 + 1/2), in integers (exact, and 4x faster than floats)
            arr = np.asarray(strip).astype(np.uint32)
            return Image.fromarray(((arr * 2 + 257) // 514).astype(np.uint8), mode="L").convert("RGB")

        return scale_16
    if mode == "I":
        _, high = img.getextrema()
        high = max(float(high), 0.0)  # type: ignore[arg-type]
        top = high if high > 65535 else 65535.0 if high > 255 else 255.0

        def scale_int(strip: Image.Image) -> Image.Image:
            arr = np.asarray(strip, dtype=np.float64)
            grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
            return Image.fromarray(grey, mode="L").convert("RGB")

        return scale_int
    if mode == "F":
        lows, highs = [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for strip in _strips(img, 1):
                arr = np.asarray(strip, dtype=np.float64)
                lows.append(np.nanmin(arr))
                highs.append(np.nanmax(arr))
            lo, hi = float(np.nanmin(lows)), float(np.nanmax(highs))

        def scale_float(strip: Image.Image) -> Image.Image:
            arr = np.asarray(strip, dtype=np.float64)
            scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
            return Image.fromarray(np.nan_to_num(scaled).astype(np.uint8), mode="L").convert("RGB")

        return scale_float
    if mode in ("RGBA", "LA", "RGBa", "La", "PA") or (mode == "P" and "transparency" in img.info):

        def on_white(strip: Image.Image) -> Image.Image:
            rgba = strip.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")

        return on_white
    return lambda strip: strip.convert("RGB")


def _strips(img: Image.Image, multiple: int) -> Iterator[Image.Image]:
    """Horizontal strips of about :data:`STRIP_PIXELS`, each a whole number of ``multiple`` rows high."""
    width, height = img.size
    rows = max(multiple, STRIP_PIXELS // max(width, 1) // multiple * multiple)
    if rows >= height:
        yield img
        return
    for top in range(0, height, rows):
        yield img.crop((0, top, width, min(height, top + rows)))


def _to_rgb(img: Image.Image) -> Image.Image:
    convert = _rgb_converter(img)
    if img.mode == "RGB":
        return img
    strips = [convert(strip) for strip in _strips(img, 1)]
    if len(strips) == 1:
        return strips[0]
    out = Image.new("RGB", img.size)
    top = 0
    for strip in strips:
        out.paste(strip, (0, top))
        top += strip.height
    return out


def _resize_to_rgb(img: Image.Image, size: int) -> Image.Image:
    """Exactly ``_to_rgb(img).resize((size, size), BILINEAR, reducing_gap=3.0)``, strip by strip.

    Pillow's resize first box-reduces by whole factors and then resamples the rest; the reduction is done
    here on strips whose height is a multiple of the factor, right after each strip's conversion to RGB,
    so the full-size RGB image never exists.
    """
    width, height = img.size
    factor_x = int(width / size / _REDUCING_GAP) or 1
    factor_y = int(height / size / _REDUCING_GAP) or 1
    if factor_x == 1 and factor_y == 1:
        return _to_rgb(img).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=_REDUCING_GAP)
    convert = _rgb_converter(img)
    reduced = Image.new("RGB", (-(-width // factor_x), -(-height // factor_y)))
    top = 0
    for strip in _strips(img, factor_y):
        part = convert(strip).reduce((factor_x, factor_y))
        reduced.paste(part, (0, top))
        top += part.height
    box = (0.0, 0.0, width / factor_x, height / factor_y)
    return reduced.resize((size, size), Image.Resampling.BILINEAR, box=box)


def open_image(data: bytes, size: int, max_pixels: int) -> tuple[Image.Image, tuple[int, int]]:
    """Open, check the pixel limit from the header, draft JPEGs towards ``size``, pick the first frame."""
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
        raise ImageTooLargeError(
            f"image too large: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
        )
    try:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))
        if getattr(img, "is_animated", False):
            img.seek(0)
    except Exception as exc:
        raise ImageDecodeError(f"cannot decode {img.format or 'image'}: {exc}") from None
    return img, (width, height)


def _load_upright(img: Image.Image) -> Image.Image:
    """Decode the pixels (at the file's own bit depth) and apply the EXIF orientation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img.load()
        if _orientation(img) not in _TRANSPOSED_ORIENTATIONS:
            return img  # exif_transpose would only copy it
        upright: Image.Image = ImageOps.exif_transpose(img)
    return upright


def decode(data: bytes, *, size: int = IMAGE_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode, check, orient and convert to RGB at full (drafted) size; JPEGs are drafted towards ``size``."""
    img, _ = open_image(data, size, max_pixels)
    try:
        return _to_rgb(_load_upright(img))
    except ImageDecodeError:
        raise
    except Exception as exc:  # truncated data, bad chunks, unsupported codecs
        raise ImageDecodeError(f"cannot decode {img.format or 'image'}: {exc}") from None


def preprocess(data: bytes, *, size: int = IMAGE_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes → ``(size, size, 3)`` uint8 RGB array (see the module docstring)."""
    img, full_size = open_image(data, size, max_pixels)
    cost = decode_cost(img, full_size)
    refusal = over_budget(img, full_size)
    if refusal:
        raise ImageTooLargeError(refusal)
    with decode_budget.reserve(cost):
        try:
            resized = _resize_to_rgb(_load_upright(img), size)
        except ImageDecodeError:
            raise
        except Exception as exc:  # truncated data, bad chunks, unsupported codecs
            raise ImageDecodeError(f"cannot decode {img.format or 'image'}: {exc}") from None
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
