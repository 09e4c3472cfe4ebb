"""The match verdict's calibration (a pure function) and the quality gate in front of the alias."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.build import BuildError, build_index
from indexer.calibration import (
    CALIBRATION_KEY,
    MatchCalibration,
    calibration_of,
    fit_calibration,
    match_verdict,
    verdict_rates,
)
from indexer.cli import run
from indexer.quality import QUALITY_KEY, CollectionQuality, gate_failures, quality_of
from indexer.store.edge import EdgeStore
from tests.support.tinymodel import write_tiny_model


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_verdict_from_calibration() -> None:
    rng = np.random.default_rng(0)
    bank = _unit(rng.standard_normal((8, 16)))
    queries = _unit(rng.standard_normal((50, 16)))
    top = rng.uniform(0.80, 0.95, size=50)  # distorted catalogue photos: their best hit
    other = rng.uniform(0.40, 0.70, size=50)  # and the best hit of another recipe
    cal = fit_calibration("m1", queries=queries, top_scores=top, other_scores=other, references=bank)
    assert cal.none_below < cal.strong_from and cal.samples == 50

    far = _unit(rng.standard_normal(16))
    strong = match_verdict(cal, far, [0.99, 0.6, 0.3])
    assert strong.match == "strong"
    assert 1 >= strong.confidences[0] > strong.confidences[1] > strong.confidences[2] >= 0
    assert match_verdict(cal, far, [0.2]).match == "none"
    assert match_verdict(cal, far, []).match == "none"
    middle = (cal.none_below + cal.strong_from) / 2 + cal.reference_weight * cal.reference_score(far)
    assert match_verdict(cal, far, [middle]).match == "weak"
    # The same top score next to a non-food reference picture (noise, text, …) is no match.
    assert match_verdict(cal, bank[3], [0.9]).match == "none"

    again = MatchCalibration.from_metadata(cal.to_metadata())  # int8 bank, JSON-safe
    assert again.model_version == "m1" and again.none_below == pytest.approx(cal.none_below, abs=1e-6)
    assert np.allclose(again.references, cal.references, atol=0.01)
    assert match_verdict(again, bank[3], [0.9]).match == "none"
    with pytest.raises(ValueError):
        MatchCalibration.from_metadata({**cal.to_metadata(), "format": 99})
    extra = {CALIBRATION_KEY: cal.to_metadata()}
    assert calibration_of(extra, "m1") is not None
    assert calibration_of(extra, "m2") is None  # another model's thresholds never apply
    assert calibration_of({}, "m1") is None and calibration_of({CALIBRATION_KEY: {"format": 1}}, "m1") is None


def test_verdict_rates_on_embeddings_alone() -> None:
    rng = np.random.default_rng(1)
    gallery = _unit(rng.standard_normal((40, 32)))
    origin = np.repeat(np.arange(40), 2)
    queries = _unit(gallery[origin] + 0.25 * rng.standard_normal((80, 32)) / np.sqrt(32))
    centre = _unit(rng.standard_normal(32))
    bank = _unit(centre + 0.3 * rng.standard_normal((16, 32)) / np.sqrt(32))
    nonfood = _unit(np.vstack([centre + 0.3 * rng.standard_normal((20, 32)) / np.sqrt(32),
                               rng.standard_normal((20, 32))]))  # fmt: skip
    recipes = [f"r{i}" for i in range(40)]
    food, rejected = verdict_rates(
        gallery, recipes, queries, [recipes[i] for i in origin], bank=bank, nonfood=nonfood
    )
    assert food >= 0.95 and rejected >= 0.9


def test_gate_compares_the_gated_figures() -> None:
    live = CollectionQuality(100, 0.90, 0.98, 0.95, 48, 50)
    assert gate_failures(live, CollectionQuality(100, 0.895, 0.90, 0.95, 48, 50), 1.0) == []
    failures = gate_failures(live, CollectionQuality(100, 0.85, 0.98, 0.90, 48, 50), 1.0)
    assert failures == [
        "R@1 85.0 < live 90.0 (−5.0 points)",
        "non-food none 90.0 < live 95.0 (−5.0 points)",
    ]
    assert gate_failures(live, CollectionQuality(100, 0.85, 0.98, 0.95, 48, 50), 10.0) == []


def test_build_records_figures_and_gate_refuses_a_worse_collection(
    catalog40: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    worse = tmp_path / "worse"
    write_tiny_model(worse, dim=3, seed=5)  # 3-D: distorted photos mostly miss their recipe
    store_path = tmp_path / "q"
    with EdgeStore(store_path) as store:
        good = build_index(catalog40, tiny_model_dir, store, batch_size=16, progress=False)
        assert good.quality is not None and good.quality.recall_at_1 >= 0.7
        extra = store.collection_info(good.collection).extra
        assert quality_of(extra) == good.quality
        assert MatchCalibration.from_metadata(extra[CALIBRATION_KEY]).model_version == good.model_version

        with pytest.raises(BuildError) as refused:
            build_index(catalog40, worse, store, batch_size=16, progress=False)
        message = str(refused.value)
        assert "quality gate" in message and "R@1" in message and "--force" in message
        assert f"live {100 * good.quality.recall_at_1:.1f}" in message  # both figures named
        assert store.resolve_alias("recipes") == good.collection
        held = [c for c in store.list_collections() if not c.complete]
        assert len(held) == 1 and QUALITY_KEY in held[0].extra  # kept, with its figures

    # --force resumes the refused collection (nothing to embed again) and moves the alias.
    assert run(["build", "--store-path", str(store_path), "--catalog", str(catalog40), "--model", str(worse),
                "--force", "--no-progress"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "skipped 40" in out and "figures of" in out and "R@1" in out
    with EdgeStore(store_path) as store:
        live = store.resolve_alias("recipes")
        assert live == held[0].name and store.collection_info(live).complete
    assert run(["list", "--store-path", str(store_path)]) == 0
    listing = capsys.readouterr().out
    assert "FIGURES" in listing and listing.count("R@1") == 2
