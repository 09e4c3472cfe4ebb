"""Per-epoch triplet metrics on the batch's own (anchor, positive, negative) rows.

All four read the row's own negative slot (a random other recipe of the batch), not the mined one,
so the figures mean the same thing whatever the mining setting; the seed notebooks' targets are
triplet accuracy ≥ 85 %, positive similarity ≥ 0.75 and negative similarity ≤ 0.30.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from training.losses import triplet_distances

# figure → its per-row value from (d(a,p), d(a,n), margin)
_FIGURES: dict[str, Callable[[tf.Tensor, tf.Tensor, float], tf.Tensor]] = {
    "triplet_accuracy": lambda d_ap, d_an, _: tf.cast(d_ap < d_an, tf.float32),
    "triplet_margin_accuracy": lambda d_ap, d_an, margin: tf.cast(d_ap + margin < d_an, tf.float32),
    "pos_similarity": lambda d_ap, _, __: 1.0 - d_ap,  # cosine similarity of anchor and positive
    "neg_similarity": lambda _, d_an, __: 1.0 - d_an,  # cosine similarity of anchor and negative
}


@keras.saving.register_keras_serializable(package="recipelens")
class TripletMetric(keras.metrics.MeanMetricWrapper):
    """Mean over the batch's rows of one figure of their (anchor, positive, negative) distances.

    ``figure``: ``triplet_accuracy`` (share with d(a,p) < d(a,n)), ``triplet_margin_accuracy`` (share
    with d(a,p) + margin < d(a,n): the rows the loss no longer pushes), ``pos_similarity`` /
    ``neg_similarity`` (average cosine similarity of anchor and positive / negative).
    """

    def __init__(self, figure: str, margin: float = 0.0, name: str | None = None, **kwargs: Any):
        if figure not in _FIGURES:
            raise ValueError(f"unknown triplet figure {figure!r}; choose one of {', '.join(_FIGURES)}")
        self.figure, self.margin = figure, float(margin)
        kwargs.pop("fn", None)
        super().__init__(fn=self._per_row, name=name or figure, **kwargs)

    def _per_row(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        d_ap, d_an = triplet_distances(y_true, y_pred, "random")
        return _FIGURES[self.figure](d_ap, d_an, self.margin)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "figure": self.figure, "margin": self.margin}


def triplet_metrics(margin: float) -> list[keras.metrics.Metric]:
    """The four per-epoch metrics, in the order the curves and reports show them."""
    return [TripletMetric(figure, margin) for figure in _FIGURES]
