"""The gateway's search path driven synchronously (indexer tests search what they built with it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedder.embedding import LoopDriven
from gateway.pipeline import SearchGateway
from gateway.search import SearchResult
from gateway.server import build_embedder
from gateway.settings import GatewaySettings
from indexer.store.base import RecipeStore


class SyncSearch(LoopDriven):
    """A :class:`SearchGateway` with an in-process embedder over ``model_dir``, on a loop of its own."""

    def __init__(self, store: RecipeStore, model_dir: Path, alias: str = "recipes") -> None:
        settings = GatewaySettings(model_dir=model_dir, alias=alias)
        self.gateway = SearchGateway(store, build_embedder(settings), settings, workers=2)
        super().__init__(self.gateway, "sync-search")

    def search(self, image: bytes, **options: Any) -> SearchResult:
        result: SearchResult = self._call(self.gateway.search(image, **options), timeout=60.0)
        return result
