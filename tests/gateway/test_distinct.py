"""Recipes with several photos: each recipe once, at its best photo's rank, with that photo named; paging
counts recipes; filters and their warnings and caps — over gRPC, HTTP and the CLI alike."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from embedder.runtime import EmbeddingModel
from gateway.cli import main as search_main
from gateway.client import RecipeSearchClient, search_filter
from gateway.server import RunningGateway, start_gateway
from indexer.keywords import ingredient_keywords
from indexer.store.base import MAX_FILTER_BYTES, MAX_FILTER_TERMS, RecipePoint, point_id
from indexer.store.edge import EdgeStore
from tests.gateway.conftest import World, gateway_settings
from tests.support.imagegen import distorted, encode, synthetic_photo

N_MULTI = 8
PHOTOS_PER_RECIPE = 3
ALIAS = "multi"
CATEGORIES = ("Dessert", "Main")


@dataclass(frozen=True)
class MultiWorld:
    images: Path
    collection: str


def _photo(recipe: int, view: int) -> bytes:
    base = synthetic_photo(3000 + recipe)
    return encode(base, "JPEG", quality=90) if view == 0 else distorted(base, seed=10 * recipe + view)


@pytest.fixture(scope="module")
def multi(world: World, tmp_path_factory: pytest.TempPathFactory) -> MultiWorld:
    """A collection behind alias ``multi`` where every recipe has three photos."""
    images = tmp_path_factory.mktemp("multi-images")
    model = EmbeddingModel(world.models / "tiny-a")
    points = []
    for i in range(N_MULTI):
        ingredients = ["2 tomatoes" if i % 2 else "1 cup rice", "1 chilli" if i % 4 == 0 else "salt"]
        for view in range(PHOTOS_PER_RECIPE):
            name = f"m{i:03d}-{view}.jpg"
            (images / name).write_bytes(_photo(i, view))
            payload = {
                "recipe_id": f"m{i:03d}",
                "title": f"Multi {i}",
                "ingredients": ingredients,
                "cleaned_ingredients": ingredients,
                "ingredient_keywords": ingredient_keywords(ingredients),
                "instructions": "Cook.",
                "image": name,
                "category": CATEGORIES[i % 2],
                "source": "test",
                "model_version": model.version,
            }
            vector = model.embed_images([(images / name).read_bytes()])[0]
            points.append(RecipePoint(point_id(f"m{i:03d}", name), vector, payload))
    with EdgeStore(world.store_path) as store:
        store.create_collection("multi-a", dimension=model.dimension, model_version=model.version)
        store.upsert("multi-a", points, model_version=model.version)
        store.mark_complete("multi-a")
        store.swap_alias(ALIAS, "multi-a")
    return MultiWorld(images, "multi-a")


@pytest.fixture(scope="module")
def running(world: World, multi: MultiWorld) -> Iterator[RunningGateway]:
    settings = gateway_settings(world, alias=ALIAS, images_root=multi.images)
    with start_gateway(settings, health_period_s=0.2) as gateway:
        yield gateway


def _query(recipe: int) -> bytes:
    return distorted(synthetic_photo(3000 + recipe), seed=99)


def test_grpc_answers_each_recipe_once_and_pages_by_recipe(running: RunningGateway) -> None:
    with RecipeSearchClient(running.grpc_address, timeout_s=10) as client:
        first = client.search(_query(3), top_k=5)
        ids = [h.recipe.id for h in first.hits]
        assert len(ids) == 5 == len(set(ids)) and ids[0] == "m003"  # each recipe once
        assert [h.rank for h in first.hits] == [1, 2, 3, 4, 5]
        best = first.hits[0]
        assert best.matched_image_url.startswith("/images/m003-") and best.matched_image_url.endswith(".jpg")
        rest = client.search(_query(3), top_k=5, offset=5)
        assert [h.rank for h in rest.hits] == [6, 7, 8]  # 8 recipes, 24 photos: offset counts recipes
        assert {h.recipe.id for h in rest.hits}.isdisjoint(ids)
        assert {h.recipe.id for h in rest.hits} | set(ids) == {f"m{i:03d}" for i in range(N_MULTI)}
        assert list(first.warnings) == []


def test_grpc_filters_warnings_and_caps(running: RunningGateway) -> None:
    with RecipeSearchClient(running.grpc_address, timeout_s=10) as client:
        desserts = client.search(_query(0), top_k=8, filter=search_filter(categories=["dESSERT"]))
        assert {h.recipe.category for h in desserts.hits} == {"Dessert"} and len(desserts.hits) == 4
        flt = search_filter(must_exclude=["tomato", "unobtainium"])
        answer = client.search(_query(1), top_k=8, filter=flt)
        assert all("2 tomatoes" not in h.recipe.ingredients for h in answer.hits) and answer.hits
        assert any("unobtainium" in w for w in answer.warnings)
        with pytest.raises(grpc.RpcError) as info:
            client.search(_query(1), filter=search_filter(must_exclude=["x"] * (MAX_FILTER_TERMS + 1)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _post(http: httpx.Client, photo: bytes, data: dict[str, object]) -> httpx.Response:
    return http.post("/api/v1/search", files={"image": ("q.jpg", photo, "image/jpeg")}, data=data)


def test_http_distinct_recipes_matched_image_filters_and_caps(running: RunningGateway) -> None:
    with httpx.Client(base_url=running.http_url, timeout=20) as http:
        body = _post(http, _query(5), {"top_k": "4"}).json()
        ids = [r["id"] for r in body["recipes"]]
        assert body["success"] and body["totalResults"] == 4 == len(set(ids)) and ids[0] == "m005"
        matched = body["recipes"][0]["matchedImage"]
        assert matched.startswith("/images/m005-") and http.get(matched).status_code == 200
        assert body["warnings"] == []
        page2 = _post(http, _query(5), {"top_k": "4", "offset": "4"}).json()
        assert [r["rank"] for r in page2["recipes"]] == [5, 6, 7, 8] and set(ids).isdisjoint(
            r["id"] for r in page2["recipes"]
        )

        # Filters as on gRPC: repeated fields or commas; categories case-insensitive; plural-aware.
        mains = _post(http, _query(5), {"top_k": "8", "categories": "main"}).json()
        assert {r["category"] for r in mains["recipes"]} == {"Main"} and len(mains["recipes"]) == 4
        no_chilli = _post(http, _query(4), {"top_k": "8", "must_exclude_ingredients": ["chillies", "rice"]})
        recipes = no_chilli.json()["recipes"]
        assert recipes and all(
            "1 chilli" not in r["ingredients"] and "1 cup rice" not in r["ingredients"] for r in recipes
        )
        both = _post(http, _query(4), {"top_k": "8", "must_include_ingredients": "tomato, salt"}).json()
        assert both["recipes"] and all("2 tomatoes" in r["ingredients"] for r in both["recipes"])

        unknown = _post(http, _query(4), {"categories": "Dessert,Breakfast"}).json()
        assert unknown["success"] and any("Breakfast" in w for w in unknown["warnings"])

        too_many = _post(
            http, _query(4), {"must_exclude_ingredients": ",".join(["x"] * (MAX_FILTER_TERMS + 1))}
        )
        assert too_many.status_code == 400 and "terms" in too_many.json()["errorMessage"]
        too_big = ["y" * 90] * (MAX_FILTER_BYTES // 90 + 1)
        oversized = _post(http, _query(4), {"must_exclude_ingredients": too_big[:MAX_FILTER_TERMS]})
        assert oversized.status_code == 400 and "bytes" in oversized.json()["errorMessage"]


def test_cli_prints_each_recipe_once_with_its_matched_photo(
    world: World, multi: MultiWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "query.jpg"
    photo.write_bytes(_query(2))
    args = [str(photo), "--top-k", "4", "--alias", ALIAS, "--model-dir", str(world.models)]
    args += ["--store-path", str(world.store_path), "--category", "dessert"]
    search_main([*args, "--without", "chillies", "--without", "unobtainium"])
    out = capsys.readouterr().out.splitlines()
    titles = re.findall(r"Multi \d+", "\n".join(out))  # titles appear in the table rows only
    assert titles == ["Multi 2", "Multi 6"]  # desserts without chilli: each once
    assert any(line.startswith("#1 matched photo: m002-") for line in out)
    assert any(line.startswith("warning:") and "unobtainium" in line for line in out)
    assert out[-1].startswith("2 recipe(s) from multi-a")
