"""``recipelens-train`` end to end on a generated catalogue: every preset trains briefly and exports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from embedder.manifest import read_manifest
from embedder.runtime import EmbeddingModel
from tests.support.imagegen import distorted, synthetic_photo
from tests.training.triplet_catalog import write_catalog
from training.train import HEAD_INIT_ROW
from training.train_cli import main

# Real EfficientNet-Lite0 with its ImageNet weights; only the amount of work is cut down.
FAST = [
    "--epochs=1",
    "--no-progress",
    "--set=cache_views=3",
    "--set=phase1.batch_recipes=8",
    "--set=phase2.batch_recipes=4",
    "--set=phase2.steps_per_epoch=2",
    "--set=evaluation.queries_per_photo=1",
]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_catalog(tmp_path_factory.mktemp("catalog"))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["raw", "tl", "tl-hard", "ft"])
def test_preset_trains_evaluates_and_exports(
    preset: str, catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["--preset", preset, "--catalog", str(catalog), "--out", str(tmp_path / "models"), *FAST])
    out = capsys.readouterr().out
    assert rc == 0, out
    model_dir = Path(out.strip().splitlines()[-1])
    assert model_dir.parent == tmp_path / "models" and model_dir.name.startswith(
        f"efficientnet_lite0-{preset}-"
    )

    manifest = read_manifest(model_dir)  # verifies the model hash
    assert manifest.source["preset"] == preset
    config = manifest.source["config"]
    assert config["preset"] == preset and config["backbone_weights"] == "imagenet"
    assert config["phase1"]["epochs"] == (0 if preset == "raw" else 1)
    assert manifest.embedding_dim == (1280 if preset == "raw" else 512)
    for key in ("test/recall@1", "test/recall@5", "test/recall@10", "test/map@10", "test/category_p@5"):
        assert 0.0 <= manifest.metrics[key] <= 1.0
        assert 0.0 <= manifest.metrics[key.replace("test/", "test/strong/")] <= 1.0
    assert manifest.metrics["headline_queries"] == "moderate"
    assert manifest.metrics["raw/recall@10"] >= 0.0
    assert manifest.parity["max_abs_diff"] <= 1e-4
    if preset != "raw":
        assert 0.0 <= manifest.metrics["validation/triplet_accuracy"] <= 1.0
        assert {"validation/pos_similarity", "validation/neg_similarity"} <= set(manifest.metrics)
    assert "| raw |" in out and "R@1" in out

    run_dir = next((tmp_path / "models" / "runs").iterdir())
    assert json.loads((run_dir / "config.json").read_text())["preset"] == preset
    # Seconds per stage (bench/train.py extrapolates them): the frozen parts' conversion for onnxruntime
    # apart, as a fixed cost, and the evaluation's queries apart from the clean photos training needs.
    timings = json.loads((run_dir / "timings.json").read_text())
    stages = {"decode_s", "frozen_convert_s", "raw_features_s", "query_features_s", "evaluate_s", "export_s"}
    assert stages <= set(timings) and all(timings[k] > 0 for k in stages)
    assert ("phase2_cache_s" in timings and "phase2_fit_s" in timings) == (preset == "ft")
    with (run_dir / "bad_images.csv").open() as fh:
        bad = list(csv.DictReader(fh))
    assert {row["id"] for row in bad} == {"r999"} and any("broken.jpg" in row["file"] for row in bad)
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split) == 24 and set(split.values()) == {"train", "validation", "test"}
    report = json.loads((run_dir / "evaluation.json").read_text())
    rows = {"raw"} if preset == "raw" else {"raw", preset, HEAD_INIT_ROW}
    # ft's catalogue photos at 224 + 288 px: raw with the same gallery is scored beside it.
    rows |= {"raw, gallery 224 + 288"} if preset == "ft" else set()
    # ft pools with GeM: raw Lite0 with average pooling is scored beside it, and every row against it too.
    references = {"raw"} | ({"raw efficientnet_lite0"} if preset == "ft" else set())
    scored = rows | references
    assert set(report["models"]) == scored | {f"{row}@strong" for row in scored}
    assert {m["distortion"] for m in report["models"].values()} == {"moderate", "strong"}
    # Each trained row against raw on the same queries, with an interval: R@1 per level, cat P@5 once.
    compared = {(c["model"], c["reference"], c["metric"], c["distortion"]) for c in report["comparisons"]}
    assert compared == {
        (row, ref, metric, level)
        for ref in references
        for row in scored - {ref}
        if preset != "raw"
        for metric, level in (("recall@1", "moderate"), ("recall@1", "strong"), ("category_p@5", "clean"))
    }
    assert all(c["low"] <= c["delta"] <= c["high"] for c in report["comparisons"])
    # The match verdict's rates of raw and the trained model, on a non-food test set of at least 60.
    verdict = report["match_verdict"]
    assert set(verdict) == {"raw", preset}
    for figures in verdict.values():
        assert 0.0 <= figures["food_not_none"] <= 1.0 and 0.0 <= figures["nonfood_none"] <= 1.0
        assert (
            figures["nonfood_queries"] >= 60
            and figures["food_queries"] == 2 * report["models"]["raw"]["queries"]
        )
    assert manifest.metrics["raw/nonfood_none"] == verdict["raw"]["nonfood_none"]
    assert manifest.metrics["test/food_not_none"] == verdict[preset]["food_not_none"]
    assert "## Match verdict" in out and "match verdict: raw food not none" in out
    if preset != "raw":
        key = "test/strong/recall@1_vs_raw"
        assert manifest.metrics[f"{key}_low"] <= manifest.metrics[key] <= manifest.metrics[f"{key}_high"]
    for picture in ["embedding_map.png"] + ([] if preset == "raw" else ["training_curves.png"]):
        assert (run_dir / picture).read_bytes()[:4] == b"\x89PNG"
        assert (model_dir / "report" / picture).is_file()
    if preset == "ft":
        history = json.loads((run_dir / "history.json").read_text())
        assert len(history["phase1"]) == 1 and len(history["phase2"]) == 1
    # ft embeds catalogue photos at 224 and 1.3 × 224 → 288 px (its graph takes both, checked at both).
    sizes = [224, 288] if preset == "ft" else []
    assert manifest.gallery_sizes == sizes and manifest.parity.get("sizes", []) == sizes
    noted = "catalogue photos embedded at 224 + 288 px" in (run_dir / "evaluation.md").read_text()
    assert noted == (preset == "ft")

    # The exported folder serves: a distorted copy of a catalogue photo finds that photo first.
    model = EmbeddingModel(model_dir)
    photos = sorted((catalog.parent / "Food Images").glob("dish-0*.jpg"))[:8]
    gallery = model.embed_images([p.read_bytes() for p in photos])
    query = model.embed_images([distorted(synthetic_photo(1000 + 30, size=(160, 120)), seed=1)])
    assert np.allclose(np.linalg.norm(gallery, axis=1), 1.0, atol=1e-3)
    assert photos[int(np.argmax(gallery @ query[0]))].name == "dish-003.jpg"


def test_missing_catalogue_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--preset", "tl", "--catalog", str(tmp_path / "nowhere.csv"), "--out", str(tmp_path), *FAST])
    assert rc == 2
    err = capsys.readouterr().err
    assert "catalogue not found" in err and "nowhere.csv" in err
    assert not (tmp_path / "runs").exists()  # nothing written for a run that cannot start


def test_too_small_catalogue_names_the_empty_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = write_catalog(tmp_path / "small", recipes=3, extra_photos=0, broken=False)
    rc = main(["--preset", "tl", "--catalog", str(catalog), "--out", str(tmp_path / "models"), *FAST])
    err = capsys.readouterr().err
    assert rc == 2
    assert "split has" in err and "recipe(s)" in err


def test_bad_setting_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "tl", "--catalog", "x", "--set", "nope=1"])
    assert exc.value.code == 2
    assert "unknown setting 'nope'" in capsys.readouterr().err


def test_show_config_prints_the_resolved_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--preset", "ft", "--epochs", "3", "--show-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["preset"] == "ft" and config["phase1"]["epochs"] == 3 and config["phase2"]["epochs"] == 3
