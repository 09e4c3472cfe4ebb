from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.training.rawmodel import RawExport, export_raw_model


@pytest.fixture(scope="session")
def raw_export(tmp_path_factory: pytest.TempPathFactory) -> RawExport:
    """ImageNet EfficientNet-Lite0 → GAP → L2 norm, exported once: the real 1280-D raw model folder."""
    out_dir = tmp_path_factory.mktemp("raw-models")
    model, folder = export_raw_model(out_dir)
    return RawExport(model, folder, out_dir)


@pytest.fixture(scope="session")
def raw_model_dir(raw_export: RawExport) -> Path:
    """Path of the exported real raw model folder (model.onnx + manifest.json + keras/model.keras)."""
    return raw_export.folder


@pytest.fixture(scope="session")
def lite0_classifier() -> Any:
    """The ImageNet EfficientNet-Lite0 with its 1000-class head (softmax output)."""
    from training.backbones import build_backbone

    return build_backbone("efficientnet_lite0", "imagenet", include_top=True)
