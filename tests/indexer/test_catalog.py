from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from embedder.preprocess import ImageDecodeError
from indexer.catalog import BadItem, CatalogError, load_photo, parse_list, read_catalog, write_bad_report
from tests.indexer.conftest import write_kaggle_catalog
from tests.support.imagegen import encode, synthetic_photo


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (96, 72)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(synthetic_photo(seed, size), "JPEG"))
    return path


def test_kaggle_csv_reads_recipes_and_reports_bad_rows(tmp_path: Path) -> None:
    write_kaggle_catalog(tmp_path, 4, size=(96, 72))
    with (tmp_path / "recipes.csv").open("a", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["x1", "", "['salt']", "", "dish-000", "['salt']", "Soups"])  # empty title
        w.writerow(["x2", "Ghost", "['salt']", "", "no-such-photo", "['salt']", "Soups"])  # missing file
        w.writerow(["x3", "Evil", "[__import__('os').system('true')]", "", "dish-001", "", "Soups"])
    catalog = read_catalog(tmp_path)  # the folder: the CSV is found inside
    assert catalog.format == "kaggle-csv"
    assert [r.id for r in catalog.recipes] == ["r0", "r1", "r2", "r3"]
    r0 = catalog.recipes[0]
    assert r0.title == "Dish 0" and r0.ingredients == ["2 cups chicken stock", "1 onion, chopped"]
    assert r0.category == "Soups" and r0.images == [tmp_path / "images" / "dish-000.jpg"]
    reasons = {b.recipe_id: b.reason for b in catalog.bad}
    assert "empty title" in reasons["x1"]
    assert "not found" in reasons["x2"] and "no-such-photo" in next(
        b.file for b in catalog.bad if b.recipe_id == "x2"
    )
    assert "not a list literal" in reasons["x3"]  # parsed as a literal, never evaluated
    assert catalog.photo_count == 4 and len(catalog.bad) == 3


def test_kaggle_food_images_folder_and_index_column(tmp_path: Path) -> None:
    _jpeg(tmp_path / "Food Images" / "soup-abc.jpg", 1)
    with (tmp_path / "data.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "Title", "Ingredients", "Instructions", "Image_Name", "Cleaned_Ingredients"])
        w.writerow(["7", "Soup", '["water", "salt"]', "Boil.", "soup-abc", "['water', 'salt']"])
    catalog = read_catalog(tmp_path / "data.csv")
    (recipe,) = catalog.recipes
    assert recipe.id == "7" and recipe.ingredients == ["water", "salt"]
    assert recipe.images == [tmp_path / "Food Images" / "soup-abc.jpg"]


def test_folder_per_recipe_and_jsonl(tmp_path: Path) -> None:
    folders = tmp_path / "folders"
    _jpeg(folders / "pie" / "a.jpg", 1)
    _jpeg(folders / "pie" / "b.png", 2)
    (folders / "pie" / "recipe.json").write_text(json.dumps({"title": "Pie", "ingredients": ["apples"]}))
    (folders / "empty").mkdir()
    (folders / "empty" / "recipe.json").write_text(json.dumps({"title": "", "images": ["x.jpg"]}))
    cat = read_catalog(folders)
    assert cat.format == "folders"
    (pie,) = cat.recipes
    assert pie.id == "pie" and [Path(i).name for i in pie.images] == ["a.jpg", "b.png"]
    assert pie.cleaned_ingredients == ["apples"]
    assert [b.recipe_id for b in cat.bad] == ["empty"]

    jsonl = tmp_path / "j" / "recipes.jsonl"
    _jpeg(jsonl.parent / "p" / "1.jpg", 3)
    lines = [
        json.dumps({"id": "a", "title": "A", "images": ["p/1.jpg"], "category": "Mains"}),
        "{not json",
        json.dumps({"id": "b", "title": "B", "images": ["p/missing.jpg"]}),
    ]
    jsonl.write_text("\n".join(lines) + "\n")
    cat = read_catalog(jsonl)
    assert [r.id for r in cat.recipes] == ["a"] and cat.recipes[0].category == "Mains"
    assert any("line 2" in b.reason and "invalid JSON" in b.reason for b in cat.bad)
    assert any(b.recipe_id == "b" and "not found" in b.reason for b in cat.bad)


def test_plain_photo_folder(tmp_path: Path) -> None:
    _jpeg(tmp_path / "tomato_soup.jpg", 1)
    cat = read_catalog(tmp_path)
    assert [(r.id, r.title) for r in cat.recipes] == [("tomato_soup", "tomato soup")]


def test_bad_catalogue_paths_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"catalogue not found: .*nowhere"):
        read_catalog(tmp_path / "nowhere")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(CatalogError, match=r"x\.txt"):
        read_catalog(tmp_path / "x.txt")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(CatalogError, match="missing column"):
        read_catalog(tmp_path / "bad.csv")


def test_truncated_tiny_and_garbage_photos_are_reported(tmp_path: Path) -> None:
    write_kaggle_catalog(tmp_path, 5, size=(96, 72))
    images = tmp_path / "images"
    good = (images / "dish-000.jpg").read_bytes()
    (images / "dish-001.jpg").write_bytes(good[: len(good) // 3])  # truncated
    (images / "dish-002.jpg").write_bytes(b"not an image at all")
    (images / "dish-003.jpg").write_bytes(encode(synthetic_photo(9).resize((20, 20)), "JPEG"))  # tiny
    good_ids, bad = [], []
    for recipe, image in read_catalog(tmp_path).photos():  # what a build does with each photo
        try:
            load_photo(image)
            good_ids.append(recipe.id)
        except ImageDecodeError as exc:
            bad.append(BadItem(recipe.id, str(image), str(exc)))
    assert good_ids == ["r0", "r4"]
    reasons = {b.recipe_id: b.reason for b in bad}
    assert set(reasons) == {"r1", "r2", "r3"}
    assert "too small" in reasons["r3"] and "identify" in reasons["r2"]
    report = write_bad_report(bad, tmp_path / "out" / "bad.csv")
    rows = list(csv.reader(report.open()))
    assert rows[0] == ["id", "file", "reason"] and len(rows) == 4
    assert rows[1][1].endswith(".jpg")


def test_parse_list_formats() -> None:
    assert parse_list("['a', \"b\"]") == ["a", "b"]
    assert parse_list('["a", "b"]') == ["a", "b"]
    assert parse_list("one\ntwo") == ["one", "two"]
    assert parse_list(None) == [] and parse_list("") == []
    with pytest.raises(ValueError, match="not a list"):
        parse_list("[open('x')]")
