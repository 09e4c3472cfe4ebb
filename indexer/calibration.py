"""The match verdict: "strong", "weak" or "none" for a query's hits, calibrated per collection.

A raw score threshold cannot say "no good match": uniform noise scores 0.77 against the demo
catalogue with the raw model, higher than real food photos that are not in it. So the verdict
weighs two nearest-neighbour scores of the query:

* ``s`` — its best hit in the catalogue (what the search returns anyway), and
* ``r`` — its best match in a small bank of generated non-food pictures (:mod:`indexer.nonfood`:
  noise, flat colours, gradients, text, screenshots, textures, patterns, shapes), stored with the
  calibration,

as the evidence ``e = s − w·r`` (``w`` = :data:`REFERENCE_WEIGHT`). Noise and text sit far closer to
the bank than to any dish; a real non-food photo is close to neither, and its ``s`` stays below what
a distorted catalogue photo reaches.

The thresholds are measured on the collection itself when it is built (:func:`fit_calibration`):
distorted copies of a sample of its own photos are searched; ``none`` is more than
:data:`NONE_SIGMAS` standard deviations below the mean of their evidence (a normal tail: far steadier
than an empirical 2 % quantile of a hundred photos), ``strong`` is above the :data:`STRONG_QUANTILE` of the
evidence their best *other* recipe reaches (closer than similar dishes ever get: the same dish).
Each hit's confidence is a logistic through (none threshold, 0.2) and (strong threshold, 0.8).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Match = Literal["strong", "weak", "none"]

CALIBRATION_KEY = "match_calibration"  # the collection's metadata field
CALIBRATION_FORMAT = 1
REFERENCE_WEIGHT = 0.5
NONE_SIGMAS = 2.5
STRONG_QUANTILE = 0.95
MIN_SPREAD = 0.05  # strong threshold at least this far above the none threshold
_LOW_CONFIDENCE, _HIGH_CONFIDENCE = 0.2, 0.8


@dataclass(frozen=True)
class MatchVerdict:
    """The verdict of one query and the confidence of each of its hits, in hit order."""

    match: Match
    confidences: tuple[float, ...]
    evidence: float
    reference_score: float


@dataclass(frozen=True)
class MatchCalibration:
    """Thresholds and the non-food reference bank of one collection, tied to its model version."""

    model_version: str
    none_below: float
    strong_from: float
    references: np.ndarray  # (M, D) unit rows: the embedded non-food bank
    reference_weight: float = REFERENCE_WEIGHT
    samples: int = 0

    def reference_score(self, query: np.ndarray) -> float:
        """The query's best cosine similarity to the non-food bank."""
        if len(self.references) == 0:
            return 0.0
        q = np.asarray(query, np.float32).reshape(-1)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        return float(np.max(self.references @ q))

    def confidence(self, evidence: float) -> float:
        """A logistic of the evidence through (none_below, 0.2) and (strong_from, 0.8)."""
        mid = (self.none_below + self.strong_from) / 2.0
        slope = 2.0 * math.log(_HIGH_CONFIDENCE / _LOW_CONFIDENCE) / (self.strong_from - self.none_below)
        x = max(-60.0, min(60.0, slope * (evidence - mid)))
        return 1.0 / (1.0 + math.exp(-x))

    def to_metadata(self) -> dict[str, Any]:
        """JSON-safe form for the collection's metadata (the bank as base64 int8 rows with float32 scales).

        int8 keeps every verdict of the demo figures and halves the metadata every store read carries.
        """
        refs = np.asarray(self.references, np.float32)
        scale = np.maximum(np.abs(refs).max(axis=1), 1e-12) / 127.0 if len(refs) else np.zeros(0, np.float32)
        quantised = np.clip(np.round(refs / scale[:, None]), -127, 127).astype(np.int8) if len(refs) else refs
        return {
            "format": CALIBRATION_FORMAT,
            "model_version": self.model_version,
            "none_below": round(float(self.none_below), 6),
            "strong_from": round(float(self.strong_from), 6),
            "reference_weight": float(self.reference_weight),
            "samples": int(self.samples),
            "references_shape": list(refs.shape),
            "references_i8": base64.b64encode(np.ascontiguousarray(quantised, np.int8).tobytes()).decode(
                "ascii"
            ),
            "references_scale": base64.b64encode(np.ascontiguousarray(scale, "<f4").tobytes()).decode(
                "ascii"
            ),
        }

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> MatchCalibration:
        """Raises ``ValueError`` when the metadata is not a calibration this code reads."""
        if int(data.get("format", 0)) != CALIBRATION_FORMAT:
            raise ValueError(f"unknown match calibration format {data.get('format')!r}")
        rows, dim = (int(v) for v in data["references_shape"])
        if "references_i8" in data:
            raw = np.frombuffer(base64.b64decode(str(data["references_i8"]), validate=True), np.int8)
            scale = np.frombuffer(base64.b64decode(str(data["references_scale"]), validate=True), "<f4")
            if raw.size != rows * dim or scale.size != rows:
                raise ValueError("match calibration: reference bank does not fit its shape")
            refs = raw.reshape(rows, dim).astype(np.float32) * scale[:, None]
            refs = (refs / np.maximum(np.linalg.norm(refs, axis=1, keepdims=True), 1e-12)).reshape(-1)
        else:  # the first builds stored float16
            refs = np.frombuffer(base64.b64decode(str(data["references_f16"]), validate=True), "<f2").astype(
                np.float32
            )
            if refs.size != rows * dim:
                raise ValueError("match calibration: reference bank does not fit its shape")
        return cls(
            model_version=str(data["model_version"]),
            none_below=float(data["none_below"]),
            strong_from=float(data["strong_from"]),
            references=refs.reshape(rows, dim),
            reference_weight=float(data.get("reference_weight", REFERENCE_WEIGHT)),
            samples=int(data.get("samples", 0)),
        )


def match_verdict(calibration: MatchCalibration, query: np.ndarray, scores: Sequence[float]) -> MatchVerdict:
    """The verdict of a query vector whose hits scored ``scores`` (best first), and each hit's confidence."""
    reference = calibration.reference_score(query)
    penalty = calibration.reference_weight * reference
    confidences = tuple(calibration.confidence(float(s) - penalty) for s in scores)
    evidence = (float(scores[0]) if len(scores) else -1.0) - penalty
    match: Match
    if not len(scores) or evidence < calibration.none_below:
        match = "none"
    elif evidence >= calibration.strong_from:
        match = "strong"
    else:
        match = "weak"
    return MatchVerdict(match, confidences, evidence, reference)


def fit_calibration(
    model_version: str,
    *,
    queries: np.ndarray,
    top_scores: np.ndarray,
    other_scores: np.ndarray,
    references: np.ndarray,
    reference_weight: float = REFERENCE_WEIGHT,
) -> MatchCalibration:
    """Thresholds from distorted copies of catalogue photos searched in their own collection.

    ``queries`` (N, D) are their vectors, ``top_scores`` their best hit's score and ``other_scores``
    the best score of a recipe other than their own; ``references`` (M, D) the embedded non-food bank.
    """
    q = np.asarray(queries, np.float32)
    refs = np.asarray(references, np.float32)
    refs = refs / np.maximum(np.linalg.norm(refs, axis=1, keepdims=True), 1e-12)
    if len(q) == 0:
        raise ValueError("a match calibration needs at least one query")
    penalty = reference_weight * (np.max(q @ refs.T, axis=1) if len(refs) else np.zeros(len(q)))
    own = np.asarray(top_scores, np.float64) - penalty
    other = np.asarray(other_scores, np.float64) - penalty
    none_below = float(own.mean() - NONE_SIGMAS * own.std())
    other = other[np.isfinite(other)]
    strong_from = float(np.quantile(other, STRONG_QUANTILE)) if len(other) else none_below + MIN_SPREAD
    strong_from = max(strong_from, none_below + MIN_SPREAD)
    return MatchCalibration(
        model_version=model_version,
        none_below=none_below,
        strong_from=strong_from,
        references=refs,
        reference_weight=reference_weight,
        samples=len(q),
    )


def calibration_of(extra: dict[str, Any], model_version: str) -> MatchCalibration | None:
    """The calibration a collection's metadata holds for ``model_version``; None if absent or unreadable."""
    data = extra.get(CALIBRATION_KEY)
    if not isinstance(data, dict):
        return None
    try:
        calibration = MatchCalibration.from_metadata(data)
    except (KeyError, TypeError, ValueError):
        return None
    return calibration if calibration.model_version == model_version else None


def verdict_rates(
    gallery: np.ndarray,
    gallery_recipes: Sequence[str] | np.ndarray,
    queries: np.ndarray,
    query_recipes: Sequence[str] | np.ndarray,
    *,
    bank: np.ndarray,
    nonfood: np.ndarray,
    model_version: str = "",
) -> tuple[float, float]:
    """(food not none, non-food none) of the verdict on embeddings alone, for the training evaluation.

    ``queries`` are distorted copies of gallery photos (their recipes in ``query_recipes``), ``bank`` the
    embedded :func:`~indexer.nonfood.reference_bank`, ``nonfood`` other non-food pictures.
    The calibration is fitted on the queries of every other recipe and checked on the rest, as a build does.
    """
    g = np.asarray(gallery, np.float32)
    recipes = np.asarray(gallery_recipes)
    sims = np.asarray(queries, np.float32) @ g.T
    own = recipes[None, :] == np.asarray(query_recipes)[:, None]
    top = sims.max(axis=1)
    other = np.where(own, -np.inf, sims).max(axis=1)
    order = {rid: i for i, rid in enumerate(sorted(set(query_recipes)))}
    fit = np.asarray([order[r] % 2 == 0 for r in query_recipes])
    if fit.all() or not fit.any():
        fit[:] = True
    calibration = fit_calibration(
        model_version, queries=queries[fit], top_scores=top[fit], other_scores=other[fit], references=bank
    )
    held = ~fit if (~fit).any() else fit
    food = [
        match_verdict(calibration, q, [s]).match != "none"
        for q, s in zip(queries[held], top[held], strict=True)
    ]
    nonfood_top = (np.asarray(nonfood, np.float32) @ g.T).max(axis=1)
    rejected = [
        match_verdict(calibration, v, [s]).match == "none" for v, s in zip(nonfood, nonfood_top, strict=True)
    ]
    return float(np.mean(food)), float(np.mean(rejected))
