"""The verdict's non-food test set: real photos from scikit-image and generated pictures.

Disjoint from the calibration: the build's reference bank uses generated seeds 0…, the build's own
check seeds 10 000…, this set seeds 50 000…; scikit-image's photos are never generated or stored.
``coffee`` is left out (it is food). scikit-image comes with the ``train`` extra; without it the
set is the generated part only.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from indexer.nonfood import nonfood_images

TEST_SEED = 50_000
# Real non-food photos bundled with scikit-image (no download): people, animals, objects, textures, text.
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
    "stereo_motorcycle",
    "text",
)
CROPS = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5), (0.25, 0.25))  # half-size crops, by corner


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


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
        except Exception:
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
