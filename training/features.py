"""Backbone outputs computed once: pooled features of clean photos, queries and augmented views.

A frozen part of the network is a pure function of its input view, so its output is computed once per
(photo, view) and training reads it back from a cache: phase 1 caches the pooled features under the
head, phase 2 the activations at the unfreeze boundary (:mod:`training.activation_cache`). A view is
addressed as (photo index, view number), view 0 the clean photo, as in :mod:`training.data`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from training.data import PhotoSet, view_dataset
from training.evaluate import make_queries, nonfood_sets
from training.presets import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class PretrainedFeatures:
    """The frozen backbone's pooled features before any training: photos, evaluation queries, non-food."""

    clean: np.ndarray  # (N, F): every photo, clean
    query_sets: dict[str, tuple[np.ndarray, np.ndarray]]  # level → (uint8 queries, source photo)
    query_features: dict[str, np.ndarray]  # level → (Q, F)
    held_out: np.ndarray  # photo indices of the test recipes
    nonfood: dict[str, tuple[np.ndarray, np.ndarray]]  # verdict family → (uint8 pictures, (M, F))
    # The raw backbone as frozen_fn ran it: for phase 1 only (phase 2 then trains its top layers).
    frozen: Callable[[Any], np.ndarray] | None = None


def embed_batches(
    fn: Callable[[Any], Any], batches: Iterable[Any], total: int, desc: str, progress: bool
) -> np.ndarray:
    """Concatenated float32 outputs of ``fn`` over ``batches``, with a progress bar."""
    out: list[np.ndarray] = []
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        for batch in batches:
            out.append(np.asarray(fn(tf.cast(batch, tf.float32)), np.float32))
            bar.update(int(batch.shape[0]))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def inference_fn(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """A compiled ``model(x, training=False)`` in float32."""

    @tf.function(reduce_retracing=True)
    def fn(x: tf.Tensor) -> tf.Tensor:
        return tf.cast(model(x, training=False), tf.float32)

    return fn


def frozen_fn(model: keras.Model, config: TrainConfig) -> Callable[[Any], np.ndarray]:
    """``model(x, training=False)`` as float32 numpy, for a model whose weights no longer change.

    ``frozen_runtime`` ``auto`` (on a host without a GPU) or ``onnxruntime``: the model is converted as
    the export converts (tf2onnx, input scaling folded) and runs in onnxruntime's CPU provider, about
    2× Keras' rate for EfficientNet-Lite on a CPU, agreeing with Keras to ~1e-6 of the values' size.
    The frozen passes over every photo and view (the phase-2 activation cache, the pooled features,
    the evaluation queries) then cost half. With a GPU, ``auto`` keeps Keras.
    """
    runtime = config.frozen_runtime
    if runtime == "auto":
        runtime = "keras" if tf.config.list_physical_devices("GPU") else "onnxruntime"
    if runtime == "keras":
        return _in_keras(model)
    import onnxruntime as ort

    from training.export import convert_to_onnx
    from training.models import INPUT_NAME

    try:
        proto = convert_to_onnx(model, int(model.input_shape[1]))
    except Exception as exc:  # ExportError for what tf2onnx cannot convert; anything else as well
        if config.frozen_runtime == "onnxruntime":
            raise
        log.warning("%s stays in Keras (frozen_runtime=auto; it did not convert: %r)", model.name, exc)
        return _in_keras(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    log.info("%s runs in onnxruntime (frozen; %s)", model.name, session.get_providers()[0])
    return lambda x: np.asarray(session.run(None, {INPUT_NAME: np.asarray(x, np.float32)})[0], np.float32)


def _in_keras(model: keras.Model) -> Callable[[Any], np.ndarray]:
    fn = inference_fn(model)
    return lambda x: np.asarray(fn(tf.cast(x, tf.float32)), np.float32)


def chunks(images: np.ndarray, size: int = 32) -> Iterable[np.ndarray]:
    """Consecutive slices of ``size`` rows."""
    return (images[i : i + size] for i in range(0, len(images), size))


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def view_outputs(
    model: keras.Model,
    photos: PhotoSet,
    photo_index: np.ndarray,
    view_index: np.ndarray,
    config: TrainConfig,
    *,
    desc: str,
    progress: bool,
    out: np.ndarray | None = None,
    batch: int = 32,
    fn: Callable[[Any], np.ndarray] | None = None,
) -> np.ndarray:
    """``model`` on view ``view_index[i]`` of photo ``photo_index[i]``, in order; into ``out`` if given.

    ``model`` is frozen: it runs as :func:`frozen_fn` makes it, or as ``fn`` when one is given.
    """
    fn = fn or frozen_fn(model, config)
    shape = tuple(int(d) for d in model.output_shape[1:])
    target = out if out is not None else np.zeros((len(photo_index), *shape), np.float32)
    views = view_dataset(
        photos.images, photo_index, view_index, base_seed=config.seed, config=config.augment, batch=batch
    )
    at = 0
    with tqdm(total=len(photo_index), desc=desc, unit="img", disable=not progress) as bar:
        for images in views:
            result = fn(images)
            target[at : at + len(result)] = result
            at += len(result)
            bar.update(len(result))
    return target


Stage = Callable[[str], AbstractContextManager[None]]
"""Times a named stage (``training.run_state.StageTimer`` is one)."""


def no_stage(_key: str) -> AbstractContextManager[None]:
    """A stage timer that times nothing (see ``training.run_state.StageTimer``)."""
    return nullcontext()


def pretrained_features(
    config: TrainConfig,
    features: keras.Model,
    photos: PhotoSet,
    held_out: np.ndarray,
    *,
    progress: bool,
    stage: Stage = no_stage,
) -> PretrainedFeatures:
    """The frozen backbone on every clean photo, the held-out photos' distorted queries, the non-food sets.

    ``stage`` times the parts: ``frozen_convert_s`` (a fixed cost), ``raw_features_s`` (the clean
    photos, which training needs), ``query_features_s`` (the evaluation's queries and non-food sets).
    """
    every = np.arange(len(photos))
    with stage("frozen_convert_s"):
        feature_fn = frozen_fn(features, config)
    with stage("raw_features_s"):
        clean = view_outputs(
            features,
            photos,
            every,
            np.zeros_like(every),
            config,
            desc="features: clean photos",
            progress=progress,
            fn=feature_fn,
        )
    size = int(features.input_shape[1])
    with stage("query_features_s"):
        query_sets = evaluation_queries(config, photos, held_out, size=size)
        query_features = {
            level: embed_batches(feature_fn, chunks(q), len(q), f"features: {level} queries", progress)
            for level, (q, _) in query_sets.items()
        }
        nonfood = {
            family: (
                pictures,
                embed_batches(
                    feature_fn, chunks(pictures), len(pictures), f"features: non-food {family}", progress
                ),
            )
            for family, pictures in nonfood_sets(size).items()
        }
    return PretrainedFeatures(clean, query_sets, query_features, held_out, nonfood, feature_fn)


def evaluation_queries(
    config: TrainConfig, photos: PhotoSet, held_out: np.ndarray, *, size: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per distortion level: the (Q, size, size, 3) queries of the held-out photos and each one's photo.

    The distorted bytes depend on the evaluation seed only, so every backbone gets the same photos.
    """
    files = [photos.files[p] for p in held_out]
    ev = config.evaluation
    sets = {
        level: make_queries(files, ev.queries_per_photo, ev.seed, level, size=size)
        for level in ev.distortions
    }
    return {level: (queries, held_out[origin]) for level, (queries, origin) in sets.items()}


@dataclass
class Reference:
    """Another raw backbone scored on the same queries (the figure compares with raw Lite0)."""

    row: str
    gallery: np.ndarray
    queries: dict[str, np.ndarray]


def reference_features(
    config: TrainConfig, photos: PhotoSet, held_out: np.ndarray, *, progress: bool
) -> Reference | None:
    """``evaluation.reference_backbone`` raw on the same photos and query bytes, at its own input size.

    None when it is the run's own backbone with average pooling (its raw row is that already).
    """
    from embedder.preprocess import preprocess_file
    from training.models import build_raw_model

    backbone = config.evaluation.reference_backbone
    if not backbone or (backbone == config.backbone and config.pooling == "avg"):
        return None
    model = build_raw_model(backbone, "imagenet")
    size = int(model.input_shape[1])
    fn = frozen_fn(model, config)
    images = np.stack([preprocess_file(path, size=size) for path in photos.files])
    gallery = embed_batches(fn, chunks(images), len(images), f"{backbone}: photos", progress)
    queries = {
        level: embed_batches(fn, chunks(q), len(q), f"{backbone}: {level} queries", progress)
        for level, (q, _) in evaluation_queries(config, photos, held_out, size=size).items()
    }
    return Reference(f"raw {backbone}", gallery, queries)


def augmented_view_index(photo_index: np.ndarray, views: int) -> tuple[np.ndarray, np.ndarray]:
    """(photo, view) pairs of views 1 … views − 1 of every photo, photo-major."""
    return np.repeat(photo_index, views - 1), np.tile(np.arange(1, views), len(photo_index))


def pooled_feature_cache(
    config: TrainConfig,
    features: keras.Model,
    photos: PhotoSet,
    cached: np.ndarray,
    clean: np.ndarray,
    *,
    progress: bool,
    fn: Callable[[Any], np.ndarray] | None = None,
) -> np.ndarray:
    """(N, V, F) pooled features: view 0 the clean photo, views 1… augmented for the ``cached`` photos.

    ``fn``: the frozen ``features`` as :func:`frozen_fn` made it already (else it is made here).
    """
    views = config.cache_views
    rep_p, rep_v = augmented_view_index(cached, views)
    augmented = view_outputs(
        features,
        photos,
        rep_p,
        rep_v,
        config,
        desc=f"features: {views - 1} augmented views per photo",
        progress=progress,
        fn=fn,
    )
    cache = np.zeros((len(photos), views, clean.shape[1]), np.float32)
    cache[:, 0] = clean
    cache[rep_p, rep_v] = augmented
    return cache
