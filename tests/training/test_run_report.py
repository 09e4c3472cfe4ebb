"""The evaluation report, pictures and comparison tables a run writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.training.test_evaluate import GALLERY, GALLERY_RECIPE, _angles
from training.evaluate import paired_delta, score
from training.run_report import pca_2d, plot_embedding_map, write_report


def test_reports_and_pictures(tmp_path: Path) -> None:
    result = score(
        queries=_angles([95, 10]),
        query_recipe=np.array([0, 2]),
        gallery=GALLERY,
        gallery_recipe=GALLERY_RECIPE,
        gallery_category=np.array([0, 0, 1, 1, 1]),
        held_out=np.array([2, 3]),
    )
    json_path, md_path = write_report(
        tmp_path,
        {"raw": result, "tl-hard": result},
        title="t",
        extra={"preset": "tl-hard"},
        targets="targets",
    )
    data = json.loads(json_path.read_text())
    assert data["preset"] == "tl-hard" and data["models"]["raw"]["flat"]["recall@1"] == result.recall[1]
    md = md_path.read_text()
    assert "| model | queries | R@1 | R@5 | R@10 | mAP@10 | cat P@1 | cat P@5 |" in md
    assert f"| raw | moderate | {100 * result.recall[1]:.1f} |" in md and "| tl-hard | moderate |" in md
    emb = np.random.default_rng(0).normal(size=(40, 8))
    xy = pca_2d(emb)
    assert xy.shape == (40, 2) and np.var(xy[:, 0]) >= np.var(xy[:, 1])
    png = plot_embedding_map(
        {"raw": emb, "tl-hard": emb[:, ::-1]}, np.arange(40) % 3 - 1, ["a", "b"], tmp_path / "map.png"
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_shows_the_paired_comparison(tmp_path: Path) -> None:
    result = score(
        queries=_angles([95, 10]),
        query_recipe=np.array([0, 2]),
        gallery=GALLERY,
        gallery_recipe=GALLERY_RECIPE,
        gallery_category=None,
        held_out=np.array([2, 3]),
    )
    delta = paired_delta(
        np.array([1.0, 1.0]), np.array([1.0, 0.0]), np.array([0, 1]), metric="recall@1", model="tl-hard"
    )
    json_path, md_path = write_report(tmp_path, {"raw": result}, title="t", comparisons=[delta])
    md = md_path.read_text()
    assert "## Against raw, on the same queries" in md
    assert "| tl-hard | moderate | R@1 | 50.0 | 100.0 | +50.0 |" in md and "| 1 / 0 |" in md
    data = json.loads(json_path.read_text())
    assert data["comparisons"][0]["delta"] == 0.5 and data["comparisons"][0]["verdict"] in {
        "better",
        "no clear difference",
    }
