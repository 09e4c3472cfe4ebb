"""indexer/edit.py: --recipe parsing, single-recipe upserts and deletes (Edge copies, server in place)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedder.runtime import EmbeddingModel
from indexer.build import BuildError, build_index, open_embedder
from indexer.catalog import Recipe
from indexer.edit import delete_recipe, read_recipe_arg, upsert_recipe
from indexer.store.base import ModelVersionMismatch, RecipeStore, point_id
from indexer.store.edge import EdgeStore
from indexer.store.server import ServerStore
from tests.indexer.conftest import write_kaggle_catalog
from tests.support.imagegen import distorted, encode, synthetic_photo
from tests.support.search import SyncSearch


def _build(catalog: Path, model: Path, store: RecipeStore, **kw: object):  # type: ignore[no-untyped-def]
    return build_index(catalog, model, store, progress=False, batch_size=16, **kw)  # type: ignore[arg-type]


def _photo(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(synthetic_photo(seed, (160, 120))))
    return path


def test_recipe_json_file_inline_and_folder_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "soup"
    _photo(folder / "a.jpg", 1)
    _photo(folder / "b.png", 2)
    data = {"id": "s1", "title": "Leek soup", "ingredients": "['2 leeks', 'salt']", "images": ["a.jpg"]}
    (folder / "soup.json").write_text(json.dumps(data))
    recipe, base = read_recipe_arg(str(folder / "soup.json"))
    assert (recipe.id, recipe.title, base) == ("s1", "Leek soup", folder)
    assert recipe.images == [folder / "a.jpg"] and recipe.cleaned_ingredients == ["2 leeks", "salt"]

    # recipe.json without an images list: every photo of its folder, as the catalogue reader does
    (folder / "recipe.json").write_text(json.dumps({"id": "s1", "title": "Leek soup"}))
    recipe, _ = read_recipe_arg(str(folder / "recipe.json"))
    assert recipe.images == [folder / "a.jpg", folder / "b.png"]

    monkeypatch.chdir(folder)  # inline JSON: photos relative to the working directory
    recipe, base = read_recipe_arg(json.dumps({**data, "images": ["b.png"]}))
    assert base == folder and recipe.images == [folder / "b.png"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nowhere.json", r"recipe file not found: nowhere\.json"),
        ("{not json", r"--recipe: invalid JSON"),
        ('{"title": "x", "images": ["a.jpg"]}', r"--recipe: no recipe id"),
        ('{"id": "x", "title": " ", "images": ["a.jpg"]}', r"--recipe: empty title"),
        ('{"id": "x", "title": "X", "images": ["gone.jpg"]}', r"image file not found: .*gone\.jpg"),
        ('{"id": "x", "title": "X"}', r"--recipe: no image"),
        ('{"id": "x", "title": "X", "images": ["a.jpg"], "ingredients": "[open(1)]"}', r"ingredients"),
        ("list.json", r"list\.json: not a JSON object"),
    ],
)
def test_bad_recipe_args_name_what_is_wrong(
    text: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _photo(tmp_path / "a.jpg", 1)
    (tmp_path / "list.json").write_text("[1, 2]")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BuildError, match=message):
        read_recipe_arg(text)


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> EmbeddingModel:
    return EmbeddingModel(tiny_model_dir)


def test_upsert_replaces_every_photo_of_a_recipe_in_place_on_a_server(
    tmp_path: Path, tiny_model_dir: Path, model: EmbeddingModel
) -> None:
    catalog = tmp_path / "cat"
    write_kaggle_catalog(catalog, 6)
    with ServerStore(location=":memory:") as store:
        built = _build(catalog, tiny_model_dir, store, verify_sample=2)
        old_id = point_id("r1", "images/dish-001.jpg")
        assert store.ids_of_recipe(built.collection, "r1") == [old_id]
        photos = [_photo(tmp_path / "r1" / "front.jpg", 601), _photo(tmp_path / "r1" / "side.jpg", 602)]
        new = Recipe("r1", "Dish 1, again", ["chillies"], ["chillies"], "", list(photos), "Soups")
        edit = upsert_recipe(store, new, open_embedder(tiny_model_dir, None), catalog_root=tmp_path / "r1")
        assert (edit.copied, edit.collection, edit.upserted, edit.deleted) == (False, built.collection, 2, 1)
        assert sorted(store.ids_of_recipe(built.collection, "r1")) == sorted(
            [point_id("r1", "front.jpg"), point_id("r1", "side.jpg")]
        )
        assert store.count(built.collection) == 7
        query = model.embed_images([distorted(synthetic_photo(602, (160, 120)), 1)])[0]
        top = store.search_recipes(built.collection, query, limit=3, model_version=model.version).hits
        assert top[0].recipe_id == "r1" and top[0].matched_image == "side.jpg"
        assert top[0].payload["title"] == "Dish 1, again"
        assert [h.recipe_id for h in top].count("r1") == 1  # two photos, one recipe
        removed = delete_recipe(store, "r1")
        assert (removed.copied, removed.deleted) == (False, 2) and store.count(built.collection) == 5


def test_a_failed_edit_leaves_the_live_collection_and_no_copy(
    tmp_path: Path, tiny_model_dir: Path, second_model_dir: Path, model: EmbeddingModel
) -> None:
    catalog = tmp_path / "cat"
    write_kaggle_catalog(catalog, 4)
    with EdgeStore(tmp_path / "q") as store:
        with pytest.raises(BuildError, match="points nowhere"):
            delete_recipe(store, "r1")
        built = _build(catalog, tiny_model_dir, store, verify_sample=1)
        broken = tmp_path / "new" / "broken.jpg"
        broken.parent.mkdir()
        broken.write_bytes(b"not a photo")
        recipe = Recipe("n1", "New", [], [], "", [broken])
        with pytest.raises(BuildError, match=r"recipe n1: .*broken\.jpg"):
            upsert_recipe(store, recipe, open_embedder(tiny_model_dir, None), catalog_root=broken.parent)
        other = open_embedder(second_model_dir, None)
        good = Recipe("n1", "New", [], [], "", [_photo(tmp_path / "new" / "ok.jpg", 700)])
        with pytest.raises(ModelVersionMismatch):
            upsert_recipe(store, good, other, catalog_root=good.images[0].parent)  # type: ignore[union-attr]
        assert [c.name for c in store.list_collections()] == [built.collection]
        assert store.resolve_alias("recipes") == built.collection and store.count(built.collection) == 4


def test_incremental_upsert_and_delete(catalog40: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    with EdgeStore(tmp_path / "q") as store, EdgeStore(tmp_path / "q") as gateway_side:
        built = _build(catalog40, tiny_model_dir, store, verify_sample=2)
        searcher = SyncSearch(gateway_side, tiny_model_dir)
        searcher.search(encode(synthetic_photo(1, (160, 120))))  # the "gateway" holds the live collection
        photo = tmp_path / "new" / "new.jpg"
        photo.parent.mkdir()
        photo.write_bytes(encode(synthetic_photo(500, (160, 120))))
        new = Recipe("n1", "New dish", ["2 leeks"], ["leeks"], "Stew.", [photo], "Soups", "test")
        edit = upsert_recipe(store, new, open_embedder(tiny_model_dir, None), catalog_root=photo.parent)
        assert edit.copied and edit.previous == built.collection and edit.upserted == 1
        result = searcher.search(distorted(synthetic_photo(500, (160, 120)), 1), top_k=1)  # seen at once
        assert result.collection == edit.collection and result.hits[0].recipe_id == "n1"
        assert result.hits[0].payload["ingredient_keywords"] == ["leek", "leeks"]
        removed = delete_recipe(store, "r7")
        assert removed.deleted == 1 and gateway_side.count(removed.collection) == 40
        assert "r7" not in {
            h.recipe_id for h in searcher.search(encode(synthetic_photo(7, (160, 120))), top_k=5).hits
        }
        with pytest.raises(BuildError, match="not in the live collection"):
            delete_recipe(store, "r7")
