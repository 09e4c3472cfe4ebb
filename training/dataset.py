"""A run's data: the catalogue read and checked, its photos decoded at the backbone's size, recipes split.

Unusable catalogue items go to ``bad_images.csv`` in the run folder and the run goes on; a catalogue
with no usable photo, or a split too small to train or evaluate, ends with an error naming it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.catalog import read_catalog, write_bad_report
from training.backbones import backbone_image_size
from training.data import PhotoSet, load_photos
from training.presets import TrainConfig
from training.split import EmptySplitError, RecipeSplit, sample_recipes, split_recipes

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Decoded photos, the recipe split, and each split's recipe indices."""

    photos: PhotoSet
    split: RecipeSplit
    recipes: dict[str, np.ndarray]  # split name → recipe indices
    bad_count: int

    def photos_of(self, *splits: str) -> np.ndarray:
        """Photo indices of every recipe of the named splits, in recipe order."""
        parts = [self.photos.photos_of(int(r)) for s in splits for r in self.recipes[s]]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def prepare_data(config: TrainConfig, catalog_path: Path, run_dir: Path, *, progress: bool) -> PreparedData:
    """Read and validate the catalogue, decode its photos, split recipes; a clear error when unusable."""
    catalog = read_catalog(catalog_path)
    by_id = {r.id: r for r in catalog.recipes}
    chosen = sample_recipes(by_id, config.max_recipes, salt=config.split.salt)
    if not chosen:
        raise EmptySplitError(f"{catalog_path}: the catalogue has no recipes")
    size = backbone_image_size(config.backbone)
    photos, bad = load_photos([by_id[rid] for rid in chosen], size=size, progress=progress)
    bad = [*catalog.bad, *bad]
    if bad:
        report = run_dir / "bad_images.csv"
        write_bad_report(bad, report)
        log.warning("%d unusable catalogue item(s) listed in %s", len(bad), report)
    if not photos.recipe_ids:
        raise EmptySplitError(
            f"{catalog_path}: no recipe has a usable photo (see {run_dir / 'bad_images.csv'})"
        )
    split = split_recipes(
        photos.hashes_by_recipe(),
        train=config.split.train,
        validation=config.split.validation,
        salt=config.split.salt,
    )
    (run_dir / "split.json").write_text(json.dumps(split.assignment, indent=0, sort_keys=True))
    hint = " — use a larger catalogue or change the fractions, e.g. --set split.validation=0.2"
    index = photos.recipe_index()
    recipes = {}
    for name, minimum in (
        ("train", 2 if config.train else 0),
        ("validation", 2 if config.train else 0),
        ("test", 1),
    ):
        ids = split.require(name, minimum, hint=hint)  # type: ignore[arg-type]
        recipes[name] = np.asarray([index[rid] for rid in ids], np.int32)
    log.info("split: %s", ", ".join(f"{k} {len(v)} recipes" for k, v in recipes.items()))
    return PreparedData(photos, split, recipes, len(bad))
