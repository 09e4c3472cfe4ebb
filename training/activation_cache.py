"""Phase 2 on activations cached at the unfreeze boundary.

Phase 2 trains only the top ``unfreeze_layers`` backbone layers and the head; everything below stays
frozen (BatchNorm and stochastic depth in inference mode), so the activation where the trained part
begins is a pure function of the input view. :func:`split_at_unfreeze_boundary` finds that place — the
highest point at or below the unfreeze cut where a single tensor crosses (EfficientNet's residual adds
make some cuts cross two) — and splits the model into ``lower`` (images → activations, frozen) and
``upper`` (activations → embedding: the top blocks, pooling and head, sharing the model's weights).
:func:`build_activation_cache` runs ``lower`` once per (photo, view) — view 0 clean, views 1… the same
augmented views phase 1 uses (:func:`training.data.view_seed`) — and phase 2 then trains ``upper`` on
triplets looked up in that cache (:func:`activation_triplets`), instead of rendering 3P views and
running the whole backbone at every step; a batch's slots that show the same (photo, view) — with
``query_gallery``, each negative is another row's clean positive — go through the top blocks once
(:func:`unique_slots`, :func:`build_slot_triplet_model`). With ``phase2_gallery_gradient=false`` the
slots that are only positives or negatives (the clean gallery side of ``query_gallery``) run forward
without a gradient (:func:`query_gallery_slots`): the backward pass covers the P query slots only.

Memory: one view of EfficientNet-Lite0 at 224 px with the top 40 layers unfrozen is a 7×7×192 float32
activation, 36.75 KiB (7×7×208 = 39.8 KiB for Lite2 at 260 px). A cache larger than
``cache_ram_gib`` is a numpy memmap in the run folder (``phase2_activations.npy``), read batch by batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from training.data import PhotoSet, TripletSampler, index_dataset, render_views
from training.features import Stage, augmented_view_index, frozen_fn, no_stage, view_outputs
from training.fitting import BACKBONE_LAYER, POOL_LAYERS
from training.layers import GatherSlots
from training.presets import TrainConfig

log = logging.getLogger(__name__)

CACHE_FILE = "phase2_activations.npy"


@dataclass
class BoundarySplit:
    """The embedding model cut where phase 2's trained layers begin (both halves share its weights)."""

    lower: keras.Model  # images → activations at the boundary (frozen)
    upper: keras.Model  # activations → embedding (unfrozen top blocks + pooling + head)
    pooled: keras.Model  # activations → pooled backbone features (phase 1's cache, from the same pass)
    boundary: str  # the first backbone layer above the boundary

    @property
    def activation_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.lower.output_shape[1:])

    @property
    def bytes_per_view(self) -> int:
        return int(np.prod(self.activation_shape)) * 4


def _crossing_tensors(layers: list[keras.layers.Layer], k: int) -> list[keras.KerasTensor]:
    """Tensors made by ``layers[:k]`` that ``layers[k:]`` read."""
    made = {id(t): t for layer in layers[:k] for node in layer._inbound_nodes for t in node.outputs}
    crossing: dict[int, keras.KerasTensor] = {}
    for layer in layers[k:]:
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                if id(t) in made:
                    crossing[id(t)] = t
    return list(crossing.values())


def split_at_unfreeze_boundary(model: keras.Model, unfreeze_layers: int) -> BoundarySplit:
    """Cut ``model`` below its top ``unfreeze_layers`` backbone layers, where one tensor crosses."""
    backbone = model.get_layer(BACKBONE_LAYER)
    layers = backbone.layers
    cut = max(1, len(layers) - unfreeze_layers)
    for k in range(cut, 0, -1):
        crossing = _crossing_tensors(layers, k)
        if len(crossing) == 1:
            break
    else:
        raise RuntimeError(f"no single-tensor cut below layer {layers[cut].name} of {backbone.name}")
    activations = crossing[0]
    lower = keras.Model(backbone.input, activations, name="frozen_lower")
    top = keras.Model(activations, backbone.output, name="backbone_top")
    inputs = keras.Input(shape=tuple(activations.shape[1:]), name="activations")
    x = top(inputs)
    after = model.layers[model.layers.index(backbone) + 1 :]
    pooled: keras.Model | None = None
    for layer in after:
        x = layer(x)
        if layer.name in POOL_LAYERS:
            pooled = keras.Model(inputs, x, name="pooled_from_activations")
    if pooled is None:
        raise RuntimeError(f"the model {model.name} has no pooling layer after its backbone")
    split = BoundarySplit(lower, keras.Model(inputs, x, name="upper"), pooled, layers[k].name)
    log.info(
        "phase-2 boundary below %s (layer %d of %d; unfreeze cut at %d): activations %s, %.2f KiB per view",
        split.boundary,
        k,
        len(layers),
        cut,
        "×".join(map(str, split.activation_shape)),
        split.bytes_per_view / 1024,
    )
    return split


@dataclass
class ActivationCache:
    """(rows, V, *activation) float32, in RAM or memmapped; ``row[photo]`` is a photo's row (−1: none)."""

    values: np.ndarray
    row: np.ndarray

    def gather(self, photos: np.ndarray, views: np.ndarray) -> np.ndarray:
        """Activations of (photo, view) pairs of any shape, as (*shape, *activation)."""
        rows = self.row[photos]
        if (rows < 0).any():
            raise IndexError("a photo outside the cache was asked for (not a train/validation photo)")
        return np.asarray(self.values[rows, views], np.float32)


def build_activation_cache(
    split: BoundarySplit,
    config: TrainConfig,
    photos: PhotoSet,
    cached: np.ndarray,
    *,
    views: int,
    run_dir: Path,
    progress: bool,
    stage: Stage = no_stage,
) -> ActivationCache:
    """``lower`` on views 0 … ``views − 1`` of each ``cached`` photo, once; memmapped above the budget.

    ``stage`` times the conversion of ``lower`` for its runtime (``frozen_convert_s``, a fixed cost) and
    the pass over the views (``phase2_cache_s``).
    """
    shape = (len(cached), views, *split.activation_shape)
    size = int(np.prod(shape)) * 4
    budget = int(config.cache_ram_gib * 2**30)
    where = "in RAM" if size <= budget else f"memmap {run_dir / CACHE_FILE}"
    log.info(
        "phase-2 cache: %d photos × %d views × %.2f KiB = %.1f MiB (%s; budget %.1f GiB)",
        len(cached),
        views,
        split.bytes_per_view / 1024,
        size / 2**20,
        where,
        config.cache_ram_gib,
    )
    if size <= budget:
        values = np.zeros(shape, np.float32)
    else:
        values = np.lib.format.open_memmap(run_dir / CACHE_FILE, mode="w+", dtype=np.float32, shape=shape)
    flat = values.reshape(len(cached) * views, *split.activation_shape)
    with stage("frozen_convert_s"):
        fn = frozen_fn(split.lower, config)
    with stage("phase2_cache_s"):
        view_outputs(
            split.lower,
            photos,
            np.repeat(cached, views),
            np.tile(np.arange(views), len(cached)),
            config,
            desc=f"activations: {views} views per photo at {split.boundary}",
            progress=progress,
            out=flat,
            fn=fn,
        )
    row = np.full(len(photos), -1, np.int64)
    row[cached] = np.arange(len(cached))
    return ActivationCache(values, row)


def pooled_features_from_cache(
    split: BoundarySplit, cache: ActivationCache, photos: PhotoSet, clean: np.ndarray, views: int
) -> np.ndarray:
    """Phase 1's (N, V, F) pooled-feature cache computed from the activations (the frozen top only)."""
    cached = np.flatnonzero(cache.row >= 0)
    rep_p, rep_v = augmented_view_index(cached, views)
    fn = tf.function(lambda x: split.pooled(x, training=False), reduce_retracing=True)
    out = np.zeros((len(photos), views, clean.shape[1]), np.float32)
    out[:, 0] = clean
    for i in range(0, len(rep_p), 64):
        p, v = rep_p[i : i + 64], rep_v[i : i + 64]
        out[p, v] = np.asarray(fn(tf.constant(cache.gather(p, v))), np.float32)
    return out


def unique_slots(photos: np.ndarray, views: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (photo, view) pairs of a (P, 3) batch and each slot's index into them.

    With ``query_gallery`` a batch's negatives are clean photos that are other rows' positives, so
    about 2P of the 3P slots are distinct: phase 2 runs the top blocks on those only.
    """
    keys = photos.astype(np.int64) * (int(views.max(initial=0)) + 1) + views
    _, first, index = np.unique(keys.reshape(-1), return_index=True, return_inverse=True)
    flat_p, flat_v = photos.reshape(-1), views.reshape(-1)
    return flat_p[first], flat_v[first], index.reshape(photos.shape).astype(np.int32)


def query_gallery_slots(
    photos: np.ndarray, views: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`unique_slots` with the slots some row anchors first, then the gallery-only ones.

    Returns (photos, views, (P, 3) index into that order, number of query slots).
    """
    p, v, index = unique_slots(photos, views)
    is_query = np.zeros(len(p), bool)
    is_query[index[:, 0]] = True
    order = np.concatenate([np.flatnonzero(is_query), np.flatnonzero(~is_query)])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return p[order], v[order], rank[index].astype(np.int32), np.asarray(is_query.sum(), np.int32)


def _unique_spec(
    photos: tf.Tensor, views: tf.Tensor, gallery_gradient: bool = True
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    if gallery_gradient:
        p, v, index = tf.numpy_function(
            unique_slots, [photos, views], (tf.int32, tf.int32, tf.int32), stateful=False
        )
        queries = tf.shape(p)[0]
    else:
        p, v, index, queries = tf.numpy_function(
            query_gallery_slots, [photos, views], (tf.int32, tf.int32, tf.int32, tf.int32), stateful=False
        )
    p, v = tf.ensure_shape(p, (None,)), tf.ensure_shape(v, (None,))
    return p, v, tf.ensure_shape(index, (None, 3)), tf.ensure_shape(queries, ())


def _slot_inputs(x: tf.Tensor, index: tf.Tensor, queries: tf.Tensor, gallery_gradient: bool) -> Any:
    """The slot model's inputs: (slots, index), or (query slots, gallery slots, index)."""
    return (x, index) if gallery_gradient else (x[:queries], x[queries:], index)


def activation_triplets(
    sampler: TripletSampler,
    cache: ActivationCache,
    *,
    training: bool,
    seed: int = 0,
    gallery_gradient: bool = True,
) -> tf.data.Dataset:
    """Phase 2 on the cache: (((U, *activation) distinct slots, (P, 3) slot index), (P, 3) labels).

    ``gallery_gradient=False``: the slots come as (query slots, gallery-only slots, index).
    """
    shape = cache.values.shape[2:]

    def lookup(photos: tf.Tensor, views: tf.Tensor, labels: tf.Tensor) -> tuple[Any, tf.Tensor]:
        p, v, index, queries = _unique_spec(photos, views, gallery_gradient)
        x = tf.ensure_shape(
            tf.numpy_function(cache.gather, [p, v], tf.float32, stateful=False), (None, *shape)
        )
        return _slot_inputs(x, index, queries, gallery_gradient), labels

    return index_dataset(sampler, training=training, seed=seed).map(lookup).prefetch(2)


def rendered_activation_triplets(
    sampler: TripletSampler, split: BoundarySplit, config: TrainConfig, *, training: bool, seed: int = 0
) -> tf.data.Dataset:
    """The same batches with the distinct views rendered and ``lower`` run at every step (no cache)."""
    images = tf.constant(sampler.photos.images)

    gallery_gradient = config.phase2_gallery_gradient

    def compute(photos: tf.Tensor, views: tf.Tensor, labels: tf.Tensor) -> tuple[Any, tf.Tensor]:
        p, v, index, queries = _unique_spec(photos, views, gallery_gradient)
        rendered = render_views(images, p, v, config.seed, config.augment)
        x = split.lower(tf.cast(rendered, tf.float32), training=False)
        return _slot_inputs(x, index, queries, gallery_gradient), labels

    return index_dataset(sampler, training=training, seed=seed).map(compute).prefetch(2)


class _GatherWithoutGalleryGradient(keras.layers.Layer):
    """``[(A, D) query embeddings, (G, D) gallery embeddings, (P, 3) index]`` → ``(P, 3, D)``.

    The gallery embeddings enter without a gradient, so the backward pass skips ``upper`` on them.
    """

    def call(self, inputs: Any) -> Any:
        queries, gallery, index = inputs
        both = ops.concatenate([queries, ops.stop_gradient(gallery)], axis=0)
        return ops.take(both, ops.cast(index, "int32"), axis=0)

    def compute_output_shape(self, input_shape: Any) -> Any:
        (_, dim), _, (rows, _) = input_shape
        return (rows, 3, dim)


def build_slot_triplet_model(
    upper: keras.Model, *, name: str = "activation_triplet", gallery_gradient: bool = True
) -> keras.Model:
    """``((U, *activation), (P, 3) index)`` → ``(P, 3, D)``: ``upper`` once per distinct slot.

    ``gallery_gradient=False``: ``((A, *activation) query slots, (G, *activation) gallery-only slots,
    index)``, the gallery slots forward only (no gradient through them).
    """
    shape = tuple(upper.input_shape[1:])
    index = keras.Input(shape=(3,), dtype="int32", name=f"{name}_index")
    if gallery_gradient:
        slots = keras.Input(shape=shape, name=f"{name}_slots")
        return keras.Model(
            [slots, index], GatherSlots(name=f"{name}_gather")([upper(slots), index]), name=name
        )
    queries = keras.Input(shape=shape, name=f"{name}_queries")
    gallery = keras.Input(shape=shape, name=f"{name}_gallery")
    gathered = _GatherWithoutGalleryGradient(name=f"{name}_gather")([upper(queries), upper(gallery), index])
    return keras.Model([queries, gallery, index], gathered, name=name)
