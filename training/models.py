"""Embedding models: a pretrained backbone, global average pooling, an optional projection head, L2 norm.

All models take one input named ``image``: float32 ``(None, S, S, 3)`` RGB pixels in 0..255 (the output
of :func:`embedder.preprocess.preprocess` at the backbone's size ``S``, which the exported manifest
records), and return unit-length vectors.
"""

from __future__ import annotations

from pathlib import Path

import keras

from embedder.manifest import read_manifest
from training.backbones import FEATURE_DIM, backbone_image_size, build_backbone
from training.layers import GeneralizedMeanPooling, L2Normalization

INPUT_NAME = "image"
KERAS_SUBDIR = "keras"
KERAS_FILE = "model.keras"


def image_input(size: int | None) -> keras.KerasTensor:
    """The model's input: ``(None, size, size, 3)``, or any height and width with ``size=None``."""
    return keras.Input(shape=(size, size, 3), dtype="float32", name=INPUT_NAME)


def _backbone_and_input(
    backbone: str, weights: str | Path | None, free_size: bool
) -> tuple[keras.Model, keras.KerasTensor]:
    size = None if free_size else backbone_image_size(backbone)
    features = build_backbone(backbone, weights, None if size else (None, None, 3))
    features.name = "backbone"
    return features, image_input(size)


def pooling_layer(pooling: str = "avg", gem_p: float = 3.0) -> keras.layers.Layer:
    """Global pooling of the feature map: average (``avg_pool``) or generalized mean (``gem_pool``)."""
    if pooling == "gem":
        return GeneralizedMeanPooling(gem_p, name="gem_pool")
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")
    raise ValueError(f"unknown pooling {pooling!r}; choose avg or gem")


def build_raw_model(
    backbone: str = "efficientnet_lite0",
    weights: str | Path | None = "imagenet",
    *,
    pooling: str = "avg",
    gem_p: float = 3.0,
    free_size: bool = False,
) -> keras.Model:
    """Backbone → global pooling (average or GeM) → L2Normalization: the pretrained 1280-D embedding.

    The backbone is one nested layer named ``backbone`` (as in :func:`build_embedding_model`);
    ``free_size`` takes any height and width instead of the backbone's size (the same weights).
    """
    features, inputs = _backbone_and_input(backbone, weights, free_size)
    x = pooling_layer(pooling, gem_p)(features(inputs))
    outputs = L2Normalization(name="embedding")(x)
    return keras.Model(inputs, outputs, name=f"{backbone}_raw")


def build_embedding_model(
    backbone: str = "efficientnet_lite0",
    weights: str | Path | None = "imagenet",
    *,
    embedding_dim: int = 512,
    hidden: int = 1024,
    dropout: float = 0.3,
    pooling: str = "avg",
    gem_p: float = 3.0,
    free_size: bool = False,
) -> keras.Model:
    """Backbone → pooling → Dense(hidden, relu) → Dropout → Dense(embedding_dim) → L2Normalization.

    The backbone is one nested layer named ``backbone`` so training can freeze or unfreeze it whole;
    ``free_size`` as in :func:`build_raw_model`.
    """
    features, inputs = _backbone_and_input(backbone, weights, free_size)
    x = pooling_layer(pooling, gem_p)(features(inputs))
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
