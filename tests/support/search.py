"""The gateway's search path driven synchronously (indexer tests search what they built with it)."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from embedder.background import BackgroundLoop
from gateway.pipeline import SearchGateway
from gateway.search import SearchResult
from gateway.server import build_embedder
from gateway.settings import GatewaySettings
from indexer.store.base import RecipeStore


def _shut(loop: BackgroundLoop, gateway: SearchGateway) -> None:
    if not loop.closed:
        try:
            loop.call(gateway.aclose())
        finally:
            loop.close()


class SyncSearch:
    """A :class:`SearchGateway` with an in-process embedder over ``model_dir``, on a loop of its own."""

    def __init__(self, store: RecipeStore, model_dir: Path, alias: str = "recipes") -> None:
        settings = GatewaySettings(model_dir=model_dir, alias=alias)
        self.gateway = SearchGateway(store, build_embedder(settings), settings, workers=2)
        self._loop = BackgroundLoop("sync-search")
        self._finalizer = weakref.finalize(self, _shut, self._loop, self.gateway)

    def search(self, image: bytes, **options: Any) -> SearchResult:
        result: SearchResult = self._loop.call(self.gateway.search(image, **options))
        return result

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> SyncSearch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
