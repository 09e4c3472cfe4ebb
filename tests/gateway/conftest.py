"""Gateway test world: two tiny models, a catalogue of synthetic photos, an Edge store, real servers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from embedder.runtime import EmbeddingModel
from gateway.server import RunningGateway, start_gateway
from gateway.settings import GatewaySettings
from indexer.keywords import ingredient_keywords
from indexer.store.base import RecipePoint, RecipeStore, point_id
from indexer.store.edge import EdgeStore
from tests.support.imagegen import encode, synthetic_photo
from tests.support.tinymodel import write_tiny_model

N_RECIPES = 24
XSS_TITLE = "<script>alert(1)</script>"
CATEGORIES = ("dessert", "main", "soup")
PANTRY = ("tomatoes", "chicken thighs", "garlic", "sugar", "butter", "rice", "basil", "eggs")


@dataclass(frozen=True)
class World:
    models: Path  # a model repository holding both models
    version_a: str
    version_b: str
    images: Path  # catalogue images, served by the gateway
    store_path: Path
    collection_a: str
    collection_b: str


def recipe_payload(i: int, version: str) -> dict[str, object]:
    ingredients = [f"2 {PANTRY[i % len(PANTRY)]}", f"1 tbsp {PANTRY[(i * 3 + 1) % len(PANTRY)]}"]
    return {
        "recipe_id": f"r{i:03d}",
        "title": XSS_TITLE if i == 0 else f"Recipe {i}",
        "ingredients": ingredients,
        "cleaned_ingredients": ingredients,
        "ingredient_keywords": ingredient_keywords(ingredients),
        "instructions": f"Step one for recipe {i}.\nStep two <b>bold?</b>",
        "image": f"r{i:03d}.jpg",
        "category": CATEGORIES[i % len(CATEGORIES)],
        "source": "test",
        "model_version": version,
    }


def fill_collection(store: RecipeStore, name: str, model: EmbeddingModel, images: Path) -> None:
    store.create_collection(name, dimension=model.dimension, model_version=model.version)
    photos = [(images / f"r{i:03d}.jpg").read_bytes() for i in range(N_RECIPES)]
    vectors = model.embed_images(photos)
    points = [
        RecipePoint(point_id(f"r{i:03d}", f"r{i:03d}.jpg"), vectors[i], recipe_payload(i, model.version))
        for i in range(N_RECIPES)
    ]
    store.upsert(name, points, model_version=model.version)
    store.mark_complete(name)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("gateway")
    models = root / "models"
    version_a = write_tiny_model(models / "tiny-a", seed=0, name="tiny-a")
    version_b = write_tiny_model(models / "tiny-b", seed=1, name="tiny-b")
    images = root / "images"
    images.mkdir()
    for i in range(N_RECIPES):
        (images / f"r{i:03d}.jpg").write_bytes(encode(synthetic_photo(1000 + i), "JPEG", quality=90))
    (root / "secret.txt").write_text("outside the image folder")
    (root / "secret.jpg").write_text("outside the image folder")
    (images / "notes.csv").write_text("root: a catalogue file that is not an image")
    store_path = root / "qdrant"
    store = EdgeStore(store_path)
    try:
        fill_collection(store, "recipes-a", EmbeddingModel(models / "tiny-a"), images)
        fill_collection(store, "recipes-b", EmbeddingModel(models / "tiny-b"), images)
        store.swap_alias("recipes", "recipes-a")
    finally:
        store.close()
    return World(models, version_a, version_b, images, store_path, "recipes-a", "recipes-b")


def gateway_settings(world: World, **overrides: object) -> GatewaySettings:
    values: dict[str, object] = {
        "grpc_port": 0,
        "http_port": 0,
        "model_dir": world.models,
        "store_path": world.store_path,
        "images_root": world.images,
        "embed_timeout_s": 5.0,
    }
    values.update(overrides)
    return GatewaySettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def gateway(world: World) -> Iterator[RunningGateway]:
    """The embedded default: in-process onnxruntime, Qdrant Edge, auth off."""
    running = start_gateway(gateway_settings(world), health_period_s=0.2)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def query_photos() -> list[bytes]:
    """Cropped, recompressed copies of catalogue photos 0..5: the kind of query a phone sends."""
    from tests.support.imagegen import distorted

    return [distorted(synthetic_photo(1000 + i), seed=i) for i in range(6)]
