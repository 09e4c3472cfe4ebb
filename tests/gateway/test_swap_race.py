"""A search (or recipe lookup) whose collection disappears under it (alias swapped, old collection dropped)
looks the alias up once more and is answered from where it points now — re-embedding when that
collection's model differs."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from embedder.factory import open_embedder
from embedder.runtime import EmbeddingModel
from gateway.client import RecipeSearchClient
from gateway.pipeline import SearchGateway
from gateway.server import start_gateway
from indexer.build import open_embedder as open_build_embedder
from indexer.catalog import Recipe
from indexer.edit import upsert_recipe
from indexer.store.base import RecipeResults
from indexer.store.edge import EdgeStore
from tests.gateway.conftest import World, fill_collection, gateway_settings


class SwappedUnderSearch(EdgeStore):
    """A real Edge store; before its next search runs, an indexer moves the alias and drops the collection."""

    def __init__(self, root: Path, indexer: EdgeStore) -> None:
        super().__init__(root)
        self.indexer = indexer
        self.plan: list[tuple[str, str]] = []  # (new collection, old collection) per coming search

    def _swap_now(self) -> None:
        if self.plan:
            new, old = self.plan.pop(0)
            self.indexer.swap_alias("recipes", new)
            self.indexer.drop_collection(old)

    def search_recipes(self, name: str, vector: np.ndarray, **options: Any) -> RecipeResults:
        self._swap_now()
        return super().search_recipes(name, vector, **options)

    def ids_of_recipe(self, name: str, recipe_id: str) -> list[str]:
        self._swap_now()
        return super().ids_of_recipe(name, recipe_id)


def _store(world: World, root: Path) -> None:
    model_a = EmbeddingModel(world.models / "tiny-a")
    with EdgeStore(root) as store:
        fill_collection(store, "c1", model_a, world.images)
        fill_collection(store, "c2", model_a, world.images)
        fill_collection(store, "c3", EmbeddingModel(world.models / "tiny-b"), world.images)
        store.swap_alias("recipes", "c1")


async def test_collection_dropped_under_a_search_is_answered_from_the_new_one(
    world: World, tmp_path: Path, query_photos: list[bytes]
) -> None:
    _store(world, tmp_path / "q")
    indexer = EdgeStore(tmp_path / "q")
    store = SwappedUnderSearch(tmp_path / "q", indexer)
    settings = gateway_settings(world, store_path=tmp_path / "q")
    gateway = SearchGateway(store, open_embedder(None, world.models), settings, workers=2)
    try:
        store.plan = [("c2", "c1")]  # same model: the vector is reused
        first = await gateway.search(query_photos[2], top_k=3)
        assert first.collection == "c2" and first.model_version == world.version_a
        assert first.hits[0].recipe_id == "r002"
        store.plan = [("c3", "c2")]  # another model: the photo is embedded again with it
        second = await gateway.search(query_photos[4], top_k=3)
        assert second.collection == "c3" and second.model_version == world.version_b
        assert second.hits[0].recipe_id == "r004"
        assert {c.name for c in indexer.list_collections()} == {"c3"}
        fill_collection(indexer, "c4", EmbeddingModel(world.models / "tiny-b"), world.images)
        store.plan = [("c4", "c3")]  # a recipe lookup too
        assert (await gateway.get_recipe("r005")).title == "Recipe 5"
        assert indexer.resolve_alias("recipes") == "c4"
    finally:
        await gateway.aclose()
        store.close()
        indexer.close()


def test_searches_during_quick_edits_with_no_previous_kept(
    world: World, tmp_path: Path, tiny_model_dir: Path, query_photos: list[bytes]
) -> None:
    """The reported race: ``keep_previous=0`` edits drop the collection a search had just resolved."""
    store_dir = tmp_path / "q"
    with EdgeStore(store_dir) as store:
        fill_collection(store, "recipes-0", EmbeddingModel(world.models / "tiny-a"), world.images)
        store.swap_alias("recipes", "recipes-0")
    answers: list[str] = []
    failures: list[str] = []
    stop = threading.Event()
    with start_gateway(gateway_settings(world, store_path=store_dir), health_period_s=0.2) as running:

        def search_loop(worker: int) -> None:
            with RecipeSearchClient(running.grpc_address, timeout_s=10) as client:
                n = 0
                while not stop.is_set():
                    photo = query_photos[(worker + n) % len(query_photos)]
                    n += 1
                    try:
                        answers.append(client.search(photo, top_k=3).collection)
                    except grpc.RpcError as exc:
                        failures.append(f"{exc.code().name}: {exc.details()}")

        threads = [threading.Thread(target=search_loop, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        try:
            embedder = open_build_embedder(world.models / "tiny-a", None)
            with EdgeStore(store_dir) as indexer:
                for edit in range(6):
                    photo = world.images / f"r{edit:03d}.jpg"
                    recipe = Recipe(f"r{edit:03d}", f"Edited {edit}", ["1 egg"], ["egg"], "Boil.", [photo])
                    upsert_recipe(indexer, recipe, embedder, catalog_root=world.images, keep_previous=0)
                    time.sleep(0.05)
                live = indexer.resolve_alias("recipes")
                assert [c.name for c in indexer.list_collections()] == [live]  # nothing previous kept
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
    assert failures == []
    assert len(answers) >= 20 and len(set(answers)) >= 2  # searches ran across the edits
