"""Training, indexing and serving turn the same photo file into the same tensor (and so the same vector)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedder.client import EmbedderClient
from embedder.factory import open_embedder
from embedder.manifest import read_manifest
from embedder.preprocess import preprocess
from embedder.runtime import EmbeddingModel
from embedder.server import start_server
from embedder.settings import EmbedderSettings
from indexer.catalog import load_photo, read_catalog
from tests.support.imagegen import encode, synthetic_photo


def _odd_photos() -> dict[str, bytes]:
    """Photos that exercise every step: EXIF rotation, CMYK, transparency, 16-bit, palette, plain JPEG."""
    exif = Image.Exif()
    exif[0x0112] = 6
    rgba = synthetic_photo(3, (120, 90)).convert("RGBA")
    rgba.putalpha(128)
    grey16 = Image.fromarray((np.linspace(0, 65535, 96 * 64).reshape(64, 96)).astype(np.uint16))
    return {
        "plain.jpg": encode(synthetic_photo(1, (640, 480)), "JPEG", quality=90),
        "rotated.jpg": encode(synthetic_photo(2, (320, 200)), "JPEG", quality=92, exif=exif.tobytes()),
        "cmyk.jpg": encode(synthetic_photo(4, (200, 150)).convert("CMYK"), "JPEG", quality=90),
        "alpha.png": encode(rgba, "PNG"),
        "grey16.png": encode(grey16, "PNG"),
        "palette.gif": encode(synthetic_photo(5, (150, 100)).convert("P"), "GIF"),
    }


@pytest.mark.slow
def test_training_indexing_and_serving_give_identical_tensors(tmp_path: Path, tiny_model_dir: Path) -> None:
    from training.data import load_photos  # training imports TensorFlow; only this test needs it

    photos = _odd_photos()
    folder = tmp_path / "catalog"
    folder.mkdir()
    for name, data in photos.items():
        (folder / name).write_bytes(data)
    catalog = read_catalog(folder)  # a plain folder of photos: one recipe per photo
    assert not catalog.bad and len(catalog.recipes) == len(photos)

    photo_set, bad = load_photos(catalog.recipes, progress=False)  # training
    assert not bad
    version = read_manifest(tiny_model_dir).version
    serving = open_embedder(None, tiny_model_dir)  # the gateway's in-process path
    with ThreadPoolExecutor(2) as pool:
        for file, trained in zip(photo_set.files, photo_set.images, strict=True):
            data = Path(file).read_bytes()
            _, indexed = load_photo(file)  # indexing
            served = asyncio.run(serving.prepare(data, version, pool))
            assert trained.shape == (224, 224, 3) and trained.dtype == np.uint8
            np.testing.assert_array_equal(trained, indexed, err_msg=f"{file}: training ≠ indexing")
            np.testing.assert_array_equal(trained, served, err_msg=f"{file}: training ≠ serving")
            np.testing.assert_array_equal(trained, preprocess(data))

    # The embedder service (another decode path: its own thread pool) gives the vectors of those tensors.
    model = EmbeddingModel(tiny_model_dir)
    expected = model.embed_arrays(photo_set.images)
    settings = EmbedderSettings(model_dir=tiny_model_dir, port=0, reload_interval_s=0)
    with start_server(settings) as server, EmbedderClient(server.address) as client:
        result = client.embed([Path(f).read_bytes() for f in photo_set.files])
    np.testing.assert_allclose(result.vectors, expected, atol=1e-6)
