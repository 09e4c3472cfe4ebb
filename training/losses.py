"""Triplet loss on cosine distance: ``max(0, d(a,p) − d(a,n) + margin)`` with online mining.

Optionally (``nce_weight > 0``) a temperature-scaled contrastive term next to it (InfoNCE / NT-Xent,
supervised form): each anchor against every other embedding of the batch, softmax over cosine
similarities / ``temperature``, minus the log of the probability mass on its own label. Where the
hinge looks at one mined negative, this term pushes against all of them at once, weighted by how close
they are.

Optionally (``ms_weight > 0``) the multi-similarity loss of Wang et al. (CVPR 2019) next to it: each
anchor's pairs with the rest of the batch, mined by the paper's rule (a negative counts when it is
closer than the anchor's hardest positive + ε, a positive when it is farther than the hardest negative
− ε), weighted by a soft-plus over all of them at once — ``(1/α) log(1 + Σ_pos exp(−α(s − λ)))`` pulls
the positives above λ, ``(1/β) log(1 + Σ_neg exp(β(s − λ)))`` pushes the negatives below it.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from training.mining import MINING_STRATEGIES, anchor_pairs, cosine_distance, select_negatives
from training.presets import Mining


def triplet_distances(
    labels: tf.Tensor, embeddings: tf.Tensor, mining: Mining, *, gallery_only: bool = False
) -> tuple[tf.Tensor, tf.Tensor]:
    """(P, 3) labels + (P, 3, D) embeddings → d(a,p) and d(a,n) per row, the negative mined."""
    embeddings = tf.cast(embeddings, tf.float32)
    labels = tf.cast(labels, tf.int32)
    anchors, positives = embeddings[:, 0], embeddings[:, 1]
    pool = tf.reshape(embeddings, (-1, tf.shape(embeddings)[-1]))
    negatives = tf.gather(pool, select_negatives(embeddings, labels, mining, gallery_only=gallery_only))
    return cosine_distance(anchors, positives), cosine_distance(anchors, negatives)


def contrastive_term(labels: tf.Tensor, embeddings: tf.Tensor, temperature: float) -> tf.Tensor:
    """(P, 3) labels + (P, 3, D) unit embeddings → (P,) supervised InfoNCE of each row's anchor.

    ``−log Σ_same exp(s/τ) / Σ_all exp(s/τ)`` over the other 3P − 1 embeddings of the batch; a row
    whose anchor has no other embedding of its label contributes 0.
    """
    sims, same, other = anchor_pairs(tf.cast(embeddings, tf.float32), tf.cast(labels, tf.int32))
    logits = sims / temperature  # (P, 3P)
    neg_inf = tf.constant(-1e9, logits.dtype)
    everything = tf.reduce_logsumexp(tf.where(tf.logical_or(same, other), logits, neg_inf), axis=1)
    positives = tf.reduce_logsumexp(tf.where(same, logits, neg_inf), axis=1)
    return tf.where(tf.reduce_any(same, axis=1), everything - positives, 0.0)


def multi_similarity_term(
    labels: tf.Tensor,
    embeddings: tf.Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
) -> tf.Tensor:
    """(P, 3) labels + (P, 3, D) unit embeddings → (P,) multi-similarity loss of each row's anchor.

    The anchor against the other 3P − 1 embeddings of the batch, pairs mined as in the paper; a row
    whose anchor has no positive or no negative in the batch contributes 0.
    """
    sims, positive, negative = anchor_pairs(tf.cast(embeddings, tf.float32), tf.cast(labels, tf.int32))
    big = tf.constant(1e9, sims.dtype)
    hardest_positive = tf.reduce_min(tf.where(positive, sims, big), axis=1, keepdims=True)
    hardest_negative = tf.reduce_max(tf.where(negative, sims, -big), axis=1, keepdims=True)
    kept_negative = tf.logical_and(negative, sims + epsilon > hardest_positive)
    kept_positive = tf.logical_and(positive, sims - epsilon < hardest_negative)
    zero = tf.zeros_like(sims)
    pull = tf.reduce_sum(tf.where(kept_positive, tf.exp(-alpha * (sims - base)), zero), axis=1)
    push = tf.reduce_sum(tf.where(kept_negative, tf.exp(beta * (sims - base)), zero), axis=1)
    loss = tf.math.log1p(pull) / alpha + tf.math.log1p(push) / beta
    has_both = tf.logical_and(tf.reduce_any(positive, axis=1), tf.reduce_any(negative, axis=1))
    return tf.where(has_both, loss, 0.0)


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
        *,
        mine_gallery_only: bool = False,
        ms_weight: float = 0.0,
        ms_alpha: float = 2.0,
        ms_beta: float = 50.0,
        ms_base: float = 0.5,
        ms_epsilon: float = 0.1,
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
        if ms_alpha <= 0 or ms_beta <= 0:
            raise ValueError(f"ms_alpha and ms_beta must be > 0, got {ms_alpha} and {ms_beta}")
        self.mine_gallery_only = bool(mine_gallery_only)
        self.ms_weight = float(ms_weight)
        self.ms_alpha = float(ms_alpha)
        self.ms_beta = float(ms_beta)
        self.ms_base = float(ms_base)
        self.ms_epsilon = float(ms_epsilon)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        d_ap, d_an = triplet_distances(y_true, y_pred, self.mining, gallery_only=self.mine_gallery_only)
        loss = tf.maximum(d_ap - d_an + self.margin, 0.0)
        if self.nce_weight:
            loss += self.nce_weight * contrastive_term(y_true, y_pred, self.temperature)
        if self.ms_weight:
            loss += self.ms_weight * multi_similarity_term(
                y_true,
                y_pred,
                alpha=self.ms_alpha,
                beta=self.ms_beta,
                base=self.ms_base,
                epsilon=self.ms_epsilon,
            )
        return loss

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "margin": self.margin,
            "mining": self.mining,
            "nce_weight": self.nce_weight,
            "temperature": self.temperature,
            "mine_gallery_only": self.mine_gallery_only,
            "ms_weight": self.ms_weight,
            "ms_alpha": self.ms_alpha,
            "ms_beta": self.ms_beta,
            "ms_base": self.ms_base,
            "ms_epsilon": self.ms_epsilon,
        }
