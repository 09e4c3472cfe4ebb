"""The match verdict on the search path: a calibrated collection answers strong/weak/none with confidences."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import httpx
import pytest
from recipelens.v1 import search_pb2

from embedder.factory import open_embedder
from embedder.runtime import EmbeddingModel
from gateway.cli import main as search_main
from gateway.client import RecipeSearchClient
from gateway.errors import ErrorKind, GatewayError
from gateway.http_app import SEARCH_PATH
from gateway.pipeline import SearchGateway
from gateway.server import start_gateway
from gateway.settings import GatewaySettings
from indexer.build import build_index
from indexer.calibration import CALIBRATION_KEY, MatchCalibration
from indexer.store.base import RecipePoint, point_id
from indexer.store.edge import EdgeStore
from tests.gateway.conftest import N_RECIPES, World, gateway_settings, recipe_payload
from tests.indexer.conftest import write_kaggle_catalog
from tests.support.browser import HAVE_CHROMIUM, headless_chrome
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


@pytest.fixture
def verdict_world(world: World, tmp_path: Path) -> World:
    """The test world's catalogue in a store whose live collection is calibrated; ``none_below`` huge: every
    search is 'no close match'."""
    store_path = tmp_path / "q"
    model = EmbeddingModel(world.models / "tiny-a")
    with EdgeStore(store_path) as store:
        store.create_collection("calibrated", dimension=model.dimension, model_version=model.version)
        photos = [(world.images / f"r{i:03d}.jpg").read_bytes() for i in range(N_RECIPES)]
        vectors = model.embed_images(photos)
        points = [
            RecipePoint(point_id(f"r{i:03d}", f"r{i:03d}.jpg"), v, recipe_payload(i, model.version))
            for i, v in enumerate(vectors)
        ]
        store.upsert("calibrated", points, model_version=model.version)
        never = MatchCalibration(model.version, none_below=5.0, strong_from=6.0, references=vectors[:2])
        store.set_extra("calibrated", {CALIBRATION_KEY: never.to_metadata()})
        store.mark_complete("calibrated")
        store.swap_alias("recipes", "calibrated")
    return dataclasses.replace(world, store_path=store_path)


def test_no_close_match_over_grpc_http_cli_and_page(
    verdict_world: World, query_photos: list[bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with start_gateway(gateway_settings(verdict_world)) as running:
        with RecipeSearchClient(running.grpc_address) as client:
            answer = client.search(query_photos[1], top_k=4)
            assert answer.match == search_pb2.MATCH_NONE and len(answer.hits) == 4
            assert all(h.HasField("confidence") and 0 <= h.confidence < 0.2 for h in answer.hits)
            assert len(client.search(query_photos[1], top_k=4, min_confidence=0.5).hits) == 0
        with httpx.Client(base_url=running.http_url, timeout=20) as http:
            body = http.post(SEARCH_PATH, files={"image": ("q.jpg", query_photos[1], "image/jpeg")}).json()
            assert body["match"] == "none" and all(0 <= r["confidence"] < 0.2 for r in body["recipes"])
            refused = http.post(
                SEARCH_PATH,
                files={"image": ("q.jpg", query_photos[1], "image/jpeg")},
                data={"min_confidence": "2"},
            )
            assert refused.status_code == 400 and "min_confidence" in refused.json()["errorMessage"]
        _page_shows_no_close_match(running.http_url, verdict_world, tmp_path)
    search_main([str(verdict_world.images / "r001.jpg"), "--model-dir", str(verdict_world.models),
                 "--store-path", str(verdict_world.store_path), "--top-k", "3"])  # fmt: skip
    table = capsys.readouterr().out
    assert "match: none — no close match" in table and "confidence" in table


def _page_shows_no_close_match(url: str, world: World, tmp_path: Path) -> None:
    if not HAVE_CHROMIUM or importlib.util.find_spec("selenium") is None:
        return  # the page half needs headless Chromium (Debian packages) and Selenium; the API halves ran
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chrome(tmp_path)
    try:
        driver.set_page_load_timeout(30)
        driver.get(url + "/")
        driver.find_element(By.ID, "photo").send_keys(str(world.images / "r003.jpg"))
        WebDriverWait(driver, 30).until(lambda d: "recipes in" in d.find_element(By.ID, "status").text)
        assert "No close match" in driver.find_element(By.ID, "status").text
        assert "no-match" in (driver.find_element(By.ID, "results").get_attribute("class") or "")
        cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
        assert cards and "confidence" in cards[0].find_element(By.CSS_SELECTOR, ".card-meta").text
        assert float(driver.execute_script("return getComputedStyle(arguments[0]).opacity", cards[0])) < 1
    finally:
        driver.quit()
