"""Per-epoch triplet metrics on the batch's own (anchor, positive, negative) rows.

All four read the row's own negative slot (a random other recipe of the batch), not the mined one,
so the figures mean the same thing whatever the mining setting; the seed notebooks' targets are
triplet accuracy ≥ 85 %, positive similarity ≥ 0.75 and negative similarity ≤ 0.30.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from training.losses import triplet_distances


def _distances(y_true: tf.Tensor, y_pred: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return triplet_distances(y_true, y_pred, "random")


def triplet_accuracy(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """1 where the positive is closer to the anchor than the negative."""
    d_ap, d_an = _distances(y_true, y_pred)
    return tf.cast(d_ap < d_an, tf.float32)


def positive_similarity(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Cosine similarity of anchor and positive."""
    d_ap, _ = _distances(y_true, y_pred)
    return 1.0 - d_ap


def negative_similarity(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Cosine similarity of anchor and negative."""
    _, d_an = _distances(y_true, y_pred)
    return 1.0 - d_an


class _TripletMean(keras.metrics.MeanMetricWrapper):
    """Mean over rows of a per-row figure of (anchor, positive, negative) distances."""

    default_name = ""

    def __init__(self, name: str | None = None, **kwargs: Any):
        kwargs.pop("fn", None)
        super().__init__(fn=self._per_row, name=name or self.default_name, **kwargs)

    def _per_row(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="recipelens")
class TripletAccuracy(_TripletMean):
    """Share of rows with d(a,p) < d(a,n)."""

    default_name = "triplet_accuracy"

    def _per_row(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return triplet_accuracy(y_true, y_pred)


@keras.saving.register_keras_serializable(package="recipelens")
class TripletMarginAccuracy(_TripletMean):
    """Share of rows with d(a,p) + margin < d(a,n): the ones the loss no longer pushes."""

    default_name = "triplet_margin_accuracy"

    def __init__(self, margin: float = 0.3, name: str | None = None, **kwargs: Any):
        self.margin = float(margin)
        super().__init__(name=name, **kwargs)

    def _per_row(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        d_ap, d_an = _distances(y_true, y_pred)
        return tf.cast(d_ap + self.margin < d_an, tf.float32)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin}


@keras.saving.register_keras_serializable(package="recipelens")
class PositiveSimilarity(_TripletMean):
    """Average cosine similarity of anchor and positive."""

    default_name = "pos_similarity"

    def _per_row(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return positive_similarity(y_true, y_pred)


@keras.saving.register_keras_serializable(package="recipelens")
class NegativeSimilarity(_TripletMean):
    """Average cosine similarity of anchor and negative."""

    default_name = "neg_similarity"

    def _per_row(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return negative_similarity(y_true, y_pred)


def triplet_metrics(margin: float) -> list[keras.metrics.Metric]:
    """The four per-epoch metrics, in the order the curves and reports show them."""
    return [TripletAccuracy(), TripletMarginAccuracy(margin), PositiveSimilarity(), NegativeSimilarity()]
