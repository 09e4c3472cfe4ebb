"""What travels through the store interface: points, hits, collection info, settings and errors.

:mod:`indexer.store.base` re-exports the names callers use, so they import everything from the interface.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, SecretStr

# Namespace of the deterministic point ids: uuid5(namespace, "<recipe_id>/<image name>").
POINT_NAMESPACE = uuid.UUID("6f1c1c2e-9a55-5d0e-8a51-7265636970c5")

# Payload fields indexed (as keywords) when a collection is created, before any bulk load.
KEYWORD_INDEXES: tuple[str, ...] = ("category", "ingredient_keywords", "recipe_id")

DEFAULT_ALIAS = "recipes"


class StoreError(RuntimeError):
    """A store operation failed; the message names the collection and what to do."""


class StoreNotFound(StoreError):
    """No store where the settings point (a reader never creates one)."""


class CollectionNotFound(StoreError):
    """No collection of that name."""


class CollectionBusy(StoreError):
    """Another process is writing to that collection right now."""


class ModelVersionMismatch(StoreError):
    """Vectors of one model version met a collection filled by another."""

    def __init__(self, collection: str, collection_version: str, given_version: str) -> None:
        self.collection = collection
        self.collection_version = collection_version
        self.given_version = given_version
        super().__init__(
            f"model version mismatch: collection {collection!r} holds vectors of model "
            f"{collection_version}, but the vectors given are of model {given_version}"
        )


def point_id(recipe_id: str, image_name: str) -> str:
    """The deterministic point id of one photo of one recipe (UUIDv5), so a rerun never duplicates."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{recipe_id}/{image_name}"))


@dataclass(frozen=True)
class RecipePoint:
    """One photo of one recipe: its vector and the recipe's payload."""

    id: str
    vector: np.ndarray
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoreHit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class RecipeMatch:
    """One recipe in a grouped search, at the rank and score of its best-matching photo."""

    recipe_id: str
    score: float
    point_id: str  # the best-matching photo's point
    payload: dict[str, Any]  # that photo's payload

    @property
    def matched_image(self) -> str:
        """The name (or URL) of the photo that matched best, as stored in the payload."""
        return str(self.payload.get("image", ""))


@dataclass(frozen=True)
class RecipeResults:
    """A page of distinct recipes, and what the filter could not match (one sentence each)."""

    hits: list[RecipeMatch]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class PointQuery:
    """One nearest-neighbour read, checked and in the back end's terms: what its primitives receive."""

    vector: np.ndarray  # flat float32, of the collection's dimension
    limit: int
    offset: int = 0
    filter: Any = None  # the back end's native filter (None: no filter)
    payload: bool | tuple[str, ...] = True  # True: whole payloads, False: none, a tuple: those keys


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    model_version: str
    dimension: int
    points_count: int
    created_at: str
    complete: bool
    distance: str = "Cosine"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "complete" if self.complete else "incomplete"


class StoreSettings(BaseModel):
    """Where the vectors live: one shape in every service's settings (``RECIPELENS_<SERVICE>_STORE__*``)."""

    qdrant_url: str | None = Field(default=None, description="a Qdrant server; unset = Qdrant Edge at `path`")
    qdrant_api_key: SecretStr | None = None
    path: Path = Field(default=Path("var/qdrant"), description="Qdrant Edge folder (the embedded default)")
    prefer_grpc: bool = True
    shard_number: int | None = Field(default=None, ge=1)
    replication_factor: int | None = Field(default=None, ge=1)
    timeout_s: int = Field(default=60, ge=1, description="server request timeout")
    search_threads: int = Field(
        default=1,
        ge=0,
        description="Qdrant Edge: threads one search uses in a collection this store creates (fixed when "
        "it is created); 1 = the caller's thread, 0 = Qdrant Edge's default (one per CPU)",
    )

    def shown(self) -> dict[str, Any]:
        """``store.<field>`` → value for a settings log line; the API key masked."""
        values = self.model_dump()
        if self.qdrant_api_key is not None:
            values["qdrant_api_key"] = "**********"
        return {f"store.{k}": v for k, v in values.items()}

    def describe(self) -> str:
        if self.qdrant_url:
            return f"Qdrant server {self.qdrant_url} (grpc={'yes' if self.prefer_grpc else 'no'})"
        return f"Qdrant Edge at {self.path}"


def now_stamp() -> str:
    """The UTC time to the second, as stored in collection metadata."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_vectors(name: str, points: Iterable[RecipePoint], dimension: int) -> None:
    """Every vector has the collection's dimension and finite values."""
    for p in points:
        if p.vector.shape != (dimension,):
            raise StoreError(
                f"point {p.id}: vector of shape {tuple(p.vector.shape)} does not fit collection "
                f"{name!r} of dimension {dimension}"
            )
        if not np.all(np.isfinite(p.vector)):
            raise StoreError(f"point {p.id}: vector has NaN or infinite values")
