"""Triplet loss on cosine distance: ``max(0, d(a,p) − d(a,n) + margin)`` with online mining.

Optionally (``nce_weight > 0``) a temperature-scaled contrastive term next to it (InfoNCE / NT-Xent,
supervised form): each anchor against every other embedding of the batch, softmax over cosine
similarities / ``temperature``, minus the log of the probability mass on its own label. Where the
hinge looks at one mined negative, this term pushes against all of them at once, weighted by how close
they are.
"""

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


def contrastive_term(labels: tf.Tensor, embeddings: tf.Tensor, temperature: float) -> tf.Tensor:
    """(P, 3) labels + (P, 3, D) unit embeddings → (P,) supervised InfoNCE of each row's anchor.

    ``−log Σ_same exp(s/τ) / Σ_all exp(s/τ)`` over the other 3P − 1 embeddings of the batch; a row
    whose anchor has no other embedding of its label contributes 0.
    """
    embeddings = tf.cast(embeddings, tf.float32)
    labels = tf.cast(labels, tf.int32)
    rows = tf.shape(embeddings)[0]
    pool = tf.reshape(embeddings, (-1, tf.shape(embeddings)[-1]))
    pool_labels = tf.reshape(labels, (-1,))
    logits = tf.matmul(embeddings[:, 0], pool, transpose_b=True) / temperature  # (P, 3P)
    not_self = tf.logical_not(tf.one_hot(tf.range(rows) * 3, 3 * rows, on_value=True, off_value=False))
    same = tf.logical_and(tf.equal(labels[:, :1], pool_labels[None, :]), not_self)
    neg_inf = tf.constant(-1e9, logits.dtype)
    everything = tf.reduce_logsumexp(tf.where(not_self, logits, neg_inf), axis=1)
    positives = tf.reduce_logsumexp(tf.where(same, logits, neg_inf), axis=1)
    return tf.where(tf.reduce_any(same, axis=1), everything - positives, 0.0)


@keras.saving.register_keras_serializable(package="recipelens")
class TripletLoss(keras.losses.Loss):
    """Per-row hinge on cosine distance; ``y_true`` is the (P, 3) label array of the batch."""

    def __init__(
        self,
        margin: float = 0.3,
        mining: Mining = "random",
        name: str = "triplet_loss",
        nce_weight: float = 0.0,
        temperature: float = 0.05,
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        if mining not in MINING_STRATEGIES:
            raise ValueError(
                f"unknown mining strategy {mining!r}; choose one of {', '.join(MINING_STRATEGIES)}"
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.margin = float(margin)
        self.mining: Mining = mining
        self.nce_weight = float(nce_weight)
        self.temperature = float(temperature)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        d_ap, d_an = triplet_distances(y_true, y_pred, self.mining)
        hinge = tf.maximum(d_ap - d_an + self.margin, 0.0)
        if self.nce_weight == 0:
            return hinge
        return hinge + self.nce_weight * contrastive_term(y_true, y_pred, self.temperature)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "margin": self.margin,
            "mining": self.mining,
            "nce_weight": self.nce_weight,
            "temperature": self.temperature,
        }
