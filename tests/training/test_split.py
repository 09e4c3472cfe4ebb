"""Recipe-level split: deterministic, leak-free (recipes and duplicate photos), clear errors; presets."""

from __future__ import annotations

import pytest

from training.presets import PRESETS, TrainConfig, preset_config
from training.split import SPLITS, EmptySplitError, sample_recipes, split_recipes


def _catalogue(n: int) -> dict[str, list[str]]:
    return {f"recipe-{i}": [f"photo-{i}-a", f"photo-{i}-b"] for i in range(n)}


def test_split_is_deterministic_and_independent_of_order() -> None:
    photos = _catalogue(500)
    first = split_recipes(photos)
    again = split_recipes(dict(reversed(list(photos.items()))))
    assert first.assignment == again.assignment
    # Adding recipes never moves an existing one.
    bigger = split_recipes({**photos, **{f"new-{i}": [f"n{i}"] for i in range(200)}})
    assert all(bigger.assignment[rid] == name for rid, name in first.assignment.items())


def test_no_recipe_in_two_splits_and_fractions_hold() -> None:
    split = split_recipes(_catalogue(3000), train=0.7, validation=0.15)
    sets = {name: set(split.ids(name)) for name in SPLITS}
    assert sets["train"].isdisjoint(sets["validation"])
    assert sets["train"].isdisjoint(sets["test"])
    assert sets["validation"].isdisjoint(sets["test"])
    assert set().union(*sets.values()) == set(split.assignment)
    counts = split.counts()
    assert abs(counts["train"] / 3000 - 0.70) < 0.03
    assert abs(counts["validation"] / 3000 - 0.15) < 0.03
    assert abs(counts["test"] / 3000 - 0.15) < 0.03


def test_duplicate_photos_never_straddle_splits() -> None:
    photos = _catalogue(400)
    # Chains of recipes linked by byte-identical photos: r0–r1 share one, r1–r2 another, ...
    for i in range(0, 399, 4):
        photos[f"recipe-{i + 1}"].append(f"photo-{i}-a")
        photos[f"recipe-{i + 2}"].append(f"photo-{i + 1}-b")
    split = split_recipes(photos)
    owners: dict[str, set[str]] = {}
    for rid, hashes in photos.items():
        for digest in hashes:
            owners.setdefault(digest, set()).add(split.assignment[rid])
    assert all(len(names) == 1 for names in owners.values())
    for i in range(0, 399, 4):
        assert split.assignment[f"recipe-{i}"] == split.assignment[f"recipe-{i + 2}"]
        chain = [f"recipe-{i + k}" for k in range(3)]
        assert {split.groups[rid] for rid in chain} == {min(chain)}  # one group, keyed by its smallest id
    # The grouping changed placements, so the test would catch a split that ignored it.
    assert split.assignment != split_recipes(_catalogue(400)).assignment


def test_require_names_the_split_and_the_counts() -> None:
    split = split_recipes(_catalogue(3))
    with pytest.raises(EmptySplitError, match=r"the validation split has \d recipe\(s\), at least 5 needed"):
        split.require("validation", 5, hint=" — add recipes")


def test_sample_is_stable_and_bounded() -> None:
    ids = [f"id{i}" for i in range(100)]
    sample = sample_recipes(ids, 10, salt="s")
    assert len(sample) == 10
    assert sample == sample_recipes(list(reversed(ids)), 10, salt="s")
    assert sample != sorted(ids)[:10]
    assert sample_recipes(ids, None, salt="s") == sorted(ids)


def test_presets_reproduce_the_seed_notebooks() -> None:
    assert set(PRESETS) == {"raw", "tl", "tl-hard", "ft"}
    assert not PRESETS["raw"].train
    tl, hard, ft = PRESETS["tl"], PRESETS["tl-hard"], PRESETS["ft"]
    assert (tl.mining, tl.margin, tl.phase1.epochs, tl.phase2.epochs) == ("random", 0.3, 10, 0)
    assert (hard.mining, hard.margin, hard.phase1.epochs, hard.phase2.epochs) == ("batch-hard", 0.8, 15, 0)
    assert (ft.mining, ft.margin, ft.phase1.epochs, ft.phase2.epochs) == ("batch-hard", 0.8, 6, 20)
    assert ft.unfreeze_layers == 40 and ft.phase2.learning_rate < ft.phase1.learning_rate
    # Chosen on validation queries: GeM, and the unfrozen blocks' depthwise kernels kept frozen.
    assert (ft.pooling, ft.phase2_depthwise) == ("gem", False) and hard.pooling == "avg"
    assert hard.weight_decay == 1e-4 and hard.lr_patience == 3 and hard.early_stopping_patience == 5
    # What the seed left open (presets.QUERY_LIKE): ft's first phase is tl-hard's.
    assert hard.head_init == ft.head_init == "whitened" and tl.head_init == "pca"
    assert hard.augment == ft.augment and hard.augment.fill == "constant" and tl.augment.fill == "reflect"
    assert hard.phase1.learning_rate == ft.phase1.learning_rate and hard.query_gallery and ft.query_gallery


def test_overrides_parse_values_and_reject_unknown_keys() -> None:
    config = preset_config("tl").overridden(["margin=0.5", "phase1.batch_recipes=8", "backbone_weights=null"])
    assert (config.margin, config.phase1.batch_recipes, config.backbone_weights) == (0.5, 8, None)
    assert config.with_epochs(2).phase1.epochs == 2 and config.with_epochs(2).phase2.epochs == 0
    with pytest.raises(ValueError, match="unknown setting 'marginn'"):
        TrainConfig().overridden(["marginn=1"])
    with pytest.raises(ValueError, match="invalid setting"):
        TrainConfig().overridden(["mining=hardest"])
    with pytest.raises(ValueError, match="unknown preset 'best'"):
        preset_config("best")
