"""images_root has one meaning — the folder the index was built from — for both catalogue layouts and for
upserted recipes; it is checked at start and the gateway says how many of the live photos it can serve."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from gateway.images import public_image_url
from gateway.server import start_gateway
from gateway.settings import GatewaySettings
from indexer.build import build_index, open_embedder
from indexer.catalog import read_catalog
from indexer.edit import upsert_recipe
from indexer.store.edge import EdgeStore
from tests.indexer.conftest import write_kaggle_catalog
from tests.support.imagegen import encode, synthetic_photo


def _settings(store: Path, models: Path, images_root: Path | None) -> GatewaySettings:
    return GatewaySettings(
        grpc_port=0,
        http_port=0,
        model_dir=models,
        store_path=store,
        images_root=images_root,
        embed_timeout_s=5.0,
    )


def _search(url: str, seed: int) -> dict[str, object]:
    photo = encode(synthetic_photo(seed, (160, 120)), "JPEG", quality=90)
    with httpx.Client(base_url=url, timeout=20) as http:
        response = http.post(
            "/api/v1/search", files={"image": ("q.jpg", photo, "image/jpeg")}, data={"top_k": 1}
        )
    body: dict[str, object] = response.json()
    assert body["success"], body
    return body


def _fetch(url: str, path: str) -> int:
    with httpx.Client(base_url=url, timeout=20) as http:
        return http.get(path).status_code


def _folder_catalog(root: Path) -> Path:
    """The folder-per-recipe layout: ``<root>/<recipe>/recipe.json`` and its photos."""
    for i in range(6):
        folder = root / f"dish-{i}"
        folder.mkdir(parents=True)
        for view in range(2):
            (folder / f"photo-{view}.jpg").write_bytes(
                encode(synthetic_photo(700 + 10 * i + view, (160, 120)))
            )
        recipe = {
            "id": f"f{i}",
            "title": f"Folder dish {i}",
            "ingredients": ["1 onion"],
            "instructions": "Fry.",
        }
        (folder / "recipe.json").write_text(json.dumps(recipe))
    return root


def test_kaggle_layout_served_from_the_catalogue_root_and_a_wrong_root_is_named(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    csv_path = write_kaggle_catalog(tmp_path / "kaggle", 12)
    root = csv_path.parent
    with EdgeStore(tmp_path / "q") as store:
        build_index(csv_path, tiny_model_dir, store, batch_size=8, verify_sample=2, progress=False)
    caplog.set_level(logging.INFO, logger="gateway.server")
    with start_gateway(_settings(tmp_path / "q", tiny_model_dir, root)) as running:
        hit = _search(running.http_url, 3)["recipes"][0]  # type: ignore[index]
        assert hit["imagePath"] == hit["matchedImage"] == "/images/images/dish-003.jpg"
        assert _fetch(running.http_url, hit["imagePath"]) == 200
    assert f"images_root {root} serves 12 of 12 sampled photo files" in caplog.text

    caplog.clear()
    with start_gateway(_settings(tmp_path / "q", tiny_model_dir, root / "images")) as running:
        hit = _search(running.http_url, 3)["recipes"][0]  # type: ignore[index]
        assert _fetch(running.http_url, hit["imagePath"]) == 404  # names are relative to the catalogue root
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING and "images_root" in r.message)
    assert "serves 0 of 12" in warning.message and str(root.resolve()) in warning.message

    with pytest.raises(FileNotFoundError, match="images_root"):
        start_gateway(_settings(tmp_path / "q", tiny_model_dir, tmp_path / "nowhere"))
    with pytest.raises(NotADirectoryError, match="images_root"):
        start_gateway(_settings(tmp_path / "q", tiny_model_dir, csv_path))


def test_folder_layout_and_upserted_recipes_are_served(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _folder_catalog(tmp_path / "folders")
    assert len(read_catalog(root).recipes) == 6
    with EdgeStore(tmp_path / "q") as store:
        build_index(root, tiny_model_dir, store, batch_size=8, verify_sample=2, progress=False)
        # A new recipe whose recipe.json lies inside the catalogue, and one whose photos lie elsewhere.
        inside, outside = root / "added", tmp_path / "elsewhere"
        for folder, seed in ((inside, 900), (outside, 950)):
            folder.mkdir()
            (folder / "new.jpg").write_bytes(encode(synthetic_photo(seed, (160, 120))))
        embedder = open_embedder(tiny_model_dir, None)
        for recipe_id, folder in (("added", inside), ("outside", outside)):
            recipe = read_catalog(folder).recipes[0]
            recipe = type(recipe)(recipe_id, f"New {recipe_id}", ["1 leek"], ["leek"], "Stew.", recipe.images)
            upsert_recipe(store, recipe, embedder)
    caplog.set_level(logging.INFO, logger="gateway.server")
    with start_gateway(_settings(tmp_path / "q", tiny_model_dir, root)) as running:
        hit = _search(running.http_url, 710)["recipes"][0]  # type: ignore[index]
        assert hit["id"] == "f1" and hit["matchedImage"] == "/images/dish-1/photo-0.jpg"
        assert _fetch(running.http_url, hit["matchedImage"]) == 200
        added = _search(running.http_url, 900)["recipes"][0]  # type: ignore[index]
        assert added["id"] == "added" and added["imagePath"] == "/images/added/new.jpg"
        assert _fetch(running.http_url, added["imagePath"]) == 200
        away = _search(running.http_url, 950)["recipes"][0]  # type: ignore[index]
        assert away["id"] == "outside" and away["imagePath"] == ""  # outside images_root: never exposed
    assert f"images_root {root} serves 13 of 14 sampled photo files" in caplog.text


def test_public_image_url(tmp_path: Path) -> None:
    assert public_image_url("https://cdn.example/x.jpg", None) == "https://cdn.example/x.jpg"
    assert public_image_url("dir/a b.jpg", tmp_path) == "/images/dir/a%20b.jpg"
    assert public_image_url("dir/a b.jpg", None) == ""  # nothing is served without images_root
    assert public_image_url(str(tmp_path / "x.jpg"), None) == ""
    assert public_image_url(str(tmp_path / "sub" / "x.jpg"), tmp_path) == "/images/sub/x.jpg"
    assert public_image_url("/elsewhere/x.jpg", tmp_path) == ""  # outside the served folder
