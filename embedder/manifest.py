"""A model is a folder: ``model.onnx`` + ``manifest.json``.

The manifest's ``version`` is derived from the content hash of ``model.onnx``, so two folders with the
same version hold the same network, and a folder whose ONNX file changed after export is refused.

``gallery_sizes``: the sizes a catalogue photo is embedded at (the model's own size first; the unit vectors
are summed and re-normalised by :func:`embedder.embedding.combine_views`), while a query photo is embedded
at the model's size alone. A model with more than one has a graph with free height and width, and the
sizes are also in its ONNX metadata (:data:`GALLERY_SIZES_KEY`), so the content hash — the version —
covers them.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
VERSION_HEX_CHARS = 16
GALLERY_SIZES_KEY = "recipelens.gallery_sizes"  # ONNX metadata_props key: "224,288"
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024


def gallery_metadata(sizes: list[int] | tuple[int, ...]) -> str:
    """The ONNX metadata value (:data:`GALLERY_SIZES_KEY`) of a model's gallery sizes: ``"224,288"``;
    ``""`` (none recorded) for a model embedded at its own size alone."""
    return ",".join(map(str, sizes)) if len(sizes) > 1 else ""


class ModelIntegrityError(RuntimeError):
    """A model folder is missing a file, has a bad manifest, or its ONNX hash does not match."""


class InputSpec(BaseModel):
    """What the single graph input takes."""

    model_config = ConfigDict(frozen=True)

    name: str = "image"
    shape: list[int | None] = Field(default_factory=lambda: [None, 224, 224, 3])
    dtype: str = "float32"
    layout: str = "NHWC"
    color: str = "RGB"
    value_range: tuple[float, float] = (0.0, 255.0)
    note: str = "raw pixel values; the backbone's own scaling is inside the graph"

    @property
    def image_size(self) -> int:
        size = self.shape[1]
        assert size is not None
        return size


class ModelManifest(BaseModel):
    """Everything a server, an indexer or a reviewer needs to know about one exported model."""

    model_config = ConfigDict(protected_namespaces=())

    format_version: int = FORMAT_VERSION
    version: str
    sha256: str
    name: str
    backbone: str
    input: InputSpec = Field(default_factory=InputSpec)
    output_name: str = "embedding"
    embedding_dim: int
    created_at: str
    source: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    parity: dict[str, Any] = Field(default_factory=dict)
    # "fp32", or "int8" for a QDQ twin: its method, calibration and agreement with fp32 in quantization.
    numerics: str = "fp32"
    quantization: dict[str, Any] = Field(default_factory=dict)
    # Sizes a catalogue photo is embedded at, the model's own first; empty: its own size alone.
    gallery_sizes: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_gallery_sizes(self) -> ModelManifest:
        sizes = self.gallery_sizes
        if not sizes:
            return self
        if sizes[0] != self.input.image_size:
            raise ValueError(f"gallery_sizes {sizes} must start with the input size {self.input.image_size}")
        if len(set(sizes)) != len(sizes) or not all(MIN_IMAGE_SIZE <= s <= MAX_IMAGE_SIZE for s in sizes):
            raise ValueError(
                f"gallery_sizes {sizes} must be distinct sizes of {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} px"
            )
        return self

    def quantization_record(self, key: str) -> dict[str, Any]:
        """One of an int8 manifest's records (``measured_on``, ``speedup``, ``agreement_by_runtime``) as a
        mapping: an absent one, or a hand-edited one that is not a mapping, reads as not recorded."""
        value = self.quantization.get(key)
        return value if isinstance(value, dict) else {}

    def int8_speedup(self) -> float | None:
        """int8 / fp32 images/s measured when the twin was made; ``None`` where it is not recorded as a
        number."""
        value = self.quantization_record("speedup").get("int8_over_fp32")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    @property
    def gallery_views(self) -> tuple[int, ...]:
        """The sizes a catalogue photo is embedded at (``(image_size,)`` for most models)."""
        return tuple(self.gallery_sizes) or (self.input.image_size,)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def version_from_sha256(sha256: str) -> str:
    return sha256[:VERSION_HEX_CHARS]


def write_manifest(folder: Path, **fields: Any) -> ModelManifest:
    """Hash ``folder/model.onnx`` and write ``folder/manifest.json`` with the given fields."""
    onnx_path = folder / MODEL_FILE
    if not onnx_path.is_file():
        raise ModelIntegrityError(f"{onnx_path}: missing")
    sha = file_sha256(onnx_path)
    fields.setdefault("created_at", datetime.now(UTC).isoformat(timespec="seconds"))
    manifest = ModelManifest(version=version_from_sha256(sha), sha256=sha, **fields)
    tmp = folder / (MANIFEST_FILE + ".tmp")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    tmp.replace(folder / MANIFEST_FILE)
    return manifest


def read_manifest(folder: str | Path, *, verify: bool = True) -> ModelManifest:
    """Read a model folder's manifest; with ``verify`` the ONNX file's hash must match it."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    onnx_path = folder / MODEL_FILE
    if not manifest_path.is_file():
        raise ModelIntegrityError(f"{folder}: not a model folder (no {MANIFEST_FILE})")
    if not onnx_path.is_file():
        raise ModelIntegrityError(f"{folder}: not a model folder (no {MODEL_FILE})")
    try:
        manifest = ModelManifest.model_validate(json.loads(manifest_path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ModelIntegrityError(f"{manifest_path}: invalid manifest: {exc}") from None
    if verify:
        actual = file_sha256(onnx_path)
        if actual != manifest.sha256:
            raise ModelIntegrityError(
                f"{onnx_path}: content hash {actual[:16]}… does not match manifest version "
                f"{manifest.version} (sha256 {manifest.sha256[:16]}…): "
                "the model file was changed or corrupted"
            )
    return manifest
