"""A model is a folder: model.onnx + manifest.json whose version is the content hash."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedder.manifest import MANIFEST_FILE, MODEL_FILE, ModelIntegrityError, read_manifest, write_manifest
from embedder.preprocess import preprocess
from embedder.providers import FP32_DEFAULT_PROVIDERS
from embedder.runtime import EmbeddingModel, select_providers
from tests.support.tinymodel import write_tiny_model


def test_version_is_the_content_hash(tmp_path: Path) -> None:
    a = write_tiny_model(tmp_path / "a", seed=0)
    b = write_tiny_model(tmp_path / "b", seed=1)
    again = write_tiny_model(tmp_path / "c", seed=0)
    assert a != b
    assert a == again
    manifest = read_manifest(tmp_path / "a")
    assert manifest.version == a
    assert manifest.sha256.startswith(a)
    assert manifest.input.shape == [None, 224, 224, 3]


def test_a_changed_model_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    version = write_tiny_model(folder)
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[-1] ^= 0xFF
    (folder / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=version):
        read_manifest(folder)
    with pytest.raises(ModelIntegrityError):
        EmbeddingModel(folder)


@pytest.mark.parametrize("broken", ["missing-manifest", "missing-model", "bad-json"])
def test_broken_folders_get_a_clear_error(tmp_path: Path, broken: str) -> None:
    folder = tmp_path / "m"
    write_tiny_model(folder)
    if broken == "missing-manifest":
        (folder / MANIFEST_FILE).unlink()
    elif broken == "missing-model":
        (folder / MODEL_FILE).unlink()
    else:
        (folder / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ModelIntegrityError, match=str(folder)):
        read_manifest(folder)


def test_embedding_model_gives_unit_vectors_of_the_manifest_dimension(
    tiny_model_dir: Path, photo_bytes: list[bytes]
) -> None:
    model = EmbeddingModel(tiny_model_dir)
    assert model.provider == select_providers(FP32_DEFAULT_PROVIDERS)[0]  # the build's best for fp32
    vectors = model.embed_images(photo_bytes[:5])
    assert vectors.shape == (5, json.loads((tiny_model_dir / MANIFEST_FILE).read_text())["embedding_dim"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The serving path and the explicit preprocess → embed_arrays path are the same computation.
    direct = model.embed_arrays(np.stack([preprocess(b) for b in photo_bytes[:5]]))
    np.testing.assert_array_equal(vectors, direct)
    with pytest.raises(ValueError, match="batch"):
        model.embed_arrays(np.zeros((1, 100, 100, 3), dtype=np.uint8))


def test_gallery_sizes_start_with_the_input_size_and_are_covered_by_the_version(tmp_path: Path) -> None:
    plain = write_tiny_model(tmp_path / "plain")
    zoomed = write_tiny_model(tmp_path / "zoomed", gallery_sizes=(224, 288))
    assert plain != zoomed  # the sizes are in the graph's metadata, so in the content hash
    assert read_manifest(tmp_path / "zoomed").gallery_views == (224, 288)
    assert read_manifest(tmp_path / "plain").gallery_views == (224,)
    fields = read_manifest(tmp_path / "zoomed").model_dump(exclude={"version", "sha256", "format_version"})
    for bad, message in (([288, 224], "must start with the input size 224"), ([224, 224], "distinct")):
        with pytest.raises(ValueError, match=message):
            write_manifest(tmp_path / "zoomed", **{**fields, "gallery_sizes": bad})
    # A manifest edited to other sizes than its graph's (the version unchanged) is refused at load.
    write_manifest(tmp_path / "zoomed", **{**fields, "gallery_sizes": [224, 320]})
    with pytest.raises(ModelIntegrityError, match=r"gallery sizes \(224,320\) are not the ones recorded"):
        EmbeddingModel(tmp_path / "zoomed")
    model = EmbeddingModel(tmp_path / "plain")
    with pytest.raises(ValueError, match="S = 224, got"):
        model.embed_arrays(np.zeros((1, 288, 288, 3), dtype=np.uint8))
