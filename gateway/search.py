"""What a search answers: ranked recipe hits, and the paging rules every front end shares.

The search itself (photo → embed → search → hits) is :class:`gateway.pipeline.SearchGateway`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.errors import ErrorKind, GatewayError
from indexer.store.base import StoreHit

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
    """One recipe found for a photo."""

    rank: int
    score: float
    recipe_id: str
    title: str
    ingredients: list[str]
    instructions: str
    image: str
    category: str
    payload: dict[str, Any] = field(repr=False)

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
    hits: list[RecipeHit]
    model_version: str
    collection: str
    took_ms: float
