"""The match verdict on the search path: a calibrated collection answers strong/weak/none with confidences."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedder.factory import open_embedder
from gateway.errors import ErrorKind, GatewayError
from gateway.pipeline import SearchGateway
from gateway.settings import GatewaySettings
from indexer.build import build_index
from indexer.store.edge import EdgeStore
from tests.gateway.conftest import World, gateway_settings
from tests.indexer.conftest import write_kaggle_catalog
from tests.support.imagegen import distorted, synthetic_photo
from tests.support.tinymodel import write_tiny_model


async def test_calibrated_collection_answers_a_verdict(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_tiny_model(models / "tiny")
    catalog = tmp_path / "catalog"
    write_kaggle_catalog(catalog, 30, size=(160, 120))
    with EdgeStore(tmp_path / "q") as store:
        build_index(catalog, models / "tiny", store, batch_size=16, progress=False)
    settings = GatewaySettings(grpc_port=0, http_port=0, model_dir=models, store_path=tmp_path / "q")  # type: ignore[call-arg]
    gateway = SearchGateway(EdgeStore(tmp_path / "q"), open_embedder(None, models), settings, workers=2)
    try:
        query = distorted(synthetic_photo(7, (160, 120)), seed=7)
        result = await gateway.search(query, top_k=5)
        assert result.hits[0].recipe_id == "r7" and result.match in ("strong", "weak")
        confidences = [h.confidence for h in result.hits]
        assert all(c is not None and 0.0 <= c <= 1.0 for c in confidences)
        assert confidences == sorted(confidences, reverse=True)  # type: ignore[type-var]
        floor = (confidences[0] + confidences[-1]) / 2  # type: ignore[operator]
        kept = await gateway.search(query, top_k=5, min_confidence=floor)
        assert 1 <= len(kept.hits) < 5 and all(h.confidence >= floor for h in kept.hits)  # type: ignore[operator]
        with pytest.raises(GatewayError) as info:
            await gateway.search(query, min_confidence=1.5)
        assert info.value.kind is ErrorKind.INVALID_ARGUMENT
    finally:
        await gateway.aclose()
        gateway.store.close()


async def test_uncalibrated_collection_has_no_verdict(world: World, query_photos: list[bytes]) -> None:
    settings = gateway_settings(world)
    gateway = SearchGateway(
        EdgeStore(world.store_path), open_embedder(None, settings.model_dir), settings, workers=2
    )
    try:
        result = await gateway.search(query_photos[2], top_k=3)
        assert result.match is None and all(h.confidence is None for h in result.hits)
        assert len((await gateway.search(query_photos[2], top_k=3, min_confidence=0.9)).hits) == 3
    finally:
        await gateway.aclose()
        gateway.store.close()
