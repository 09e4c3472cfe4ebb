"""Embedding models: a pretrained backbone, global average pooling, an optional projection head, L2 norm.

All models take one input named ``image``: float32 ``(None, 224, 224, 3)`` RGB pixels in 0..255 (the
output of :func:`embedder.preprocess.preprocess`), and return unit-length vectors.
"""

from __future__ import annotations

from pathlib import Path

import keras

from embedder.manifest import read_manifest
from training.backbones import FEATURE_DIM, IMAGE_SIZE, build_backbone
from training.layers import L2Normalization

INPUT_NAME = "image"
KERAS_SUBDIR = "keras"
KERAS_FILE = "model.keras"


def image_input() -> keras.KerasTensor:
    return keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype="float32", name=INPUT_NAME)


def build_raw_model(
    backbone: str = "efficientnet_lite0", weights: str | Path | None = "imagenet"
) -> keras.Model:
    """Backbone → GlobalAveragePooling2D → L2Normalization: the pretrained 1280-D embedding, no training.

    The backbone is one nested layer named ``backbone`` (as in :func:`build_embedding_model`).
    """
    features = build_backbone(backbone, weights)
    features.name = "backbone"
    inputs = image_input()
    x = features(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = L2Normalization(name="embedding")(x)
    return keras.Model(inputs, outputs, name=f"{backbone}_raw")


def build_embedding_model(
    backbone: str = "efficientnet_lite0",
    weights: str | Path | None = "imagenet",
    *,
    embedding_dim: int = 512,
    hidden: int = 1024,
    dropout: float = 0.3,
) -> keras.Model:
    """Backbone → GAP → Dense(hidden, relu) → Dropout → Dense(embedding_dim) → L2Normalization.

    The backbone is one nested layer named ``backbone`` so training can freeze or unfreeze it whole.
    """
    features = build_backbone(backbone, weights)
    features.name = "backbone"
    inputs = image_input()
    x = features(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dense(hidden, activation="relu", name="projection_hidden")(x)
    x = keras.layers.Dropout(dropout, name="projection_dropout")(x)
    x = keras.layers.Dense(embedding_dim, name="projection")(x)
    outputs = L2Normalization(name="embedding")(x)
    return keras.Model(inputs, outputs, name=f"{backbone}_embedding")


def keras_path(model_dir: str | Path) -> Path:
    """Where an exported model folder keeps its Keras twin (an extra file, not covered by the hash)."""
    return Path(model_dir) / KERAS_SUBDIR / KERAS_FILE


def load_keras_for_manifest(model_dir: str | Path) -> keras.Model:
    """The Keras model saved next to an exported ``model.onnx`` (for Keras-vs-ONNX comparisons)."""
    read_manifest(model_dir, verify=False)  # a clear error if this is not a model folder at all
    path = keras_path(model_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: this model folder has no Keras copy (exported without one?)")
    # safe_mode (the default) refuses Lambda layers with pickled code.
    return keras.saving.load_model(path, compile=False, safe_mode=True)


__all__ = [
    "FEATURE_DIM",
    "INPUT_NAME",
    "build_embedding_model",
    "build_raw_model",
    "keras_path",
    "load_keras_for_manifest",
]
