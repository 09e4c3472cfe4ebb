"""A new collection's own figures, and the quality gate in front of the alias.

Before a build moves its alias, :func:`assess_collection` searches the new collection with
distorted copies (:mod:`indexer.distortions`, one moderate and one strong view each) of a sample of
its own photos and with generated non-food pictures:

* **R@1** — the share of distorted queries whose first hit is their own recipe (ties count);
* the match calibration (:mod:`indexer.calibration`), fitted on one half of the sampled photos, and
  its **verdict rates** on the other half: distorted catalogue photos that do *not* get ``none``
  (``food_not_none``) and non-food pictures (a seed range the bank never used) that do
  (``nonfood_none``).

The figures are recorded with the collection; :func:`gate_failures` compares R@1 and the non-food
rate with the live collection's and names every one that fell by more than the tolerance (in points).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.calibration import MatchCalibration, fit_calibration, match_verdict
from indexer.distortions import distort
from indexer.nonfood import BANK_SIZE, nonfood_images, reference_bank
from indexer.store.base import RecipeStore

log = logging.getLogger(__name__)

QUALITY_KEY = "quality"  # the collection's metadata field
CHECK_NONFOOD = 48  # generated non-food pictures the gate scores, from another seed range
CHECK_NONFOOD_SEED = 10_000
LEVELS = ("moderate", "strong")
_NEIGHBOURS = 10

# Embeds encoded photos (bytes) with the collection's model: one vector per photo, in order.
EmbedBytes = Callable[[list[bytes]], np.ndarray]


@dataclass(frozen=True)
class CollectionQuality:
    """The figures of one collection (shares in 0..1)."""

    queries: int
    recall_at_1: float
    food_not_none: float
    nonfood_none: float
    nonfood_queries: int
    photos: int

    FIGURES = (("R@1", "recall_at_1"), ("food not none", "food_not_none"), ("non-food none", "nonfood_none"))
    # food_not_none is ≈ 98 % for every model by construction (the threshold sits in the tail of the same
    # distribution on the other half), so only sampling noise would move it: the gate compares the other two.
    GATED = ("recall_at_1", "nonfood_none")

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> CollectionQuality:
        return cls(
            queries=int(data["queries"]),
            recall_at_1=float(data["recall_at_1"]),
            food_not_none=float(data["food_not_none"]),
            nonfood_none=float(data["nonfood_none"]),
            nonfood_queries=int(data["nonfood_queries"]),
            photos=int(data["photos"]),
        )

    def line(self) -> str:
        return " · ".join(f"{label} {100 * getattr(self, key):.1f}" for label, key in self.FIGURES)


def quality_of(extra: dict[str, Any]) -> CollectionQuality | None:
    """The figures recorded in a collection's metadata, if any (and readable)."""
    data = extra.get(QUALITY_KEY)
    if not isinstance(data, dict):
        return None
    try:
        return CollectionQuality.from_metadata(data)
    except (KeyError, TypeError, ValueError):
        return None


def sample_photos(
    photos: Sequence[tuple[str, Path | str]], sample: int, seed: int = 0
) -> list[tuple[str, Path | str]]:
    """The photos whose distorted copies :func:`assess_collection` uses (reproducible)."""
    return random.Random(seed).sample(list(photos), min(sample, len(photos)))  # noqa: S311 - not a secret


def assess_collection(
    store: RecipeStore,
    name: str,
    model_version: str,
    photos: Sequence[tuple[str, Path | str]],
    embed: EmbedBytes,
    *,
    sample: int = 200,
    seed: int = 0,
) -> tuple[MatchCalibration, CollectionQuality]:
    """Calibrate the verdict of collection ``name`` and measure its figures (see the module docstring).

    ``photos`` are (recipe id, photo file) of the photos stored in it.
    """
    chosen = sample_photos(photos, sample, seed)
    rng = np.random.default_rng(seed)
    datas: list[bytes] = []
    owners: list[str] = []
    halves: list[int] = []
    for i, (recipe_id, image) in enumerate(chosen):
        raw = Path(image).read_bytes()
        for level in LEVELS:
            datas.append(distort(raw, rng, level))
            owners.append(recipe_id)
            halves.append(i % 2)
    log.info(
        "measuring collection %s: %d distorted queries of %d photos, %d non-food pictures",
        name,
        len(datas),
        len(chosen),
        BANK_SIZE + CHECK_NONFOOD,
    )
    bank = _embed_in_batches(embed, [data for _, data in reference_bank()])
    nonfood_data = [data for _, data in nonfood_images(CHECK_NONFOOD, seed0=CHECK_NONFOOD_SEED)]
    checks = _embed_in_batches(embed, nonfood_data)
    vectors = _embed_in_batches(embed, datas)
    top = np.zeros(len(datas))
    other = np.full(len(datas), -np.inf)
    correct = 0
    for i, (vector, owner) in enumerate(zip(vectors, owners, strict=True)):
        hits = store.search(name, vector, limit=_NEIGHBOURS, model_version=model_version)
        if not hits:
            continue
        top[i] = hits[0].score
        tied = {h.payload.get("recipe_id") for h in hits if h.score >= hits[0].score - 1e-4}
        correct += owner in tied
        other[i] = max((h.score for h in hits if h.payload.get("recipe_id") != owner), default=-np.inf)
    fit = np.asarray(halves) == 0
    if len(chosen) < 2:
        fit[:] = True  # one photo: calibrate and check on the same queries
    calibration = fit_calibration(
        model_version, queries=vectors[fit], top_scores=top[fit], other_scores=other[fit], references=bank
    )
    held = ~fit if (~fit).any() else fit
    pairs = zip(vectors[held], top[held], strict=True)
    food = [match_verdict(calibration, v, [s]).match != "none" for v, s in pairs]
    nonfood = [_verdict_of(store, name, model_version, calibration, v) == "none" for v in checks]
    quality = CollectionQuality(
        queries=len(datas),
        recall_at_1=correct / len(datas) if datas else 0.0,
        food_not_none=float(np.mean(food)) if food else 0.0,
        nonfood_none=float(np.mean(nonfood)) if nonfood else 0.0,
        nonfood_queries=len(nonfood),
        photos=len(chosen),
    )
    log.info(
        "collection %s: %s (%d distorted queries of %d photos)", name, quality.line(), len(datas), len(chosen)
    )
    return calibration, quality


def _embed_in_batches(embed: EmbedBytes, datas: list[bytes], batch: int = 32) -> np.ndarray:
    """Vectors of ``datas`` in requests of ``batch`` photos (a remote embedder caps its message size)."""
    return np.concatenate([embed(datas[i : i + batch]) for i in range(0, len(datas), batch)])


def _verdict_of(
    store: RecipeStore, name: str, model_version: str, calibration: MatchCalibration, vector: np.ndarray
) -> str:
    hits = store.search(name, vector, limit=1, model_version=model_version)
    return match_verdict(calibration, vector, [h.score for h in hits]).match


def gate_failures(live: CollectionQuality, new: CollectionQuality, tolerance_points: float) -> list[str]:
    """Each figure of ``new`` that is worse than ``live``'s by more than ``tolerance_points``, in words."""
    failures = []
    for label, key in CollectionQuality.FIGURES:
        if key not in CollectionQuality.GATED:
            continue
        before, after = 100 * getattr(live, key), 100 * getattr(new, key)
        if after < before - tolerance_points:
            failures.append(f"{label} {after:.1f} < live {before:.1f} (−{before - after:.1f} points)")
    return failures
