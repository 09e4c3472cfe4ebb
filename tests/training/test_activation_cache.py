"""Phase 2 on activations cached at the unfreeze boundary: the cut, the cache, and the same training."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.support.imagegen import synthetic_photo
from training.activation_cache import (
    CACHE_FILE,
    ActivationCache,
    BoundarySplit,
    activation_triplets,
    build_activation_cache,
    build_slot_triplet_model,
    pooled_features_from_cache,
    query_gallery_slots,
    rendered_activation_triplets,
    split_at_unfreeze_boundary,
    unique_slots,
)
from training.data import NO_CATEGORY, PhotoSet, TripletSampler
from training.features import pooled_feature_cache, view_outputs
from training.fitting import BACKBONE_LAYER, fit_phase, split_at_pooling, unfreeze_top
from training.models import build_embedding_model
from training.presets import PhaseConfig, preset_config

pytestmark = pytest.mark.slow

CONFIG = preset_config("ft").overridden(
    ["phase2_views=3", "cache_views=3", "phase2.batch_recipes=4", "phase2.steps_per_epoch=2", "dropout=0.3"]
)


@pytest.fixture(scope="module")
def photos() -> PhotoSet:
    n = 8
    images = np.stack([np.asarray(synthetic_photo(40 + i, size=(224, 224)), np.uint8) for i in range(n)])
    return PhotoSet(
        images=images,
        photo_recipe=np.arange(n, dtype=np.int32),
        photo_hash=[f"h{i}" for i in range(n)],
        files=[Path(f"p{i}.jpg") for i in range(n)],
        recipe_ids=[f"r{i}" for i in range(n)],
        recipe_category=np.full(n, NO_CATEGORY, np.int32),
        categories=[],
    )


def _model(seed: int = 3) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = build_embedding_model("efficientnet_lite0", None, embedding_dim=8, hidden=16, dropout=0.3)
    model.get_layer(BACKBONE_LAYER).trainable = False
    return model


def test_unique_slots_maps_every_slot_to_its_distinct_view() -> None:
    photos = np.array([[0, 0, 1], [1, 1, 2], [2, 2, 0]], np.int32)  # negatives are others' positives
    views = np.array([[3, 0, 0], [5, 0, 0], [1, 0, 0]], np.int32)
    p, v, index = unique_slots(photos, views)
    assert len(p) == 6  # 3 augmented anchors + 3 clean photos, of 9 slots
    assert index.shape == (3, 3) and index.dtype == np.int32
    np.testing.assert_array_equal(p[index], photos)
    np.testing.assert_array_equal(v[index], views)


def test_query_gallery_slots_put_anchored_slots_first() -> None:
    photos = np.array([[0, 0, 1], [1, 1, 2], [2, 2, 0]], np.int32)
    views = np.array([[3, 0, 0], [5, 0, 0], [0, 0, 0]], np.int32)  # row 2 anchors a clean photo
    p, v, index, queries = query_gallery_slots(photos, views)
    np.testing.assert_array_equal(p[index], photos)
    np.testing.assert_array_equal(v[index], views)
    assert int(queries) == 3 and (index[:, 0] < 3).all()
    # (2, 0) is row 2's anchor and row 1's negative: a query slot, so its gradient flows.
    assert {(int(a), int(b)) for a, b in zip(p[:3], v[:3], strict=True)} == {(0, 3), (1, 5), (2, 0)}
    assert {(int(a), int(b)) for a, b in zip(p[3:], v[3:], strict=True)} == {(0, 0), (1, 0)}


def test_gallery_slots_forward_only_when_asked(photos: PhotoSet) -> None:
    model = _model()
    split = split_at_unfreeze_boundary(model, 40)
    unfreeze_top(model.get_layer(BACKBONE_LAYER), 40)
    x = split.lower(photos.images[:4].astype(np.float32), training=False)
    index = tf.constant([[0, 2, 3], [1, 3, 2]], tf.int32)
    full = build_slot_triplet_model(split.upper)
    queries_only = build_slot_triplet_model(split.upper, name="q", gallery_gradient=False)
    np.testing.assert_allclose(
        queries_only((x[:2], x[2:], index), training=False), full((x, index), training=False), atol=1e-6
    )
    for triplet, inputs, moved in ((full, (x, index), True), (queries_only, (x[:2], x[2:], index), False)):
        with tf.GradientTape() as tape:
            gallery_side = tf.reduce_sum(triplet(inputs, training=False)[:, 1:] * 0.1)
        grads = tape.gradient(gallery_side, split.upper.trainable_weights)
        assert any(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads) == moved


def test_boundary_is_a_one_tensor_cut_at_or_below_the_unfrozen_layers(photos: PhotoSet) -> None:
    model = _model()
    split = split_at_unfreeze_boundary(model, 40)
    backbone = model.get_layer(BACKBONE_LAYER)
    names = [layer.name for layer in backbone.layers]
    # The cut at 40 falls inside block 6b (its residual add would cross it); the boundary is just below.
    assert names.index(split.boundary) <= len(names) - 40
    assert split.boundary == "block6b_expand_conv"
    assert split.activation_shape == (7, 7, 192) and split.bytes_per_view == 7 * 7 * 192 * 4
    x = photos.images[:3].astype(np.float32)
    whole = model(x, training=False).numpy()
    np.testing.assert_allclose(split.upper(split.lower(x, training=False), training=False), whole, atol=1e-5)
    # upper shares the model's weights: training it trains the exported model.
    assert split.upper.get_layer("projection") is model.get_layer("projection")
    features, _ = split_at_pooling(model)
    np.testing.assert_allclose(
        split.pooled(split.lower(x, training=False)).numpy(), features(x).numpy(), atol=1e-5
    )


def test_cache_holds_every_view_in_ram_or_memmapped(photos: PhotoSet, tmp_path: Path) -> None:
    model = _model()
    split = split_at_unfreeze_boundary(model, 40)
    cached = np.array([1, 2, 5])
    in_ram = build_activation_cache(split, CONFIG, photos, cached, views=3, run_dir=tmp_path, progress=False)
    assert type(in_ram.values) is np.ndarray and not (tmp_path / CACHE_FILE).exists()
    tiny_budget = CONFIG.overridden(["cache_ram_gib=0.0001"])  # 105 KiB < 9 views × 36.75 KiB
    on_disk = build_activation_cache(
        split, tiny_budget, photos, cached, views=3, run_dir=tmp_path, progress=False
    )
    assert isinstance(on_disk.values, np.memmap) and (tmp_path / CACHE_FILE).is_file()
    want = view_outputs(
        split.lower, photos, np.array([5, 2]), np.array([2, 0]), CONFIG, desc="", progress=False
    )
    for cache in (in_ram, on_disk):
        np.testing.assert_allclose(cache.gather(np.array([5, 2]), np.array([2, 0])), want, atol=1e-6)
    with pytest.raises(IndexError, match="outside the cache"):
        in_ram.gather(np.array([0]), np.array([0]))
    # Phase 1's pooled features from the same pass equal the backbone's own.
    features, _ = split_at_pooling(model)
    clean = view_outputs(features, photos, np.arange(8), np.zeros(8, int), CONFIG, desc="", progress=False)
    direct = pooled_feature_cache(CONFIG, features, photos, cached, clean, progress=False)
    np.testing.assert_allclose(
        pooled_features_from_cache(split, on_disk, photos, clean, 3), direct, atol=1e-5
    )


@pytest.mark.parametrize("gallery_gradient", [True, False])
def test_phase2_on_the_cache_equals_phase2_without_it(
    photos: PhotoSet, tmp_path: Path, gallery_gradient: bool
) -> None:
    # Keras computes the cache here as it computes the rendered path's activations, so the two runs see
    # the same numbers; onnxruntime's agreement with Keras is the next test's.
    config = CONFIG.overridden(
        [f"phase2_gallery_gradient={str(gallery_gradient).lower()}", "frozen_runtime=keras"]
    )
    recipes = {"train": np.arange(6, dtype=np.int32), "validation": np.array([6, 7], np.int32)}
    settings = PhaseConfig(epochs=2, learning_rate=1e-3, batch_recipes=4, steps_per_epoch=2)
    outcomes = []
    for cached in (True, False):
        model = _model(seed=11)
        split = split_at_unfreeze_boundary(model, 40)
        cache = build_activation_cache(
            split, config, photos, np.arange(8), views=3, run_dir=tmp_path, progress=False
        )
        unfreeze_top(model.get_layer(BACKBONE_LAYER), 40)
        before = [w.numpy() for w in model.trainable_weights]
        triplet = build_slot_triplet_model(split.upper, gallery_gradient=gallery_gradient)

        def batches(
            sampler: TripletSampler,
            training: bool,
            cache: ActivationCache = cache,
            split: BoundarySplit = split,
            cached: bool = cached,
        ) -> tf.data.Dataset:
            if cached:
                return activation_triplets(
                    sampler, cache, training=training, seed=1, gallery_gradient=gallery_gradient
                )
            return rendered_activation_triplets(sampler, split, config, training=training, seed=1)

        keras.utils.set_random_seed(99)  # the same dropout masks in both runs
        history, _ = fit_phase(
            "phase2",
            triplet,
            batches,
            config=config,
            settings=settings,
            photos=photos,
            recipes=recipes,
            views=3,
            run_dir=tmp_path / str(cached),
            strategy=tf.distribute.get_strategy(),
            progress=False,
        )
        trained = [w.numpy() for w in model.trainable_weights]
        # Training moved the unfrozen layers (else the comparison below would pass on a frozen model).
        assert sum(not np.allclose(a, b) for a, b in zip(before, trained, strict=True)) > len(trained) // 2
        outcomes.append((history, trained, model(photos.images[:2].astype(np.float32)).numpy(), before))
    (h_cache, w_cache, e_cache, start), (h_plain, w_plain, e_plain, _) = outcomes
    assert len(h_cache) == len(h_plain) == 2
    for a, b in zip(h_cache, h_plain, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-5)
    assert len(w_cache) == len(w_plain) > 4
    # Both runs took the same steps: each tensor's difference is a sliver of the way training moved it.
    # (Not element by element: float sums ordered otherwise — AVX2 against AVX-512 — move a gradient near
    # zero by a hair, and Adam's step, about the learning rate whatever the gradient's size, can flip
    # there: on a Zen 1, 3 % of elements differed by up to half a step, each tensor by < 1 % of its move.)
    for a, b, w0 in zip(w_cache, w_plain, start, strict=True):
        moved = np.linalg.norm(b - w0)
        assert np.linalg.norm(a - b) <= 0.02 * moved + 1e-7, (a.shape, np.linalg.norm(a - b), moved)
    np.testing.assert_allclose(e_cache, e_plain, atol=1e-4)


def test_phase2_with_frozen_depthwise_kernels_trains_only_the_rest(photos: PhotoSet, tmp_path: Path) -> None:
    model = _model(seed=5)
    split = split_at_unfreeze_boundary(model, 40)
    cache = build_activation_cache(
        split, CONFIG, photos, np.arange(8), views=3, run_dir=tmp_path, progress=False
    )
    backbone = model.get_layer(BACKBONE_LAYER)
    all_unfrozen = unfreeze_top(backbone, 40)
    unfrozen = unfreeze_top(backbone, 40, depthwise=False)
    top = backbone.layers[-40:]
    depthwise = [layer for layer in top if isinstance(layer, keras.layers.DepthwiseConv2D)]
    assert depthwise and unfrozen == all_unfrozen - len(depthwise)
    assert not any(layer.trainable for layer in depthwise)
    trainable = [layer for layer in top if layer.trainable and layer.weights]
    assert trainable
    frozen_before = [layer.get_weights()[0].copy() for layer in depthwise]
    trained_before = [layer.get_weights()[0].copy() for layer in trainable]
    triplet = build_slot_triplet_model(split.upper)
    fit_phase(
        "phase2",
        triplet,
        lambda sampler, training: activation_triplets(sampler, cache, training=training, seed=1),
        config=CONFIG,
        settings=PhaseConfig(epochs=1, learning_rate=1e-3, batch_recipes=4, steps_per_epoch=2),
        photos=photos,
        recipes={"train": np.arange(6, dtype=np.int32), "validation": np.array([6, 7], np.int32)},
        views=3,
        run_dir=tmp_path / "fit",
        strategy=tf.distribute.get_strategy(),
        progress=False,
    )
    for layer, kernel in zip(depthwise, frozen_before, strict=True):
        np.testing.assert_array_equal(layer.get_weights()[0], kernel)
    moved = sum(
        not np.allclose(layer.get_weights()[0], k) for layer, k in zip(trainable, trained_before, strict=True)
    )
    assert moved == len(trainable)


def test_the_cache_from_onnxruntime_agrees_with_keras(photos: PhotoSet, tmp_path: Path) -> None:
    split = split_at_unfreeze_boundary(_model(seed=7), 40)
    caches = {
        runtime: build_activation_cache(
            split,
            CONFIG.overridden([f"frozen_runtime={runtime}"]),
            photos,
            np.arange(5),
            views=3,
            run_dir=tmp_path / runtime,
            progress=False,
        ).values
        for runtime in ("keras", "onnxruntime")
    }
    keras_values, ort_values = caches["keras"], caches["onnxruntime"]
    assert keras_values.shape == ort_values.shape == (5, 3, *split.activation_shape)
    assert np.abs(keras_values).max() > 1.0  # real activations, not zeros
    # Augmented views differ from the clean one, and the two runtimes see the same rendered views.
    assert not np.allclose(keras_values[:, 0], keras_values[:, 1], atol=1e-2)
    scale = float(np.abs(keras_values).max())
    np.testing.assert_allclose(ort_values, keras_values, atol=1e-5 * scale)
