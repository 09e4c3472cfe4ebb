"""Custom Keras layers of recipelens models, registered so a saved ``.keras`` file reloads anywhere.

Every layer here is registered under the ``recipelens`` package and round-trips through ``get_config``.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

SERIALIZATION_PACKAGE = "recipelens"


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class L2Normalization(keras.layers.Layer):
    """Scale vectors to unit L2 norm along ``axis`` (``x / sqrt(max(sum(x²), epsilon))``)."""

    def __init__(self, axis: int = -1, epsilon: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis = axis
        self.epsilon = epsilon

    def call(self, inputs: Any) -> Any:
        squared = ops.sum(ops.square(inputs), axis=self.axis, keepdims=True)
        return inputs * ops.rsqrt(ops.maximum(squared, self.epsilon))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"axis": self.axis, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class GeneralizedMeanPooling(keras.layers.Layer):
    """GeM pooling (Radenović et al.): ``(mean over H×W of max(x, ε)^p)^(1/p)``, per channel.

    ``p = 1`` is average pooling, ``p → ∞`` max pooling; ``p = 3`` weights the strongest (salient)
    activations more, which is what instance retrieval under crops and clutter tends to want.
    """

    def __init__(self, p: float = 3.0, epsilon: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.p = float(p)
        self.epsilon = float(epsilon)

    def call(self, inputs: Any) -> Any:
        x = ops.power(ops.maximum(inputs, self.epsilon), self.p)
        return ops.power(ops.mean(x, axis=(1, 2)), 1.0 / self.p)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "p": self.p, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class GatherSlots(keras.layers.Layer):
    """``[(U, D) embeddings of distinct inputs, (P, 3) int index]`` → ``(P, 3, D)`` triplet embeddings."""

    def call(self, inputs: Any) -> Any:
        embeddings, index = inputs
        return ops.take(embeddings, ops.cast(index, "int32"), axis=0)

    def compute_output_shape(self, input_shape: Any) -> Any:
        (_, dim), (rows, _) = input_shape
        return (rows, 3, dim)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class ExtractTripletComponent(keras.layers.Layer):
    """Slot ``index`` (0 anchor, 1 positive, 2 negative) of a ``(batch, 3, ...)`` triplet tensor."""

    def __init__(self, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if index not in (0, 1, 2):
            raise ValueError(f"triplet component index must be 0, 1 or 2, got {index}")
        self.index = index

    def call(self, inputs: Any) -> Any:
        return inputs[:, self.index]

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], *input_shape[2:])

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"index": self.index})
        return config


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class TripletStack(keras.layers.Layer):
    """Three ``(batch, D)`` embeddings → one ``(batch, 3, D)`` tensor (anchor, positive, negative)."""

    def call(self, inputs: Any) -> Any:
        if len(inputs) != 3:
            raise ValueError(f"TripletStack takes exactly 3 inputs, got {len(inputs)}")
        return ops.stack(list(inputs), axis=1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        first = input_shape[0]
        return (first[0], 3, *first[1:])
