from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.imagegen import encode, synthetic_photo
from tests.support.tinymodel import write_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) ONNX model folder: 64-D colour-layout embeddings."""
    folder = tmp_path_factory.mktemp("models") / "tiny"
    write_tiny_model(folder)
    return folder


@pytest.fixture(scope="session")
def photo_bytes() -> list[bytes]:
    """Thirty distinct synthetic JPEG photos."""
    return [encode(synthetic_photo(seed), "JPEG", quality=90) for seed in range(30)]
