"""The real pretrained EfficientNet-Lite0 raw embedding model, exported as a model folder.

``build_raw_model_folder`` is importable from any test (``from tests.training.rawmodel import
build_raw_model_folder``); tests under ``tests/training`` share one export per session through the
``raw_export`` / ``raw_model_dir`` fixtures in ``tests/training/conftest.py``. Needs TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RAW_NAME = "lite0-raw"
RAW_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class RawExport:
    """The Keras raw model and the folder it was exported to (shared by the whole session)."""

    model: Any  # keras.Model (not imported here, so collecting tests does not load TensorFlow)
    folder: Path
    out_dir: Path


def export_raw_model(out_dir: Path, *, parity_images: Sequence[Path] | None = None) -> tuple[Any, Path]:
    """Build the ImageNet Lite0 raw model (1280-D) and export it under ``out_dir``; return (model, folder)."""
    from training.export import export_model
    from training.models import build_raw_model

    model = build_raw_model(RAW_BACKBONE, "imagenet")
    folder = export_model(
        model,
        out_dir,
        name=RAW_NAME,
        backbone=RAW_BACKBONE,
        source={"kind": "test fixture", "weights": "imagenet"},
        parity_images=parity_images,
    )
    return model, folder


def build_raw_model_folder(out_dir: Path, *, parity_images: Sequence[Path] | None = None) -> Path:
    """Export the real raw model under ``out_dir``; return its folder ``<out_dir>/lite0-raw-<version>``."""
    return export_raw_model(out_dir, parity_images=parity_images)[1]
