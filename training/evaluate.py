"""Held-out evaluation, always the trained model side by side with the raw backbone.

* **Instance retrieval** — the query is a distorted copy of a held-out recipe's photo (crop, rotation,
  light change, JPEG recompression, then the one preprocessing function, as a phone photo would go);
  the gallery is the whole catalogue's clean photos. A recipe ranks by its best photo. Recall@k: the
  query's recipe is among the first k recipes. mAP@10 over the photo ranking, relevant = the recipe's
  photos.
* **Same-category precision** — when the catalogue has categories: for each clean held-out photo, its
  nearest photos of *other* recipes; P@k is the share of the first k that share its category.
* **Noise** — every figure is a mean over few held-out photos (each with several distorted queries), so
  the report gives the trained model's difference to the raw backbone on the *same* queries with a 95 %
  bootstrap interval that resamples whole photos (a photo's queries move together), and the count of
  queries each model gets right that the other misses. "Beats raw" means the interval lies above 0.
* **Match verdict** — for the raw and the trained model, the verdict of :mod:`indexer.calibration`
  calibrated as a build does (:func:`~indexer.calibration.verdict_rates`: thresholds fitted on the
  distorted queries of every other held-out recipe, checked on the rest, with the build's reference
  bank): the share of distorted held-out queries that do *not* get ``none`` (goal ≥ 95 %) and of the
  non-food test family of :mod:`indexer.nonfood`, disjoint from the bank, that does (goal ≥ 90 %).
The report and pictures are written by :mod:`training.run_report`.

Everything here is numpy and Pillow: the embeddings come in as arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedder.preprocess import IMAGE_SIZE, preprocess
from indexer.calibration import verdict_rates
from indexer.distortions import DISTORTIONS, distort
from indexer.nonfood import BANK_SIZE, nonfood_test_set, reference_bank

log = logging.getLogger(__name__)

RECALL_AT = (1, 5, 10)
MAP_AT = 10
PRECISION_AT = (1, 5)
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
METRIC_LABELS = {"recall@1": "R@1", "category_p@5": "cat P@5"}
NONFOOD_TEST_GENERATED = 48  # generated pictures of the test family, beside scikit-image's real photos
VERDICT_GOALS = {"food_not_none": 0.95, "nonfood_none": 0.90}


def make_queries(
    files: Sequence[Path], per_photo: int, seed: int, level: str = "moderate", *, size: int = IMAGE_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """(Q, S, S, 3) uint8 distorted views of ``files`` and the index of the photo each came from.

    The distorted JPEG bytes do not depend on ``size`` (the model's input side), so every backbone is
    queried with the same photos.
    """
    if level not in DISTORTIONS:
        raise ValueError(f"unknown distortion level {level!r}; choose one of {', '.join(DISTORTIONS)}")
    rng = np.random.default_rng(seed)
    arrays: list[np.ndarray] = []
    origin: list[int] = []
    for i, path in enumerate(files):
        data = Path(path).read_bytes()
        for _ in range(per_photo):
            arrays.append(preprocess(distort(data, rng, level), size=size))
            origin.append(i)
    if not arrays:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0,), np.int64)
    return np.stack(arrays), np.asarray(origin, np.int64)


@dataclass(frozen=True)
class RetrievalScores:
    """The figures of one model on one evaluation."""

    queries: int
    recall: dict[int, float]
    map_at_10: float
    category_queries: int
    category_precision: dict[int, float] | None
    distortion: str = "moderate"
    recall_at_1_ci: tuple[float, float] | None = None  # 95 % bootstrap interval over the source photos

    def flat(self) -> dict[str, float]:
        out = {f"recall@{k}": v for k, v in self.recall.items()}
        out[f"map@{MAP_AT}"] = self.map_at_10
        for k, v in (self.category_precision or {}).items():
            out[f"category_p@{k}"] = v
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _recipe_ranks(sims: np.ndarray, query_recipe: np.ndarray, gallery_recipe: np.ndarray) -> np.ndarray:
    recipes, inverse = np.unique(gallery_recipe, return_inverse=True)
    best = np.full((len(sims), len(recipes)), -np.inf, np.float32)
    np.maximum.at(best.T, inverse, sims.T)
    target = np.searchsorted(recipes, query_recipe)
    if not np.all(recipes[np.minimum(target, len(recipes) - 1)] == query_recipe):
        raise ValueError("every query's recipe must have a photo in the gallery")
    own = best[np.arange(len(sims)), target]
    return (best > own[:, None]).sum(axis=1)  # 0-based; ties count in the query's favour


def recipe_ranks(
    queries: np.ndarray, query_recipe: np.ndarray, gallery: np.ndarray, gallery_recipe: np.ndarray
) -> np.ndarray:
    """0-based rank of each query's own recipe among the recipes ranked by their best photo."""
    return _recipe_ranks(_unit(queries) @ _unit(gallery).T, query_recipe, gallery_recipe)


def instance_retrieval(
    queries: np.ndarray, query_recipe: np.ndarray, gallery: np.ndarray, gallery_recipe: np.ndarray
) -> tuple[dict[int, float], float]:
    """Recall@{1,5,10} over recipes ranked by their best photo, and mAP@10 over the photo ranking."""
    sims = _unit(queries) @ _unit(gallery).T  # (Q, G)
    rank = _recipe_ranks(sims, query_recipe, gallery_recipe)
    recipes, inverse = np.unique(gallery_recipe, return_inverse=True)
    target = np.searchsorted(recipes, query_recipe)
    recall = {k: float(np.mean(rank < k)) for k in RECALL_AT}
    order = np.argsort(-sims, axis=1, kind="stable")[:, :MAP_AT]
    relevant = gallery_recipe[order] == query_recipe[:, None]
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, order.shape[1] + 1)
    n_rel = np.minimum(np.bincount(inverse)[target], MAP_AT)
    ap = (precision * relevant).sum(axis=1) / n_rel
    return recall, float(np.mean(ap))


def category_precision(
    queries: np.ndarray,
    *,
    query_recipe: np.ndarray,
    query_category: np.ndarray,
    gallery: np.ndarray,
    gallery_recipe: np.ndarray,
    gallery_category: np.ndarray,
) -> dict[int, float]:
    """P@{1,5}: share of the nearest photos of other recipes that share the query's category."""
    same = _same_category(
        queries, gallery, (query_recipe, gallery_recipe), (query_category, gallery_category)
    )
    return {k: float(np.mean(same[:, :k])) for k in PRECISION_AT}


def _same_category(
    queries: np.ndarray,
    gallery: np.ndarray,
    recipes: tuple[np.ndarray, np.ndarray],
    categories: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """(Q, max k) booleans: does the i-th nearest photo of another recipe share the query's category.

    ``recipes`` and ``categories`` are each (of the queries, of the gallery).
    """
    sims = _unit(queries) @ _unit(gallery).T
    sims[recipes[1][None, :] == recipes[0][:, None]] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, : max(PRECISION_AT)]
    usable = np.isfinite(np.take_along_axis(sims, order, axis=1))  # own photos rank last, never count
    return (categories[1][order] == categories[0][:, None]) & usable


def _held_out_same_category(
    gallery: np.ndarray,
    gallery_recipe: np.ndarray,
    gallery_category: np.ndarray,
    held_out: np.ndarray,
    clean: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`_same_category` of the clean held-out photos that have a category, as queries.

    ``clean``: the photos' query vectors where a model embeds gallery photos otherwise (gallery sizes).
    """
    usable = held_out[gallery_category[held_out] >= 0]
    return _same_category(
        (gallery if clean is None else clean)[usable],
        gallery,
        (gallery_recipe[usable], gallery_recipe),
        (gallery_category[usable], gallery_category),
    )


def category_hits(
    gallery: np.ndarray,
    gallery_recipe: np.ndarray,
    gallery_category: np.ndarray,
    held_out: np.ndarray,
    k: int = 5,
    *,
    clean: np.ndarray | None = None,
) -> np.ndarray:
    """Per held-out photo with a category: the share of its k nearest other-recipe photos in its category."""
    same = _held_out_same_category(gallery, gallery_recipe, gallery_category, held_out, clean)
    return same[:, :k].mean(axis=1)


def _group_sums(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, inverse = np.unique(groups, return_inverse=True)
    return np.bincount(inverse, weights=values), np.bincount(inverse).astype(np.float64)


def bootstrap_interval(
    values: np.ndarray,
    groups: np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` when whole ``groups`` (source photos) are resampled."""
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    sums, counts = _group_sums(values, np.asarray(groups))
    pick = np.random.default_rng(seed).integers(0, len(sums), size=(resamples, len(sums)))
    means = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedDelta:
    """``model`` minus ``reference`` on the same queries, with a bootstrap interval over source photos."""

    metric: str
    model: str
    reference: str
    distortion: str
    model_value: float
    reference_value: float
    delta: float
    low: float
    high: float
    better: int  # queries where the model scores higher than the reference
    worse: int
    queries: int
    photos: int

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no clear difference"


def paired_delta(
    model_values: np.ndarray,
    reference_values: np.ndarray,
    groups: np.ndarray,
    *,
    metric: str,
    model: str,
    reference: str = "raw",
    distortion: str = "moderate",
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> PairedDelta:
    """Per-query figures of two models on the same queries → mean difference, interval, counts."""
    m = np.asarray(model_values, np.float64)
    r = np.asarray(reference_values, np.float64)
    if m.shape != r.shape or m.shape != np.shape(groups):
        raise ValueError(f"paired figures need one value per query each: {m.shape}, {r.shape}")
    low, high = bootstrap_interval(m - r, groups, resamples=resamples, confidence=confidence, seed=seed)
    return PairedDelta(
        metric=metric,
        model=model,
        reference=reference,
        distortion=distortion,
        model_value=float(m.mean()) if len(m) else float("nan"),
        reference_value=float(r.mean()) if len(r) else float("nan"),
        delta=float((m - r).mean()) if len(m) else float("nan"),
        low=low,
        high=high,
        better=int((m > r).sum()),
        worse=int((m < r).sum()),
        queries=len(m),
        photos=len(np.unique(groups)),
    )


def score(
    *,
    queries: np.ndarray,
    query_recipe: np.ndarray,
    gallery: np.ndarray,
    gallery_recipe: np.ndarray,
    gallery_category: np.ndarray | None,
    held_out: np.ndarray,
    distortion: str = "moderate",
    query_groups: np.ndarray | None = None,
    clean: np.ndarray | None = None,
) -> RetrievalScores:
    """All figures for one model. ``held_out``: gallery indices of the held-out (test) photos.

    ``query_groups`` (the source photo of each query) adds a bootstrap interval to Recall@1; ``clean``:
    the query vectors of the gallery photos, for same-category precision, where they are not ``gallery``.
    """
    recall, mean_ap = instance_retrieval(queries, query_recipe, gallery, gallery_recipe)
    interval = None
    if query_groups is not None and len(queries):
        hits = recipe_ranks(queries, query_recipe, gallery, gallery_recipe) == 0
        interval = bootstrap_interval(hits.astype(np.float64), query_groups)
    precision = None
    cat_queries = 0
    if gallery_category is not None:
        same = _held_out_same_category(gallery, gallery_recipe, gallery_category, held_out, clean)
        cat_queries = len(same)
        if cat_queries:
            precision = {k: float(np.mean(same[:, :k])) for k in PRECISION_AT}
    return RetrievalScores(len(queries), recall, mean_ap, cat_queries, precision, distortion, interval)


def nonfood_sets(size: int = IMAGE_SIZE) -> dict[str, np.ndarray]:
    """The verdict's non-food pictures as (N, S, S, 3) uint8 model inputs, by family.

    ``bank``: the build's reference bank (:func:`~indexer.nonfood.reference_bank`); ``test``: the test
    family (:func:`~indexer.nonfood.nonfood_test_set`, whole photos without crops), disjoint from it.
    """
    families = {"bank": reference_bank(), "test": nonfood_test_set(NONFOOD_TEST_GENERATED, crops=False)}
    return {
        name: np.stack([preprocess(data, size=size) for _, data in pictures])
        for name, pictures in families.items()
    }


@dataclass(frozen=True)
class VerdictRates:
    """The match verdict's rates for one model (shares in 0..1) and what they were measured on."""

    food_not_none: float  # distorted held-out queries that do not get "none"
    nonfood_none: float  # non-food test pictures that get "none"
    food_queries: int  # distorted queries, calibrated on half the recipes' and checked on the others'
    nonfood_queries: int
    bank: int = BANK_SIZE

    def flat(self) -> dict[str, float]:
        return {"food_not_none": self.food_not_none, "nonfood_none": self.nonfood_none}

    def meets_goals(self) -> bool:
        return all(getattr(self, key) >= goal for key, goal in VERDICT_GOALS.items())


def verdict_figures(
    gallery: np.ndarray,
    gallery_recipe: np.ndarray,
    queries: Sequence[np.ndarray],
    query_photos: Sequence[np.ndarray],
    nonfood: dict[str, np.ndarray],
) -> VerdictRates:
    """The verdict's rates of one model on its embeddings.

    ``queries``: one array per distortion level, of the gallery photos ``query_photos``; ``nonfood``: the
    embedded :func:`nonfood_sets` by family.
    """
    q = _unit(np.concatenate(queries))
    food, rejected = verdict_rates(
        _unit(gallery),
        gallery_recipe,
        q,
        gallery_recipe[np.concatenate(query_photos)],
        bank=_unit(nonfood["bank"]),
        nonfood=_unit(nonfood["test"]),
    )
    return VerdictRates(food, rejected, len(q), len(nonfood["test"]), len(nonfood["bank"]))
