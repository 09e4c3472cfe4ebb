"""What a search answers: distinct recipes, each at the rank of its best-matching photo, and the paging
rules every front end shares (``top_k`` and ``offset`` count recipes).

The search itself (photo → embed → search → hits) is :class:`gateway.pipeline.SearchGateway`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from gateway.errors import ErrorKind, GatewayError
from indexer.calibration import MatchCalibration, match_verdict
from indexer.store.base import RecipeMatch, StoreHit

MAX_TOP_K = 100
MAX_OFFSET = 10_000


def check_paging(top_k: int, offset: int) -> None:
    """``top_k`` in 1..100 and ``offset`` in 0..10000, else INVALID_ARGUMENT (checked here only)."""
    if not 1 <= top_k <= MAX_TOP_K:
        raise GatewayError(ErrorKind.INVALID_ARGUMENT, f"top_k must be 1..{MAX_TOP_K}, got {top_k}")
    if not 0 <= offset <= MAX_OFFSET:
        raise GatewayError(ErrorKind.INVALID_ARGUMENT, f"offset must be 0..{MAX_OFFSET}, got {offset}")


@dataclass(frozen=True)
class RecipeHit:
    """One recipe found for a photo; ``image`` is its photo that matched best (the one scored)."""

    rank: int
    score: float
    recipe_id: str
    title: str
    ingredients: list[str]
    instructions: str
    image: str
    category: str
    payload: dict[str, Any] = field(repr=False)
    confidence: float | None = None  # 0..1 from the collection's match calibration (None: not calibrated)

    @property
    def matched_image(self) -> str:
        """The catalogue name (or URL) of the recipe's best-matching photo."""
        return self.image

    @classmethod
    def from_match(cls, rank: int, match: RecipeMatch) -> RecipeHit:
        """A recipe of a grouped search (its best photo's payload and score)."""
        return cls.from_store(rank, StoreHit(match.point_id, match.score, match.payload))

    @classmethod
    def from_store(cls, rank: int, hit: StoreHit) -> RecipeHit:
        p = hit.payload
        return cls(
            rank=rank,
            score=float(hit.score),
            recipe_id=str(p.get("recipe_id", hit.id)),
            title=str(p.get("title", "")),
            ingredients=list(p.get("ingredients") or []),
            instructions=str(p.get("instructions", "")),
            image=str(p.get("image", "")),
            category=str(p.get("category", "")),
            payload=dict(p),
        )


@dataclass(frozen=True)
class SearchResult:
    """A page of distinct recipes and the filter terms that matched nothing in the collection."""

    hits: list[RecipeHit]
    model_version: str
    collection: str
    took_ms: float
    warnings: list[str] = field(default_factory=list)
    match: str | None = None  # "strong" | "weak" | "none"; None when the collection has no calibration


def judge_hits(
    calibration: MatchCalibration | None,
    vector: np.ndarray,
    hits: list[RecipeHit],
    min_confidence: float = 0.0,
    *,
    best_score: float | None = None,
) -> tuple[str | None, list[RecipeHit]]:
    """The verdict of a query and its hits with their confidence, those below ``min_confidence`` dropped.

    The verdict weighs ``best_score``, the best recipe's score under the search's filter (rank 1's, so a
    query's verdict is the same on every page; ``None``: nothing matched). Each hit's confidence comes from
    its own score.
    """
    if not 0.0 <= min_confidence <= 1.0:
        raise GatewayError(ErrorKind.INVALID_ARGUMENT, f"min_confidence must be 0..1, got {min_confidence}")
    if calibration is None:
        return None, hits
    scores = [h.score for h in hits]
    verdict = match_verdict(calibration, vector, ([] if best_score is None else [best_score]) + scores)
    confidences = verdict.confidences[len(verdict.confidences) - len(hits) :]
    judged = [replace(h, confidence=c) for h, c in zip(hits, confidences, strict=True)]
    return verdict.match, [h for h in judged if h.confidence is not None and h.confidence >= min_confidence]
