"""Recipe catalogues: read one from disk, report what is wrong with it, never skip anything silently.

Formats, detected from what the path holds:

* **Kaggle CSV** — the "Food Ingredients and Recipe Dataset with Images" schema: ``Title``,
  ``Ingredients``, ``Instructions``, ``Image_Name``, ``Cleaned_Ingredients`` (lists as Python-literal
  strings, parsed with :func:`ast.literal_eval`, which accepts literals only, or as JSON), optional
  ``Category`` and ``Id`` (else the unnamed index column, else the row number). Photos at
  ``<root>/Food Images/<Image_Name>.jpg`` or ``<root>/images/<Image_Name>.jpg``. Rows sharing an
  ``Id`` are one recipe with several photos. The path is the CSV file or the folder holding it.
* **Folder per recipe** — ``<root>/<recipe>/recipe.json`` (``title``, ``ingredients``, …, optional
  ``images`` list) plus photos; without ``images`` every photo in the folder belongs to the recipe.
* **JSONL** — one recipe per line with an ``images`` list (paths relative to the file).
* **Folder of photos** — every photo is its own recipe, titled after its file name.

Missing files, empty titles and malformed rows become :class:`BadItem` entries (recipe id, file,
reason), which the indexer reports and counts against its bad-data threshold.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from embedder.preprocess import DEFAULT_MAX_PIXELS, IMAGE_SIZE, ImageDecodeError, preprocess
from indexer.keywords import ingredient_keywords

# The photo file types of catalogues, the gateway's /images and training's parity images: one list.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
CSV_IMAGE = "Image_Name"  # the CSV's photo column; CSV_FIELDS (below) names the others
KAGGLE_IMAGE_DIRS = ("Food Images", "Food Images/Food Images", "images")
RECIPE_FILE = "recipe.json"


class CatalogError(ValueError):
    """The catalogue as a whole cannot be read; the message names the path."""


@dataclass(frozen=True)
class Recipe:
    """One recipe and its usable photos (local paths; URLs are reported as bad, never fetched)."""

    id: str
    title: str
    ingredients: list[str]
    cleaned_ingredients: list[str]
    instructions: str
    images: list[Path | str]
    category: str = ""
    source: str = ""


@dataclass(frozen=True)
class BadItem:
    recipe_id: str
    file: str
    reason: str


@dataclass
class Catalog:
    recipes: list[Recipe]
    bad: list[BadItem]
    root: Path
    format: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def photo_count(self) -> int:
        """Usable photos (bad ones excluded)."""
        return sum(len(r.images) for r in self.recipes)

    def photos(self) -> Iterable[tuple[Recipe, Path | str]]:
        for recipe in self.recipes:
            for image in recipe.images:
                yield recipe, image

    def image_name(self, image: Path | str) -> str:
        return image_name(self.root, image)


def image_name(root: Path, image: Path | str) -> str:
    """A photo's name as stored: its path relative to the catalogue root (posix), or the URL."""
    if isinstance(image, Path):
        try:
            return image.relative_to(root).as_posix()
        except ValueError:
            return image.as_posix()
    return image


# -- field parsing -------------------------------------------------------------------------------
def parse_list(value: Any) -> list[str]:
    """A list field: a list already, a Python-literal or JSON list string, or one item per line."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    if not text:
        return []
    if text.startswith("["):
        parsed: Any
        try:
            parsed = ast.literal_eval(text)  # literals only: no names, calls or attributes
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            try:
                parsed = json.loads(text)
            except ValueError:
                raise ValueError(f"not a list literal: {text[:60]!r}") from None
        if not isinstance(parsed, list | tuple):
            raise ValueError(f"not a list: {text[:60]!r}")
        return [str(v).strip() for v in parsed if str(v).strip()]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


@dataclass(frozen=True)
class RecordFields:
    """Where a source record keeps each recipe field: a key of recipe.json / JSONL, a column of a CSV."""

    title: str
    ingredients: str
    cleaned: str
    instructions: str
    category: str
    source: str


JSON_FIELDS = RecordFields(
    "title", "ingredients", "cleaned_ingredients", "instructions", "category", "source"
)
CSV_FIELDS = RecordFields("Title", "Ingredients", "Cleaned_Ingredients", "Instructions", "Category", "Source")


def make_recipe(
    record: Mapping[str, Any],
    fields: RecordFields,
    *,
    recipe_id: str,
    images: list[Path | str],
    where: str,
    source: str = "",
) -> tuple[Recipe | None, list[BadItem]]:
    """A recipe from one source record and what is wrong with it; None when nothing of it is usable.

    ``source`` stands in where the record names none.
    """
    title = _text(record.get(fields.title))
    ingredients, cleaned = record.get(fields.ingredients), record.get(fields.cleaned)
    if not recipe_id:
        return None, [BadItem("", str(i), f"{where}: no recipe id") for i in images or [""]]
    if not title:
        return None, [BadItem(recipe_id, str(i), f"{where}: empty title") for i in images or [""]]
    try:
        ingredient_list = parse_list(ingredients)
        cleaned_list = parse_list(cleaned) if _text(cleaned) or isinstance(cleaned, list) else ingredient_list
    except ValueError as exc:
        return None, [BadItem(recipe_id, str(i), f"{where}: ingredients {exc}") for i in images or [""]]
    bad: list[BadItem] = []
    present: list[Path | str] = []
    for image in images:
        if isinstance(image, str) and image.startswith(("http://", "https://")):
            bad.append(BadItem(recipe_id, image, f"{where}: remote images are not fetched"))
        elif isinstance(image, Path) and not image.is_file():
            bad.append(BadItem(recipe_id, str(image), f"{where}: image file not found"))
        else:
            present.append(image)
    if not images:
        bad.append(BadItem(recipe_id, "", f"{where}: no image"))
    recipe = Recipe(
        id=recipe_id,
        title=title,
        ingredients=ingredient_list,
        cleaned_ingredients=cleaned_list,
        instructions=_text(record.get(fields.instructions)),
        images=present,
        category=_text(record.get(fields.category)),
        source=_text(record.get(fields.source)) or source,
    )
    return recipe, bad


def recipe_from_mapping(
    data: Any, base: Path, *, default_id: str, where: str
) -> tuple[Recipe | None, list[BadItem]]:
    """One recipe in JSON (``recipe.json``, a JSONL line, ``--recipe``), photos relative to ``base``.

    Without an ``images`` list (or ``image``), a ``recipe.json``'s folder contributes all its photos.
    """
    if not isinstance(data, dict):
        return None, [BadItem(default_id, where, f"{where}: not a JSON object")]
    raw_images = data.get("images")
    if raw_images is None and data.get("image"):
        raw_images = [data["image"]]
    images: list[Path | str] = []
    if raw_images is None and (base / RECIPE_FILE).is_file():  # folder format without a list
        images = list(sorted(p for p in base.iterdir() if _is_image(p)))
    elif isinstance(raw_images, list):
        for item in raw_images:
            text = _text(item)
            images.append(text if text.startswith(("http://", "https://")) else base / text)
    return make_recipe(
        data, JSON_FIELDS, recipe_id=_text(data.get("id")) or default_id, images=images, where=where
    )


class _Builder:
    """Collects recipes and bad items while a reader walks the source."""

    def __init__(self, root: Path, fmt: str) -> None:
        self.root = root
        self.format = fmt
        self.recipes: dict[str, Recipe] = {}
        self.bad: list[BadItem] = []

    def add(self, made: tuple[Recipe | None, list[BadItem]]) -> None:
        recipe, bad = made
        self.bad.extend(bad)
        if recipe is None:
            return
        previous = self.recipes.get(recipe.id)
        if previous is not None:  # more photos of a recipe seen before
            self.recipes[recipe.id] = replace(previous, images=[*previous.images, *recipe.images])
        else:
            self.recipes[recipe.id] = recipe

    def catalog(self) -> Catalog:
        recipes = [r for r in self.recipes.values() if r.images]
        return Catalog(recipes=recipes, bad=self.bad, root=self.root, format=self.format)


# -- readers -------------------------------------------------------------------------------------
def _kaggle_image(root: Path, name: str) -> Path:
    candidates = [name] if Path(name).suffix.lower() in IMAGE_SUFFIXES else [f"{name}.jpg", name]
    for folder in KAGGLE_IMAGE_DIRS:
        for candidate in candidates:
            path = root / folder / candidate
            if path.is_file():
                return path
    return root / KAGGLE_IMAGE_DIRS[0] / candidates[0]


def read_kaggle_csv(csv_path: Path) -> Catalog:
    root = csv_path.parent
    b = _Builder(root, "kaggle-csv")
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            missing = [c for c in (CSV_FIELDS.title, CSV_IMAGE) if c not in columns]
            if missing:
                raise CatalogError(f"{csv_path}: not a recipe CSV, missing column(s) {', '.join(missing)}")
            id_column = "Id" if "Id" in columns else ("" if "" in columns else None)
            for line_no, row in enumerate(reader, start=2):
                recipe_id = _text(row.get(id_column)) if id_column is not None else ""
                recipe_id = recipe_id or str(line_no - 2)
                name = _text(row.get(CSV_IMAGE))
                images: list[Path | str] = [_kaggle_image(root, name)] if name else []
                where = f"{csv_path.name} line {line_no}"
                b.add(
                    make_recipe(
                        row, CSV_FIELDS, recipe_id=recipe_id, images=images, where=where, source=csv_path.name
                    )
                )
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CatalogError(f"{csv_path}: cannot read CSV: {exc}") from None
    return b.catalog()


def read_jsonl(path: Path) -> Catalog:
    b = _Builder(path.parent, "jsonl")
    try:
        with path.open(encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path.name} line {line_no}"
                try:
                    data = json.loads(line)
                except ValueError as exc:
                    b.bad.append(BadItem(str(line_no), str(path), f"{where}: invalid JSON: {exc}"))
                    continue
                b.add(recipe_from_mapping(data, path.parent, default_id=str(line_no), where=where))
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read JSONL: {exc}") from None
    return b.catalog()


def read_recipe_folders(root: Path) -> Catalog:
    b = _Builder(root, "folders")
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        recipe_file = folder / RECIPE_FILE
        where = f"{folder.name}/{RECIPE_FILE}"
        if not recipe_file.is_file():
            b.bad.append(BadItem(folder.name, str(folder), f"{folder.name}: no {RECIPE_FILE}"))
            continue
        try:
            data = json.loads(recipe_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            b.bad.append(BadItem(folder.name, str(recipe_file), f"{where}: unreadable: {exc}"))
            continue
        b.add(recipe_from_mapping(data, folder, default_id=folder.name, where=where))
    return b.catalog()


def read_photo_folder(root: Path) -> Catalog:
    b = _Builder(root, "photos")
    for photo in sorted(p for p in root.iterdir() if _is_image(p)):
        title = photo.stem.replace("_", " ").replace("-", " ").strip()
        record = {JSON_FIELDS.title: title}  # a photo alone: its name is the title, nothing else is known
        b.add(
            make_recipe(
                record, JSON_FIELDS, recipe_id=photo.stem, images=[photo], where=photo.name, source=root.name
            )
        )
    return b.catalog()


def read_catalog(path: str | Path) -> Catalog:
    """Read a catalogue in any supported format (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise CatalogError(f"catalogue not found: {path}")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return read_kaggle_csv(path)
        if suffix in (".jsonl", ".ndjson"):
            return read_jsonl(path)
        raise CatalogError(f"{path}: unknown catalogue file type {suffix!r} (expected .csv or .jsonl)")
    try:
        entries = list(path.iterdir())
    except OSError as exc:
        raise CatalogError(f"{path}: cannot list folder: {exc}") from None
    csvs = sorted(p for p in entries if p.suffix.lower() == ".csv" and p.is_file())
    jsonls = sorted(p for p in entries if p.suffix.lower() in (".jsonl", ".ndjson") and p.is_file())
    if len(csvs) + len(jsonls) > 1:
        names = ", ".join(p.name for p in [*csvs, *jsonls])
        raise CatalogError(f"{path}: several catalogue files ({names}); name the one to use")
    if csvs:
        return read_kaggle_csv(csvs[0])
    if jsonls:
        return read_jsonl(jsonls[0])
    if any((p / RECIPE_FILE).is_file() for p in entries if p.is_dir()):
        return read_recipe_folders(path)
    if any(_is_image(p) for p in entries):
        return read_photo_folder(path)
    raise CatalogError(
        f"{path}: no catalogue found "
        f"(expected a .csv, a .jsonl, recipe folders with {RECIPE_FILE}, or photos)"
    )


# -- photos --------------------------------------------------------------------------------------
def load_photo(
    image: Path | str, *, size: int = IMAGE_SIZE, min_side: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[bytes, np.ndarray]:
    """A catalogue photo's bytes and its preprocessed array; ``ImageDecodeError`` says why not."""
    path = Path(image)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}") from None
    array = preprocess(data, size=size, max_pixels=max_pixels)
    # The size from the header, not a second decode (that doubled the decode cost of a build). JPEG
    # drafting never goes below ``size`` and EXIF rotation keeps the shorter side, so this is the side
    # the decoded image has too.
    with Image.open(io.BytesIO(data)) as header:
        width, height = header.size
    if min(width, height) < min_side:
        raise ImageDecodeError(f"image too small: {width}x{height} (minimum side {min_side})")
    return data, array


def write_bad_report(bad: Iterable[BadItem], path: str | Path) -> Path:
    """CSV with columns id, file, reason."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "file", "reason"])
            for item in bad:
                writer.writerow([item.recipe_id, item.file, item.reason])
    except OSError as exc:
        raise CatalogError(f"{path}: cannot write the bad-item report: {exc.strerror or exc}") from None
    return path


def recipe_payload(
    catalog_root: Path, recipe: Recipe, image: Path | str, model_version: str, *, photo: bytes | None = None
) -> dict[str, Any]:
    """The payload stored with one photo's vector (keys agreed in the store interface).

    With the ``photo`` bytes it carries ``source_hash``: a hash of the rest of the payload and those
    bytes, what a resumed build compares to tell a stale point from a current one.
    """
    payload = {
        "recipe_id": recipe.id,
        "title": recipe.title,
        "ingredients": list(recipe.ingredients),
        "cleaned_ingredients": list(recipe.cleaned_ingredients),
        "ingredient_keywords": ingredient_keywords(recipe.cleaned_ingredients or recipe.ingredients),
        "instructions": recipe.instructions,
        "image": image_name(catalog_root, image),
        "category": recipe.category,
        "source": recipe.source,
        "model_version": model_version,
    }
    if photo is not None:
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\0")
        digest.update(photo)
        payload["source_hash"] = digest.hexdigest()[:32]
    return payload
