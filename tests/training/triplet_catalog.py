"""A small generated catalogue in the Kaggle CSV schema, for the training tests."""

from __future__ import annotations

import csv
from pathlib import Path

from tests.support.imagegen import encode, synthetic_photo

CATEGORIES = ("Soup", "Salad", "Dessert", "Curry")


def write_catalog(root: Path, recipes: int = 24, *, extra_photos: int = 4, broken: bool = True) -> Path:
    """``recipes`` recipes (4 categories); the first ``extra_photos`` have a second photo; one broken file.

    Returns the CSV path. Photos are 160×120 JPEGs at ``<root>/Food Images/<name>.jpg``.
    """
    images = root / "Food Images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(recipes):
        names = [f"dish-{i:03d}"] + ([f"dish-{i:03d}-b"] if i < extra_photos else [])
        for k, name in enumerate(names):
            photo = synthetic_photo(1000 + i * 10 + k, size=(160, 120))
            (images / f"{name}.jpg").write_bytes(encode(photo, "JPEG", quality=90))
            rows.append(
                {
                    "Id": f"r{i:03d}",
                    "Title": f"Dish {i}",
                    "Ingredients": "['1 cup water', '2 eggs']",
                    "Instructions": "Mix. Cook.",
                    "Image_Name": name,
                    "Cleaned_Ingredients": "['water', 'eggs']",
                    "Category": CATEGORIES[i % len(CATEGORIES)],
                }
            )
    if broken:
        (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        rows.append(
            {
                "Id": "r999",
                "Title": "Broken dish",
                "Ingredients": "['salt']",
                "Instructions": "None.",
                "Image_Name": "broken",
                "Cleaned_Ingredients": "['salt']",
                "Category": "Soup",
            }
        )
    path = root / "recipes.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
