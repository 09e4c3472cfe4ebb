"""Triplet models and freezing: layers serialise, models round-trip, cached features give the same loss."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.fitting import build_triplet_model, split_at_pooling, unfreeze_top
from training.layers import ExtractTripletComponent, GeneralizedMeanPooling, L2Normalization, TripletStack
from training.losses import TripletLoss
from training.models import build_embedding_model


@pytest.fixture(scope="module")
def lite0() -> keras.Model:
    """The real embedding model (EfficientNet-Lite0 + head), random weights: same graph, no file read."""
    keras.utils.set_random_seed(7)
    return build_embedding_model("efficientnet_lite0", None)


def _small_embedding(dim: int = 8) -> keras.Model:
    inputs = keras.Input((5,), name="features")
    x = keras.layers.Dense(dim, name="proj")(inputs)
    return keras.Model(inputs, L2Normalization(name="unit")(x), name="small")


def test_layers_serialise_and_rebuild() -> None:
    for layer in (ExtractTripletComponent(2, name="slot2"), TripletStack(name="stack")):
        config = keras.saving.serialize_keras_object(layer)
        assert config["module"] is None or "recipelens" in config["registered_name"]
        rebuilt = keras.saving.deserialize_keras_object(config)
        assert type(rebuilt) is type(layer) and rebuilt.get_config() == layer.get_config()
    x = tf.reshape(tf.range(2 * 3 * 4, dtype=tf.float32), (2, 3, 4))
    np.testing.assert_array_equal(ExtractTripletComponent(1)(x).numpy(), x.numpy()[:, 1])
    parts = [x[:, i] for i in range(3)]
    np.testing.assert_array_equal(TripletStack()(parts).numpy(), x.numpy())
    with pytest.raises(ValueError, match="0, 1 or 2"):
        ExtractTripletComponent(3)


def test_gem_pooling_is_a_generalized_mean_and_serialises() -> None:
    x = np.random.default_rng(4).uniform(0, 6, size=(2, 3, 3, 5)).astype(np.float32)
    gem = GeneralizedMeanPooling(3.0)
    want = np.mean(x**3, axis=(1, 2)) ** (1 / 3)
    np.testing.assert_allclose(gem(x).numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(GeneralizedMeanPooling(1.0)(x).numpy(), x.mean(axis=(1, 2)), rtol=1e-5)
    assert (gem(x).numpy() > x.mean(axis=(1, 2))).all()  # leans towards the strongest activations
    rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(gem))
    assert isinstance(rebuilt, GeneralizedMeanPooling) and rebuilt.p == 3.0


def test_triplet_model_round_trips_through_keras_file(tmp_path: Path) -> None:
    keras.utils.set_random_seed(1)
    triplet = build_triplet_model(_small_embedding())
    triplet.compile(optimizer="adam", loss=TripletLoss(margin=0.5, mining="semi-hard"))
    triplet.optimizer.build(triplet.trainable_variables)
    x = np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32)
    before = triplet.predict(x, verbose=0)
    assert before.shape == (4, 3, 8)
    np.testing.assert_allclose(np.linalg.norm(before, axis=-1), 1.0, atol=1e-5)
    path = tmp_path / "triplet.keras"
    triplet.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), before, atol=1e-6)
    assert (
        isinstance(loaded.loss, TripletLoss)
        and loaded.loss.mining == "semi-hard"
        and loaded.loss.margin == 0.5
    )
    assert [type(layer).__name__ for layer in loaded.layers].count("ExtractTripletComponent") == 3


def test_lite0_triplet_model_shapes(lite0: keras.Model) -> None:
    triplet = build_triplet_model(lite0)
    assert tuple(triplet.input_shape) == (None, 3, 224, 224, 3)
    assert tuple(triplet.output_shape) == (None, 3, 512)


def test_cached_features_give_the_same_loss_as_images(lite0: keras.Model) -> None:
    images = np.random.default_rng(3).integers(0, 256, size=(4, 3, 224, 224, 3)).astype(np.float32)
    labels = tf.constant([[0, 0, 1], [1, 1, 2], [2, 2, 3], [3, 3, 0]], tf.float32)
    loss = TripletLoss(margin=0.8, mining="batch-hard")
    uncached = build_triplet_model(lite0)(images, training=False)
    features_model, head = split_at_pooling(lite0)
    cache = features_model(images.reshape(-1, 224, 224, 3), training=False).numpy().reshape(4, 3, -1)
    assert cache.shape == (4, 3, 1280)
    cached = build_triplet_model(head, name="head_triplet")(cache, training=False)
    np.testing.assert_allclose(cached.numpy(), uncached.numpy(), atol=1e-5)
    assert float(loss(labels, cached)) == pytest.approx(float(loss(labels, uncached)), abs=1e-5)
    # The head shares the embedding model's weights: training it trains the exported model.
    assert head.get_layer("projection").kernel is lite0.get_layer("projection").kernel


def test_unfreeze_keeps_batchnorm_frozen(lite0: keras.Model) -> None:
    backbone = lite0.get_layer("backbone")
    try:
        unfrozen = unfreeze_top(backbone, 40)
        top = backbone.layers[-40:]
        assert unfrozen == sum(
            1 for layer in top if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
        )
        assert unfrozen > 0
        assert all(not layer.trainable for layer in top if isinstance(layer, keras.layers.BatchNormalization))
        assert all(not layer.trainable for layer in backbone.layers[:-40])
        assert any(layer.trainable for layer in top if layer.weights)
    finally:
        backbone.trainable = False
