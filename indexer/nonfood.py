"""Pictures of things that are not food: the match verdict's reference bank and its test set.

Eight generated kinds, each drawn from a seed with numpy and Pillow only: noise, flat colours,
gradients, text pages, screenshots, textures (fractal noise through stone, sand, wood and fabric
palettes), patterns (stripes, checks, grids, dots) and clip-art shapes. Two disjoint families:

* the **reference bank** (:func:`reference_bank`, seeds 0…) that a build embeds and stores with its
  calibration (:mod:`indexer.calibration`); a build checks itself on seeds 10 000… (:mod:`indexer.quality`);
* the **test set** (:func:`nonfood_test_set`) the verdict's acceptance figures use (bench/verdict.py, the
  training evaluation, the tests): generated pictures of seeds 50 000… and real non-food photos bundled
  with scikit-image (no download; never generated or stored here). scikit-image comes with the
  ``train`` extra; without it the test set is the generated part only.
"""

from __future__ import annotations

import io
import logging
import string
import warnings

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("noise", "flat", "gradient", "text", "screenshot", "texture", "pattern", "shapes")
_SIZE = 256
BANK_SIZE = 48  # generated pictures stored with a calibration (6 of each kind)
BANK_SEED = 0
TEST_SEED = 50_000
# Real non-food photos bundled with scikit-image: people, animals, objects, textures, text (not coffee).
NATURAL = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
CROPS = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5), (0.25, 0.25))  # half-size crops, by corner


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = (int(c) for c in rng.integers(0, 256, size=3))
    return r, g, b


def _noise(rng: np.random.Generator) -> np.ndarray:
    style = int(rng.integers(0, 4))
    if style == 0:  # uniform colour noise
        return rng.integers(0, 256, size=(_SIZE, _SIZE, 3)).astype(np.float32)
    if style == 1:  # grey noise
        return np.repeat(rng.integers(0, 256, size=(_SIZE, _SIZE, 1)), 3, axis=2).astype(np.float32)
    if style == 2:  # Gaussian noise around a colour
        return rng.normal(rng.uniform(40, 215, size=3), rng.uniform(10, 80), size=(_SIZE, _SIZE, 3))
    cell = int(rng.choice([4, 8, 16, 32]))  # blocky noise, nearest-neighbour upscaled
    small = rng.integers(0, 256, size=(_SIZE // cell, _SIZE // cell, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((_SIZE, _SIZE), Image.Resampling.NEAREST), np.float32)


def _flat(rng: np.random.Generator) -> np.ndarray:
    arr = np.zeros((_SIZE, _SIZE, 3), np.float32) + np.asarray(_colour(rng), np.float32)
    return arr + rng.normal(0, rng.uniform(0, 3), size=arr.shape)  # sensor grain


def _gradient(rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:_SIZE, 0:_SIZE].astype(np.float32) / _SIZE
    if rng.random() < 0.6:
        angle = rng.uniform(0, 2 * np.pi)
        t = (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle) + 0.5
    else:
        cx, cy = rng.uniform(0, 1, size=2)
        t = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    t = np.clip(t / max(float(t.max()), 1e-6), 0, 1)[..., None]
    a, b = np.asarray(_colour(rng), np.float32), np.asarray(_colour(rng), np.float32)
    return a * (1 - t) + b * t


def _words(rng: np.random.Generator, n: int) -> str:
    letters = string.ascii_letters + string.digits
    return " ".join("".join(rng.choice(list(letters), size=int(rng.integers(2, 10)))) for _ in range(n))


def _font(rng: np.random.Generator) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=int(rng.integers(9, 28)))


def _text(rng: np.random.Generator) -> np.ndarray:
    dark = rng.random() < 0.2
    low = tuple(int(v) for v in rng.integers(0, 60, 3))
    high = tuple(int(v) for v in rng.integers(200, 256, 3))
    bg, fg = (low, high) if dark else (high, low)
    img = Image.new("RGB", (_SIZE, _SIZE), bg)
    draw = ImageDraw.Draw(img)
    font = _font(rng)
    step = int(getattr(font, "size", 12) * 1.4) + 1
    for y in range(int(rng.integers(2, 12)), _SIZE, step):
        draw.text((int(rng.integers(2, 20)), y), _words(rng, 12), fill=fg, font=font)
    return np.asarray(img, np.float32)


def _screenshot(rng: np.random.Generator) -> np.ndarray:
    img = Image.new("RGB", (_SIZE, _SIZE), tuple(int(v) for v in rng.integers(220, 256, 3)))
    draw = ImageDraw.Draw(img)
    bar = int(rng.integers(16, 40))
    draw.rectangle((0, 0, _SIZE, bar), fill=_colour(rng))
    font = _font(rng)
    draw.text((8, bar // 4), _words(rng, 3), fill=(255, 255, 255), font=font)
    y = bar + 6
    while y < _SIZE - 20:
        kind = rng.random()
        h = int(rng.integers(14, 48))
        if kind < 0.4:  # a line of text
            draw.text((10, y), _words(rng, 6), fill=(30, 30, 30), font=font)
            h = int(getattr(font, "size", 12)) + 6
        elif kind < 0.7:  # a button or input box
            x1 = int(rng.integers(60, _SIZE - 10))
            draw.rounded_rectangle((10, y, x1, y + h), radius=4, fill=_colour(rng), outline=(120, 120, 120))
        else:  # a panel with rows
            draw.rectangle((6, y, _SIZE - 6, y + h), outline=(180, 180, 180), fill=(245, 245, 245))
            for row in range(y + 4, y + h - 4, 8):
                draw.line((12, row, int(rng.integers(40, _SIZE - 12)), row), fill=(150, 150, 150), width=2)
        y += h + int(rng.integers(4, 14))
    return np.asarray(img, np.float32)


def _fractal(rng: np.random.Generator) -> np.ndarray:
    """Sum of upscaled noise octaves in 0..1 (value noise)."""
    out = np.zeros((_SIZE, _SIZE), np.float32)
    weight, total = 1.0, 0.0
    persistence = rng.uniform(0.4, 0.8)
    for cell in (64, 32, 16, 8, 4, 2):
        small = rng.random((_SIZE // cell + 1, _SIZE // cell + 1)).astype(np.float32)
        layer = Image.fromarray((small * 255).astype(np.uint8)).resize(
            (_SIZE + cell, _SIZE + cell), Image.Resampling.BICUBIC
        )
        out += weight * np.asarray(layer, np.float32)[:_SIZE, :_SIZE] / 255.0
        total += weight
        weight *= persistence
    out /= total
    return (out - out.min()) / max(float(out.max() - out.min()), 1e-6)


def _texture(rng: np.random.Generator) -> np.ndarray:
    t = _fractal(rng)
    style = int(rng.integers(0, 4))
    if style == 1:  # grains: thresholded cells, like gravel or sand
        t = np.where(t > rng.uniform(0.35, 0.65), t, t * 0.4)
    elif style == 2:  # wood grain
        y = np.mgrid[0:_SIZE, 0:_SIZE][0].astype(np.float32) / _SIZE
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (y * rng.uniform(6, 20) + 3 * t))
    elif style == 3:  # fabric: a fine weave over the noise
        y, x = np.mgrid[0:_SIZE, 0:_SIZE].astype(np.float32)
        period = rng.uniform(3, 8)
        t = 0.6 * t + 0.4 * (0.5 + 0.25 * (np.sin(x / period) + np.sin(y / period)))
    palettes = [
        ((60, 60, 60), (200, 200, 200)),  # stone
        ((90, 70, 50), (210, 190, 160)),  # sand, wood
        ((40, 50, 70), (170, 180, 190)),  # slate
    ]
    lo, hi = palettes[int(rng.integers(0, len(palettes)))]
    if rng.random() < 0.3:
        lo, hi = _colour(rng), _colour(rng)
    lo_a, hi_a = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
    return lo_a * (1 - t[..., None]) + hi_a * t[..., None]


def _pattern(rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:_SIZE, 0:_SIZE].astype(np.float32)
    period = rng.uniform(6, 48)
    style = int(rng.integers(0, 4))
    if style == 0:  # stripes at an angle
        a = rng.uniform(0, np.pi)
        t = ((x * np.cos(a) + y * np.sin(a)) // period) % 2
    elif style == 1:  # checks
        t = ((x // period) + (y // period)) % 2
    elif style == 2:  # grid lines
        t = ((x % period) < 2) | ((y % period) < 2)
    else:  # dots
        t = ((x % period - period / 2) ** 2 + (y % period - period / 2) ** 2) < (period / 4) ** 2
    t = t.astype(np.float32)[..., None]
    a_c, b_c = np.asarray(_colour(rng), np.float32), np.asarray(_colour(rng), np.float32)
    return a_c * (1 - t) + b_c * t


def _shapes(rng: np.random.Generator) -> np.ndarray:
    img = Image.new("RGB", (_SIZE, _SIZE), _colour(rng))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 7))):
        x0, y0 = (int(v) for v in rng.integers(0, _SIZE - 30, 2))
        x1, y1 = x0 + int(rng.integers(20, _SIZE // 2)), y0 + int(rng.integers(20, _SIZE // 2))
        shape = int(rng.integers(0, 4))
        if shape == 0:
            draw.rectangle((x0, y0, x1, y1), fill=_colour(rng))
        elif shape == 1:
            draw.ellipse((x0, y0, x1, y1), outline=_colour(rng), width=int(rng.integers(2, 8)))
        elif shape == 2:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=_colour(rng))
        else:
            draw.line((x0, y0, x1, y1), fill=_colour(rng), width=int(rng.integers(2, 12)))
    return np.asarray(img, np.float32)


_DRAW = {
    "noise": _noise,
    "flat": _flat,
    "gradient": _gradient,
    "text": _text,
    "screenshot": _screenshot,
    "texture": _texture,
    "pattern": _pattern,
    "shapes": _shapes,
}


def nonfood_image(kind: str, seed: int) -> Image.Image:
    """One generated non-food picture of ``kind`` (see :data:`KINDS`), reproducible from ``seed``."""
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    arr = np.clip(_DRAW[kind](rng), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if kind in ("texture", "shapes") and rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    return img


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def nonfood_images(count: int, *, seed0: int = 0) -> list[tuple[str, bytes]]:
    """``count`` pictures cycling through the kinds, as (kind, JPEG bytes), seeds from ``seed0``."""
    out = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        out.append((kind, _jpeg(nonfood_image(kind, seed0 + i // len(KINDS)))))
    return out


def reference_bank() -> list[tuple[str, bytes]]:
    """The calibration's reference bank: :data:`BANK_SIZE` generated pictures from :data:`BANK_SEED`."""
    return nonfood_images(BANK_SIZE, seed0=BANK_SEED)


def natural_photos(*, crops: bool = True) -> list[tuple[str, bytes]]:
    """(name, JPEG) of scikit-image's non-food photos and, with ``crops``, five half-size crops each."""
    try:
        import skimage.data
    except ImportError:
        return []
    out: list[tuple[str, bytes]] = []
    for name in NATURAL:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = np.asarray(getattr(skimage.data, name)())
        except Exception as exc:  # a photo this scikit-image does not ship: the set is smaller, said so
            log.warning("non-food test set: scikit-image photo %r unavailable (%s)", name, exc)
            continue
        if arr.dtype != np.uint8:
            arr = arr.astype(np.float32)
            arr = (255 * (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-6)).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., :3]
        img = Image.fromarray(arr)
        out.append((f"photo:{name}", _jpeg(img)))
        if crops:
            w, h = img.size
            for j, (fx, fy) in enumerate(CROPS):
                x0, y0 = int(fx * w), int(fy * h)
                out.append((f"photo:{name}-crop{j}", _jpeg(img.crop((x0, y0, x0 + w // 2, y0 + h // 2)))))
    return out


def nonfood_test_set(generated: int = 96, *, crops: bool = True) -> list[tuple[str, bytes]]:
    """(kind or photo name, JPEG): the real photos, then ``generated`` pictures of every generated kind."""
    return natural_photos(crops=crops) + nonfood_images(generated, seed0=TEST_SEED)
