"""Catalogues of synthetic photos written to temporary folders, in the Kaggle CSV schema."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.support.imagegen import encode, synthetic_photo

CATEGORIES = ("Soups", "Salads", "Desserts")
INGREDIENTS = (
    ["2 cups chicken stock", "1 onion, chopped"],
    ["3 tomatoes", "1 tbsp. olive oil", "basil leaves"],
    ["200 g dark chocolate", "3 eggs", "sugar"],
    ["1 lb. chicken thighs", "2 tomatoes", "garlic"],
)


def write_kaggle_catalog(root: Path, n: int, *, seed0: int = 0, size: tuple[int, int] = (160, 120)) -> Path:
    """``n`` recipes, one synthetic photo each, in the Kaggle schema (+ Category, Id)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    csv_path = root / "recipes.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["Id", "Title", "Ingredients", "Instructions", "Image_Name", "Cleaned_Ingredients", "Category"]
        )
        for i in range(n):
            name = f"dish-{seed0 + i:03d}"
            (images / f"{name}.jpg").write_bytes(encode(synthetic_photo(seed0 + i, size), "JPEG", quality=90))
            ingredients = INGREDIENTS[i % len(INGREDIENTS)]
            writer.writerow(
                [
                    f"r{seed0 + i}",
                    f"Dish {seed0 + i}",
                    repr(ingredients),
                    "Cook it.",
                    name,
                    repr(ingredients),
                    CATEGORIES[i % len(CATEGORIES)],
                ]
            )
    return csv_path


@pytest.fixture(scope="session")
def catalog40(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-recipe Kaggle-style catalogue folder (read-only for tests)."""
    root = tmp_path_factory.mktemp("catalog40")
    write_kaggle_catalog(root, 40)
    return root


@pytest.fixture(scope="session")
def second_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model: a different model version."""
    from tests.support.tinymodel import write_tiny_model

    folder = tmp_path_factory.mktemp("models") / "tiny-b"
    write_tiny_model(folder, seed=1)
    return folder
