"""The Keras side of a training phase: triplet models, freezing, devices, and one ``fit()`` per phase.

Both phases fit the same way: AdamW (weight decay from the config), the triplet loss with online
mining, ReduceLROnPlateau and EarlyStopping (best weights restored) on the validation loss, a
best-weights checkpoint and a CSV log per phase.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.data import PhotoSet, TripletSampler
from training.layers import ExtractTripletComponent, TripletStack
from training.losses import TripletLoss
from training.presets import PhaseConfig, TrainConfig
from training.triplet_metrics import triplet_metrics

log = logging.getLogger(__name__)

POOL_LAYERS = ("avg_pool", "gem_pool")
BACKBONE_LAYER = "backbone"


def build_triplet_model(embedding: keras.Model, *, name: str = "triplet") -> keras.Model:
    """``(batch, 3, *item)`` → ``(batch, 3, D)``: one shared embedding model applied to each slot."""
    item_shape = tuple(embedding.input_shape[1:])
    inputs = keras.Input(shape=(3, *item_shape), dtype=embedding.inputs[0].dtype, name=f"{name}_input")
    slots = [embedding(ExtractTripletComponent(i, name=f"{name}_slot{i}")(inputs)) for i in range(3)]
    return keras.Model(inputs, TripletStack(name=f"{name}_embeddings")(slots), name=name)


def split_at_pooling(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(images → pooled features, pooled features → embedding), sharing the model's layers and weights."""
    pool = pooling_of(model)
    features = keras.Model(model.input, pool.output, name="pooled_features")
    head_layers = model.layers[model.layers.index(pool) + 1 :]
    inputs = keras.Input(shape=tuple(pool.output.shape[1:]), name="features")
    x = inputs
    for layer in head_layers:
        x = layer(x)
    return features, keras.Model(inputs, x, name="head")


def pooling_of(model: keras.Model) -> keras.layers.Layer:
    """The model's global pooling layer (where phase 1 caches features)."""
    for layer in model.layers:
        if layer.name in POOL_LAYERS:
            return layer
    raise RuntimeError(f"the model {model.name} has no pooling layer ({', '.join(POOL_LAYERS)})")


def unfreeze_top(backbone: keras.Model, count: int, *, depthwise: bool = True) -> int:
    """Make the last ``count`` layers of ``backbone`` trainable, BatchNorm excepted; returns how many were.

    ``depthwise=False`` keeps the depthwise convolutions among them frozen too: their kernels are ~3 %
    of the unfrozen weights, but oneDNN's kernel gradient of a 5×5 depthwise convolution costs about a
    quarter of a phase-2 step on a CPU (their input gradient, which the layers below need, still runs).
    """
    backbone.trainable = True
    layers = backbone.layers
    cut = max(0, len(layers) - count)
    frozen_kinds: tuple[type, ...] = (keras.layers.BatchNormalization,)
    if not depthwise:
        frozen_kinds += (keras.layers.DepthwiseConv2D,)
    trained = 0
    for i, layer in enumerate(layers):
        trainable = i >= cut and not isinstance(layer, frozen_kinds)
        layer.trainable = trainable
        trained += int(trainable and bool(layer.weights))
    return trained


@dataclass
class Networks:
    """The embedding model and its halves around the pooling layer (shared layers and weights)."""

    model: keras.Model
    features: keras.Model  # images → pooled backbone features
    head: keras.Model  # pooled features → embedding
    strategy: tf.distribute.Strategy


def build_model(config: TrainConfig, weights: str | None, *, free_size: bool = False) -> keras.Model:
    """The preset's Keras model: backbone + pooling (+ head when it trains) + L2 norm."""
    from training.models import build_embedding_model, build_raw_model

    if not config.train:
        return build_raw_model(
            config.backbone, weights, pooling=config.pooling, gem_p=config.gem_p, free_size=free_size
        )
    return build_embedding_model(
        config.backbone,
        weights,
        embedding_dim=config.embedding_dim,
        dropout=config.dropout,
        pooling=config.pooling,
        gem_p=config.gem_p,
        free_size=free_size,
    )


def float32_twin(model: keras.Model, config: TrainConfig, *, free_size: bool = False) -> keras.Model:
    """A float32 copy of ``model`` (ONNX parity is checked in float32); ``free_size``: one that takes any
    height and width, for the gallery sizes (:func:`gallery_sizes`)."""
    keras.mixed_precision.set_global_policy("float32")
    twin = build_model(config, None, free_size=free_size)
    twin.set_weights(model.get_weights())
    return twin


def gallery_sizes(config: TrainConfig) -> list[int]:
    """The sizes catalogue photos are embedded at: the input size, then each ``gallery_zoom`` multiple of
    it rounded to 32 px (the backbone's stride); empty when that is the input size alone."""
    from training.backbones import backbone_image_size

    size = backbone_image_size(config.backbone)
    sizes = list(dict.fromkeys([size, *(32 * max(1, round(size * z / 32)) for z in config.gallery_zoom)]))
    return sizes if len(sizes) > 1 else []


def build_networks(config: TrainConfig) -> Networks:
    """The preset's model (raw, or backbone + head with the backbone frozen) on the device strategy."""
    strategy = setup_devices(config)
    with strategy.scope():
        model = build_model(config, config.backbone_weights)
        features, head = split_at_pooling(model)
    if config.train:
        model.get_layer(BACKBONE_LAYER).trainable = False
    return Networks(model, features, head, strategy)


def setup_devices(config: TrainConfig) -> tf.distribute.Strategy:
    """MirroredStrategy over several GPUs, mixed precision on GPU, the default strategy on CPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus and config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
        log.info("mixed precision (mixed_float16) on %d GPU(s)", len(gpus))
    else:
        keras.mixed_precision.set_global_policy("float32")
    if len(gpus) > 1:
        strategy: tf.distribute.Strategy = tf.distribute.MirroredStrategy()
        log.info("MirroredStrategy over %d GPUs", strategy.num_replicas_in_sync)
        return strategy
    log.info("training on %s", "1 GPU" if gpus else "CPU")
    return tf.distribute.get_strategy()


def compile_triplet_model(model: keras.Model, config: TrainConfig, phase: PhaseConfig) -> None:
    """AdamW, the triplet loss with the configured mining and margin, the four triplet metrics."""
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=phase.learning_rate, weight_decay=config.weight_decay),
        loss=TripletLoss(
            margin=config.margin,
            mining=config.mining,
            nce_weight=config.nce_weight,
            temperature=config.temperature,
            mine_gallery_only=config.mine_gallery_only,
            ms_weight=config.ms_weight,
            ms_alpha=config.ms_alpha,
            ms_beta=config.ms_beta,
            ms_base=config.ms_base,
            ms_epsilon=config.ms_epsilon,
        ),
        metrics=triplet_metrics(config.margin),
    )


def _callbacks(config: TrainConfig, run_dir: Path, phase: str) -> list[keras.callbacks.Callback]:
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    return [
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=config.lr_factor, patience=config.lr_patience, verbose=1
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.early_stopping_patience, restore_best_weights=True, verbose=1
        ),
        keras.callbacks.ModelCheckpoint(
            str(ckpt / f"{phase}.best.weights.h5"),
            monitor="val_loss",
            save_best_only=True,
            save_weights_only=True,
        ),
        keras.callbacks.CSVLogger(str(run_dir / f"{phase}_log.csv")),
    ]


def keras_verbosity(progress: bool) -> int:
    """Keras' ``verbose``: a progress bar on a terminal, one line per epoch in a log, nothing if off."""
    return (1 if sys.stderr.isatty() else 2) if progress else 0


def _history_rows(history: keras.callbacks.History) -> list[dict[str, float]]:
    keys = list(history.history)
    epochs = len(history.history[keys[0]]) if keys else 0
    return [{k: float(history.history[k][i]) for k in keys} for i in range(epochs)]


def fit_phase(
    phase: str,
    triplet_model: keras.Model,
    make_dataset: Callable[[TripletSampler, bool], tf.data.Dataset],
    *,
    config: TrainConfig,
    settings: PhaseConfig,
    photos: PhotoSet,
    recipes: dict[str, np.ndarray],
    views: int,
    run_dir: Path,
    strategy: tf.distribute.Strategy,
    progress: bool,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Fit one phase; returns its per-epoch history and the validation figures of its best weights."""
    train, val = (
        TripletSampler(
            photos,
            recipes[split],
            views=views,
            batch_recipes=settings.batch_recipes,
            label_aware=config.label_aware,
            query_gallery=config.query_gallery,
            anchors_per_recipe=config.anchors_per_recipe,
            seed=config.seed + offset,
        )
        for offset, split in enumerate(("train", "validation"))
    )
    steps = settings.steps_per_epoch or train.steps_per_epoch
    with strategy.scope():
        compile_triplet_model(triplet_model, config, settings)
    log.info(
        "%s: %d epochs × %d steps of %d triplets (%s mining, margin %g, lr %g)",
        phase,
        settings.epochs,
        steps,
        train.batch_recipes,
        config.mining,
        config.margin,
        settings.learning_rate,
    )
    val_ds = make_dataset(val, False)
    history = triplet_model.fit(
        make_dataset(train, True),
        steps_per_epoch=steps,
        epochs=settings.epochs,
        validation_data=val_ds,
        callbacks=_callbacks(config, run_dir, phase),
        verbose=keras_verbosity(progress),
        shuffle=False,
    )
    figures = triplet_model.evaluate(val_ds, verbose=0, return_dict=True)
    validation = {k: float(v) for k, v in figures.items()}
    log.info("%s best weights on validation: %s", phase, validation)
    return _history_rows(history), validation
