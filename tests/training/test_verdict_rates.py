"""The match verdict's rates in the training evaluation: the indexer's calibration on a model's embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from indexer.calibration import verdict_rates
from indexer.nonfood import BANK_SIZE, nonfood_test_set, reference_bank
from tests.training.test_evaluate import GALLERY, GALLERY_RECIPE, _angles
from training.evaluate import NONFOOD_TEST_GENERATED, nonfood_sets, score, verdict_figures
from training.run_report import manifest_metrics, verdict_line, write_report

DIM = 32


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _catalogue(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """40 recipes of one photo each, and two distortion levels of two queries per photo."""
    gallery = _unit(rng.standard_normal((40, DIM)))
    photos = np.repeat(np.arange(40), 2)
    queries = [_unit(gallery[photos] + s * rng.standard_normal((80, DIM)) / np.sqrt(DIM)) for s in (0.2, 0.3)]
    return gallery, np.arange(40), queries, [photos, photos]


def test_a_model_that_cannot_tell_noise_from_food_gets_a_low_nonfood_rate(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    gallery, recipes, queries, photos = _catalogue(rng)
    centre = _unit(rng.standard_normal((1, DIM)))
    bank = _unit(centre + 0.3 * rng.standard_normal((16, DIM)) / np.sqrt(DIM))
    # A model that embeds non-food pictures near its bank, and one that embeds them like catalogue photos.
    apart = {"bank": bank, "test": _unit(centre + 0.3 * rng.standard_normal((30, DIM)) / np.sqrt(DIM))}
    alike = {"bank": bank, "test": _unit(gallery[:30] + 0.25 * rng.standard_normal((30, DIM)) / np.sqrt(DIM))}
    good = verdict_figures(gallery, recipes, queries, photos, apart)
    blind = verdict_figures(gallery, recipes, queries, photos, alike)
    assert good.food_not_none >= 0.95 and good.nonfood_none >= 0.9 and good.meets_goals()
    assert blind.nonfood_none <= 0.2 and not blind.meets_goals()
    assert (good.food_queries, good.nonfood_queries, good.bank) == (160, 30, 16)
    # The same figures as the indexer's own function on the same vectors: one calibration, not a copy.
    q = np.concatenate(queries)
    expected = verdict_rates(
        gallery, recipes, q, recipes[np.concatenate(photos)], bank=bank, nonfood=apart["test"]
    )
    assert (good.food_not_none, good.nonfood_none) == expected

    # In the report (Markdown and JSON), the manifest and the CLI's summary line.
    result = score(
        queries=_angles([95]),
        query_recipe=np.array([0]),
        gallery=GALLERY,
        gallery_recipe=GALLERY_RECIPE,
        gallery_category=None,
        held_out=np.array([2]),
    )
    verdict = {"raw": blind, "tl-hard": good}
    json_path, md_path = write_report(tmp_path, {"raw": result}, title="t", verdict=verdict)
    md = md_path.read_text()
    assert "## Match verdict" in md and "food not none (goal ≥ 95 %)" in md
    assert f"| raw | {100 * blind.food_not_none:.1f} | {100 * blind.nonfood_none:.1f} | NOT met |" in md
    assert f"| tl-hard | {100 * good.food_not_none:.1f} | {100 * good.nonfood_none:.1f} | met |" in md
    data = json.loads(json_path.read_text())["match_verdict"]
    assert data["tl-hard"]["nonfood_none"] == good.nonfood_none and data["raw"]["nonfood_queries"] == 30
    metrics = manifest_metrics(
        {"raw": result}, [], {}, model="tl-hard", headline="moderate", split_recipes={}, verdict=verdict
    )
    assert (
        metrics["test/nonfood_none"] == good.nonfood_none
        and metrics["raw/nonfood_none"] == blind.nonfood_none
    )
    assert metrics["test/food_not_none"] == good.food_not_none
    assert f"tl-hard food not none {100 * good.food_not_none:.1f} %" in verdict_line(verdict)


def test_nonfood_sets_are_the_bank_and_the_disjoint_test_family() -> None:
    sets = nonfood_sets(size=64)
    test = nonfood_test_set(NONFOOD_TEST_GENERATED, crops=False)
    assert sets["bank"].shape == (BANK_SIZE, 64, 64, 3) and sets["bank"].dtype == np.uint8
    assert sets["test"].shape == (len(test), 64, 64, 3) and len(test) >= 60  # the acceptance's count
    assert not {data for _, data in reference_bank()} & {data for _, data in test}
