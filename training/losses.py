"""Triplet loss on cosine distance: ``max(0, d(a,p) − d(a,n) + margin)`` with online mining."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from training.mining import MINING_STRATEGIES, cosine_distance, select_negatives
from training.presets import Mining


def triplet_distances(
    labels: tf.Tensor, embeddings: tf.Tensor, mining: Mining
) -> tuple[tf.Tensor, tf.Tensor]:
    """(P, 3) labels + (P, 3, D) embeddings → d(a,p) and d(a,n) per row, the negative mined."""
    embeddings = tf.cast(embeddings, tf.float32)
    labels = tf.cast(labels, tf.int32)
    anchors, positives = embeddings[:, 0], embeddings[:, 1]
    pool = tf.reshape(embeddings, (-1, tf.shape(embeddings)[-1]))
    negatives = tf.gather(pool, select_negatives(embeddings, labels, mining))
    return cosine_distance(anchors, positives), cosine_distance(anchors, negatives)


@keras.saving.register_keras_serializable(package="recipelens")
class TripletLoss(keras.losses.Loss):
    """Per-row hinge on cosine distance; ``y_true`` is the (P, 3) label array of the batch."""

    def __init__(
        self, margin: float = 0.3, mining: Mining = "random", name: str = "triplet_loss", **kwargs: Any
    ):
        super().__init__(name=name, **kwargs)
        if mining not in MINING_STRATEGIES:
            raise ValueError(
                f"unknown mining strategy {mining!r}; choose one of {', '.join(MINING_STRATEGIES)}"
            )
        self.margin = float(margin)
        self.mining: Mining = mining

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        d_ap, d_an = triplet_distances(y_true, y_pred, self.mining)
        return tf.maximum(d_ap - d_an + self.margin, 0.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin, "mining": self.mining}
