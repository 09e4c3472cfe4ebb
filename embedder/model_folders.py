"""Model folders: find them, verify them, load them — the one place that knows their layout.

A model is a folder holding ``model.onnx`` + ``manifest.json`` (see :mod:`embedder.manifest`); a *model
directory* is either one model folder or a folder of them. The embedder's repository, the gateway's
in-process embedder and the indexer's build all go through these functions.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Unpack

import numpy as np

from embedder.manifest import MANIFEST_FILE, MODEL_FILE, ModelIntegrityError, ModelManifest, read_manifest
from embedder.providers import RuntimeOptions
from embedder.runtime import EmbeddingModel

log = logging.getLogger(__name__)

# (manifest mtime_ns, manifest size, model mtime_ns, model size): a folder is re-read when this changes.
FolderSignature = tuple[int, int, int, int]


def is_model_folder(folder: Path) -> bool:
    """A folder that claims to be a model folder (has a manifest or an ONNX file)."""
    return (folder / MANIFEST_FILE).is_file() or (folder / MODEL_FILE).is_file()


def find_model_folders(model_dir: str | Path) -> list[Path] | None:
    """The model folders in a model directory now; ``None`` when it cannot be read."""
    model_dir = Path(model_dir)
    if is_model_folder(model_dir):
        return [model_dir]
    try:
        children = sorted(p for p in model_dir.iterdir() if p.is_dir())
    except OSError:
        return None
    return [p for p in children if is_model_folder(p)]


def folder_signature(folder: Path) -> FolderSignature | None:
    """Sizes and mtimes of the folder's two files; ``None`` when one is missing."""
    try:
        manifest = (folder / MANIFEST_FILE).stat()
        model = (folder / MODEL_FILE).stat()
    except OSError:
        return None
    return (manifest.st_mtime_ns, manifest.st_size, model.st_mtime_ns, model.st_size)


def created_at(manifest: ModelManifest) -> datetime:
    """When the model was exported (timezone-aware; unparseable dates sort first)."""
    try:
        moment = datetime.fromisoformat(manifest.created_at)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def newest_model_folder(model_dir: str | Path) -> Path:
    """A model folder as it is, or the newest (by ``created_at``) one inside a model directory."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise ModelIntegrityError(f"model folder not found: {model_dir}")
    found: list[tuple[datetime, str, Path]] = []
    for folder in find_model_folders(model_dir) or []:
        if folder == model_dir:
            return folder
        try:
            manifest = read_manifest(folder, verify=False)
        except ModelIntegrityError:
            continue
        found.append((created_at(manifest), manifest.version, folder))
    if not found:
        raise ModelIntegrityError(f"{model_dir}: not a model folder (no {MANIFEST_FILE}) and holds none")
    return max(found)[2]


def verify_model_folder(folder: Path) -> ModelManifest:
    """The folder's manifest, once its ONNX file's hash matches it (else :class:`ModelIntegrityError`)."""
    return read_manifest(folder, verify=True)


def load_model(folder: Path, *, warmup: bool = True, **runtime: Unpack[RuntimeOptions]) -> EmbeddingModel:
    """Verify and load one model folder into onnxruntime; with ``warmup`` run it once on a blank image."""
    model = EmbeddingModel(folder, verify=True, **runtime)
    if warmup:
        size = model.image_size
        model.embed_arrays(np.zeros((1, size, size, 3), dtype=np.uint8))
    return model
