"""The one store interface the indexer and the gateway use, and what travels through it.

Two backends implement :class:`RecipeStore`: :class:`~indexer.store.edge.EdgeStore` (Qdrant Edge,
in-process, on disk: the embedded default) and :class:`~indexer.store.server.ServerStore` (a Qdrant
server through qdrant-client). :func:`open_store` picks one from :class:`StoreSettings`.

Every collection records the model version and dimension that filled it and a ``complete`` flag;
nothing writes or searches vectors of one model in a collection of another
(:class:`ModelVersionMismatch`). Aliases (default ``recipes``) name the live collection and are
swapped atomically.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, SecretStr

from indexer.keywords import query_keywords

# Namespace of the deterministic point ids: uuid5(namespace, "<recipe_id>/<image name>").
POINT_NAMESPACE = uuid.UUID("6f1c1c2e-9a55-5d0e-8a51-7265636970c5")

# Payload fields indexed (as keywords) when a collection is created, before any bulk load.
KEYWORD_INDEXES: tuple[str, ...] = ("category", "ingredient_keywords", "recipe_id")

DEFAULT_ALIAS = "recipes"


class StoreError(RuntimeError):
    """A store operation failed; the message names the collection and what to do."""


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
class SearchFilter:
    """Category in ``categories`` (any), every ``must_include`` ingredient, none of ``must_exclude``.

    Ingredient terms are free text ("Chicken thighs"); they are reduced to the keywords stored in
    the ``ingredient_keywords`` payload (see :mod:`indexer.keywords`).
    """

    categories: tuple[str, ...] = ()
    must_include: tuple[str, ...] = ()
    must_exclude: tuple[str, ...] = ()

    def include_keywords(self) -> list[str]:
        """Every keyword that must be present (all of them)."""
        return sorted({kw for term in self.must_include for kw in query_keywords(term)})

    def exclude_groups(self) -> list[list[str]]:
        """One keyword list per excluded term; a point is excluded if it has every keyword of a term."""
        return [kws for term in self.must_exclude if (kws := query_keywords(term))]

    def is_empty(self) -> bool:
        return not (self.categories or self.must_include or self.must_exclude)


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
    """Where the vectors live. Part of each service's settings (``RECIPELENS_INDEXER_STORE__*``)."""

    qdrant_url: str | None = Field(default=None, description="a Qdrant server; unset = Qdrant Edge at `path`")
    qdrant_api_key: SecretStr | None = None
    path: Path = Field(default=Path("var/qdrant"), description="Qdrant Edge folder (the embedded default)")
    prefer_grpc: bool = True
    shard_number: int | None = Field(default=None, ge=1)
    replication_factor: int | None = Field(default=None, ge=1)
    timeout_s: int = Field(default=60, ge=1, description="server request timeout")

    def describe(self) -> str:
        if self.qdrant_url:
            return f"Qdrant server {self.qdrant_url} (grpc={'yes' if self.prefer_grpc else 'no'})"
        return f"Qdrant Edge at {self.path}"


class RecipeStore(ABC):
    """Collections of recipe photo vectors with payloads, and the aliases that name the live one."""

    # -- collections -------------------------------------------------------------------------
    @abstractmethod
    def create_collection(
        self,
        name: str,
        *,
        dimension: int,
        model_version: str,
        distance: str = "Cosine",
        on_disk: bool = False,
        quantization: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> CollectionInfo:
        """Create an empty, incomplete collection with its payload indexes."""

    @abstractmethod
    def collection_info(self, name: str) -> CollectionInfo:
        """Raises :class:`CollectionNotFound`."""

    @abstractmethod
    def list_collections(self) -> list[CollectionInfo]:
        """Every collection this store holds, oldest first."""

    @abstractmethod
    def mark_complete(self, name: str, complete: bool = True) -> None:
        """Flag a collection as complete (verified, safe to put behind an alias)."""

    @abstractmethod
    def set_extra(self, name: str, updates: dict[str, Any]) -> None:
        """Merge ``updates`` into an incomplete collection's ``extra`` metadata."""

    @abstractmethod
    def drop_collection(self, name: str) -> None: ...

    # -- points ------------------------------------------------------------------------------
    @abstractmethod
    def upsert(self, name: str, points: Sequence[RecipePoint], *, model_version: str) -> None:
        """Insert or replace points; durable when this returns."""

    @abstractmethod
    def search(
        self,
        name: str,
        vector: np.ndarray,
        *,
        limit: int,
        offset: int = 0,
        filter: SearchFilter | None = None,
        model_version: str,
    ) -> list[StoreHit]: ...

    @abstractmethod
    def retrieve(self, name: str, ids: Sequence[str]) -> list[StoreHit]:
        """Points by id (score 0), in no particular order; unknown ids are left out."""

    @abstractmethod
    def delete_points(self, name: str, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def count(self, name: str) -> int: ...

    @abstractmethod
    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        """The subset of ``ids`` already stored."""

    @abstractmethod
    def ids_of_recipe(self, name: str, recipe_id: str) -> list[str]:
        """Point ids of every photo of one recipe."""

    # -- aliases -----------------------------------------------------------------------------
    @abstractmethod
    def resolve_alias(self, alias: str) -> str | None: ...

    @abstractmethod
    def swap_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection`` in one atomic step."""

    @abstractmethod
    def delete_alias(self, alias: str) -> None: ...

    @abstractmethod
    def aliases(self) -> dict[str, str]:
        """alias → collection."""

    # -- edits of a live collection ----------------------------------------------------------
    def copy_on_write(self, name: str) -> bool:
        """Whether edits of ``name`` must go to a copy (blue/green) rather than in place."""
        return False

    def clone_collection(self, source: str, target: str) -> CollectionInfo:
        """A copy of complete ``source`` under a new, incomplete name (copy-on-write backends)."""
        raise StoreError(f"{type(self).__name__} does not clone collections")

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> RecipeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared checks -----------------------------------------------------------------------
    def check_model_version(self, name: str, model_version: str) -> CollectionInfo:
        info = self.collection_info(name)
        if info.model_version != model_version:
            raise ModelVersionMismatch(name, info.model_version, model_version)
        return info

    def query_vector(self, name: str, vector: np.ndarray, model_version: str) -> np.ndarray:
        """The query as a flat float32 vector, checked against the collection's model and dimension."""
        info = self.check_model_version(name, model_version)
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape != (info.dimension,):
            raise StoreError(
                f"query vector of dimension {query.shape[0]} does not fit collection {name!r} "
                f"of dimension {info.dimension}"
            )
        return query


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


def open_store(settings: StoreSettings | None = None, **overrides: Any) -> RecipeStore:
    """Qdrant server when ``qdrant_url`` is set, else Qdrant Edge at ``path``."""
    if settings is None:
        settings = StoreSettings(**overrides)
    elif overrides:
        settings = settings.model_copy(update=overrides)
    if settings.qdrant_url:
        from indexer.store.server import ServerStore

        return ServerStore(
            settings.qdrant_url,
            api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
            prefer_grpc=settings.prefer_grpc,
            shard_number=settings.shard_number,
            replication_factor=settings.replication_factor,
            timeout_s=settings.timeout_s,
        )
    from indexer.store.edge import EdgeStore

    return EdgeStore(settings.path)
