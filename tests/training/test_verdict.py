"""The match verdict with the real raw model, on a smaller set: the acceptance bounds of bench/verdict.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedder.runtime import EmbeddingModel
from indexer.build import build_index
from indexer.calibration import CALIBRATION_KEY, MatchCalibration, match_verdict
from indexer.distortions import distort
from indexer.quality import sample_photos
from indexer.store.edge import EdgeStore
from tests.indexer.conftest import write_kaggle_catalog
from tests.support.nonfood_set import nonfood_test_set


def test_raw_model_verdict_bounds(raw_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    catalog = tmp_path / "catalog"
    write_kaggle_catalog(catalog, 30, size=(320, 240))
    with EdgeStore(tmp_path / "q") as store:
        summary = build_index(catalog, raw_model_dir, store, quality_sample=16, batch_size=32, progress=False)
        cal = MatchCalibration.from_metadata(store.collection_info(summary.collection).extra[CALIBRATION_KEY])
        model = EmbeddingModel(raw_model_dir)
        photos = sorted((catalog / "images").glob("*.jpg"))
        calibrated = {Path(p) for _, p in sample_photos([("", p) for p in photos], 16)}
        held = [p for p in photos if p not in calibrated]  # photos the calibration never distorted
        rng = np.random.default_rng(99)
        food = [distort(p.read_bytes(), rng, level) for p in held for level in ("moderate", "strong")]
        nonfood = [data for _, data in nonfood_test_set(48, crops=False)]  # real photos + generated

        def verdicts(datas: list[bytes]) -> list[str]:
            out = []
            for vector in model.embed_images(datas):
                hits = store.search(summary.collection, vector, limit=5, model_version=model.version)
                out.append(match_verdict(cal, vector, [h.score for h in hits]).match)
            return out

        food_verdicts, nonfood_verdicts = verdicts(food), verdicts(nonfood)
    assert len(nonfood) >= 60 and len(food) >= 20
    not_none = np.mean([v != "none" for v in food_verdicts])
    none = np.mean([v == "none" for v in nonfood_verdicts])
    assert not_none >= 0.95, food_verdicts
    assert none >= 0.90, nonfood_verdicts
