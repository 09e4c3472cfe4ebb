"""Photo → recipes: embed with the model that filled the live collection, then search it.

Data flows one way: photo bytes → query embedder (in-process onnxruntime or the gRPC embedder) →
vector → store (through the alias) → hits → :class:`SearchResult`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedder.manifest import ModelIntegrityError, read_manifest
from embedder.runtime import DEFAULT_PROVIDERS, EmbeddingModel
from indexer.store.base import RecipeStore, SearchFilter, StoreHit


class SearchError(RuntimeError):
    """A search could not be answered; the message says what to do."""


class NoIndexError(SearchError):
    """No collection stands behind the alias yet."""


class ModelUnavailableError(SearchError):
    """The model version that filled the collection is not available to embed queries."""


class QueryEmbedder(Protocol):
    """Anything that turns one photo into a vector of a given model version."""

    def embed(self, image: bytes, model_version: str) -> np.ndarray: ...


class LocalQueryEmbedder:
    """Embeds in-process with onnxruntime from a model repository folder (the embedded default)."""

    def __init__(self, model_dir: str | Path, providers: tuple[str, ...] = DEFAULT_PROVIDERS) -> None:
        self.model_dir = Path(model_dir)
        self.providers = providers
        self._models: dict[str, EmbeddingModel] = {}
        self._refused: set[Path] = set()

    def _candidates(self) -> list[Path]:
        candidates = [self.model_dir, *sorted(p for p in self.model_dir.glob("*") if p.is_dir())]
        return [folder for folder in candidates if (folder / "manifest.json").is_file()]

    def verify(self) -> dict[Path, str]:
        """Check each model folder's ONNX hash against its manifest; failing folders are left out from now on.

        Returns the refused folders and why; raises :class:`ModelIntegrityError` when model folders exist
        but none passes (nothing could ever be served).
        """
        refused: dict[Path, str] = {}
        candidates = self._candidates()
        for folder in candidates:
            try:
                read_manifest(folder, verify=True)
            except ModelIntegrityError as exc:
                refused[folder] = str(exc)
        self._refused = set(refused)
        if refused and len(refused) == len(candidates):
            raise ModelIntegrityError(f"no usable model in {self.model_dir}: " + "; ".join(refused.values()))
        return refused

    def _folders(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in self._candidates():
            if folder not in self._refused:
                try:
                    found[read_manifest(folder, verify=False).version] = folder
                except ModelIntegrityError:
                    continue
        return found

    def available(self) -> list[str]:
        """The model versions found in ``model_dir`` (loaded or not)."""
        return sorted(self._folders())

    def model(self, model_version: str) -> EmbeddingModel:
        if model_version not in self._models:
            folders = self._folders()
            if model_version not in folders:
                available = ", ".join(sorted(folders)) or "none"
                raise ModelUnavailableError(
                    f"model version {model_version} (which filled the collection) is not in "
                    f"{self.model_dir} (available: {available})"
                )
            try:
                model = EmbeddingModel(folders[model_version], providers=self.providers)
            except ModelIntegrityError as exc:
                self._refused.add(folders[model_version])
                raise ModelUnavailableError(f"model version {model_version} is refused: {exc}") from None
            self._models[model_version] = model
        return self._models[model_version]

    def embed(self, image: bytes, model_version: str) -> np.ndarray:
        vectors: np.ndarray = self.model(model_version).embed_images([image])
        return vectors[0]


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


class RecipeSearcher:
    """The search path shared by the CLI, the gRPC service and the HTTP API."""

    def __init__(self, store: RecipeStore, embedder: QueryEmbedder, alias: str = "recipes") -> None:
        self.store = store
        self.embedder = embedder
        self.alias = alias

    def live_collection(self) -> tuple[str, str]:
        """The collection behind the alias and the model version that filled it."""
        collection = self.store.resolve_alias(self.alias)
        if collection is None:
            raise NoIndexError(
                f"no collection behind alias {self.alias!r}: build one with `recipelens-index build`"
            )
        return collection, self.store.collection_info(collection).model_version

    def search(
        self,
        image: bytes,
        *,
        top_k: int = 5,
        offset: int = 0,
        search_filter: SearchFilter | None = None,
    ) -> SearchResult:
        start = time.perf_counter()
        collection, model_version = self.live_collection()
        vector = self.embedder.embed(image, model_version)
        hits = self.find(
            collection, model_version, vector, top_k=top_k, offset=offset, search_filter=search_filter
        )
        took_ms = (time.perf_counter() - start) * 1000.0
        return SearchResult(hits=hits, model_version=model_version, collection=collection, took_ms=took_ms)

    def find(
        self,
        collection: str,
        model_version: str,
        vector: np.ndarray,
        *,
        top_k: int = 5,
        offset: int = 0,
        search_filter: SearchFilter | None = None,
    ) -> list[RecipeHit]:
        """The nearest recipes to a vector made by ``model_version``, ranked from ``offset + 1``."""
        hits = self.store.search(
            collection,
            vector,
            limit=top_k,
            offset=offset,
            filter=search_filter,
            model_version=model_version,
        )
        return [RecipeHit.from_store(offset + i + 1, h) for i, h in enumerate(hits)]
