"""Frozen passes: onnxruntime where it converts, Keras where it does not (or with a GPU)."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.export import ExportError
from training.features import frozen_fn
from training.presets import preset_config

CONFIG = preset_config("ft")


def _small_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    image = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(image)
    x = keras.layers.DepthwiseConv2D(5, padding="same")(x)
    x = keras.layers.Conv2D(8, 1, activation="relu6")(x)
    return keras.Model(image, keras.layers.GlobalAveragePooling2D()(x), name="small")


def test_onnxruntime_and_keras_agree() -> None:
    model = _small_model()
    x = np.random.default_rng(1).uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    in_keras = frozen_fn(model, CONFIG.overridden(["frozen_runtime=keras"]))(x)
    in_ort = frozen_fn(model, CONFIG.overridden(["frozen_runtime=onnxruntime"]))(x)
    assert in_keras.shape == in_ort.shape == (6, 8) and in_ort.dtype == np.float32
    assert np.abs(in_keras).max() > 0.01
    np.testing.assert_allclose(in_ort, in_keras, atol=1e-5)
    # uint8 views, as the view pipeline renders them, give the same numbers
    np.testing.assert_allclose(
        frozen_fn(model, CONFIG)(np.round(x).astype(np.uint8)),
        in_keras,
        atol=0.05,  # the float inputs were not whole numbers
    )


def test_auto_keeps_keras_for_what_does_not_convert(caplog: pytest.LogCaptureFixture) -> None:
    small = _small_model()
    python_op = keras.layers.Lambda(
        lambda t: tf.numpy_function(lambda z: z, [t], tf.float32, stateful=False), output_shape=(8,)
    )
    model = keras.Model(small.input, python_op(small.output), name="with_python_op")
    x = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="training.features"):
        out = frozen_fn(model, CONFIG)(x)  # frozen_runtime=auto
    assert "with_python_op stays in Keras" in caplog.text
    np.testing.assert_allclose(out, small(x, training=False).numpy(), atol=1e-6)
    # Asked for explicitly, the conversion's failure is the error, naming the model and the op.
    with pytest.raises(ExportError, match="could not convert with_python_op: ops PyFuncStateless"):
        frozen_fn(model, CONFIG.overridden(["frozen_runtime=onnxruntime"]))
