"""Whole builds on Qdrant Edge with the tiny ONNX model: blue/green, rollback, guards, edits, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedder.runtime import EmbeddingModel
from indexer.build import BuildError, build_index, open_embedder, rollback
from indexer.catalog import Recipe
from indexer.edit import upsert_recipe
from indexer.store.base import ModelVersionMismatch, SearchFilter
from indexer.store.edge import EdgeStore
from tests.indexer.conftest import write_kaggle_catalog
from tests.support.imagegen import distorted, encode, synthetic_photo
from tests.support.search import SyncSearch

REPO = Path(__file__).resolve().parents[2]


def _build(catalog: Path, model: Path, store: EdgeStore, **kw: object):  # type: ignore[no-untyped-def]
    kw.setdefault("batch_size", 16)
    return build_index(catalog, model, store, progress=False, **kw)  # type: ignore[arg-type]


def test_build_search_rebuild_rollback(catalog40: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    with EdgeStore(tmp_path / "q") as store:
        first = _build(catalog40, tiny_model_dir, store)
        assert (first.indexed, first.skipped, first.bad, first.total) == (40, 0, 0, 40)
        assert store.resolve_alias("recipes") == first.collection and store.count(first.collection) == 40
        assert "images/s" in first.line()

        searcher = SyncSearch(store, tiny_model_dir)
        for seed in (3, 17, 33):  # a cropped, recompressed photo finds its recipe first
            result = searcher.search(distorted(synthetic_photo(seed, (160, 120)), seed), top_k=3)
            assert result.hits[0].recipe_id == f"r{seed}", result.hits
        hit = searcher.search(encode(synthetic_photo(5, (160, 120))), top_k=1).hits[0]
        assert hit.payload["ingredient_keywords"] and hit.payload["model_version"] == first.model_version
        soups = searcher.search(
            encode(synthetic_photo(5, (160, 120))),
            top_k=40,
            search_filter=SearchFilter(categories=("Soups",)),
        )
        assert len(soups.hits) == 14 and {h.category for h in soups.hits} == {"Soups"}

        second = _build(catalog40, tiny_model_dir, store)  # a rerun: a new collection, no duplicates
        assert second.collection != first.collection and store.count(second.collection) == 40
        assert store.resolve_alias("recipes") == second.collection and second.previous == first.collection
        third = _build(catalog40, tiny_model_dir, store, keep_previous=1)
        assert third.dropped == [first.collection]  # only one previous collection is kept
        names = {c.name for c in store.list_collections()}
        assert names == {second.collection, third.collection}

        assert rollback(store) == (third.collection, second.collection)
        assert store.resolve_alias("recipes") == second.collection


def test_model_version_guard(
    catalog40: Path, tiny_model_dir: Path, second_model_dir: Path, tmp_path: Path
) -> None:
    with EdgeStore(tmp_path / "q") as store:
        summary = _build(catalog40, second_model_dir, store, verify_sample=3)
        old = EmbeddingModel(tiny_model_dir)
        vec = old.embed_images([encode(synthetic_photo(1, (160, 120)))])[0]
        with pytest.raises(ModelVersionMismatch) as err:
            store.search(summary.collection, vec, limit=1, model_version=old.version)
        assert summary.model_version in str(err.value) and old.version in str(err.value)
        recipe = Recipe("r1", "Dish 1", [], [], "", [catalog40 / "images" / "dish-001.jpg"])
        with pytest.raises(ModelVersionMismatch, match=old.version):
            upsert_recipe(store, recipe, open_embedder(tiny_model_dir, None), catalog_root=catalog40)


def test_bad_photos_are_reported_and_threshold_fails(tiny_model_dir: Path, tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    write_kaggle_catalog(cat, 30, size=(96, 72))
    (cat / "images" / "dish-004.jpg").write_bytes(b"garbage")
    (cat / "images" / "dish-005.jpg").unlink()
    report = tmp_path / "bad.csv"
    with EdgeStore(tmp_path / "q") as store:
        with pytest.raises(
            BuildError, match=r"2 of 30 photos are bad \(6\.7%\), above max_bad_fraction 5\.0%"
        ):
            _build(cat, tiny_model_dir, store, bad_report=report)
        assert store.resolve_alias("recipes") is None
        rows = report.read_text().splitlines()
        assert (
            rows[0] == "id,file,reason"
            and len(rows) == 3
            and any("r4" in r and "identify" in r for r in rows)
        )
        ok = _build(cat, tiny_model_dir, store, bad_report=report, max_bad_fraction=0.1)
        assert (ok.bad, ok.indexed, ok.skipped, store.count(ok.collection)) == (2, 0, 28, 28)
        assert ok.resumed  # the failed attempt's collection was finished, not rebuilt


def test_killed_build_resumes(catalog40: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "q"
    catalog = tmp_path / "cat"
    shutil.copytree(catalog40, catalog)
    with EdgeStore(root) as store:  # an older complete collection stands behind the alias
        old = _build(catalog, tiny_model_dir, store, verify_sample=1).collection
    env = {**os.environ, "RECIPELENS_INDEXER_BATCH_PAUSE_S": "0.4", "RECIPELENS_INDEXER_BATCH_SIZE": "8"}
    cmd = [
        sys.executable,
        "-m",
        "indexer.cli",
        "build",
        "--catalog",
        str(catalog),
        "--model",
        str(tiny_model_dir),
        "--store-path",
        str(root),
        "--no-progress",
        "--bad-report",
        str(tmp_path / "bad.csv"),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    building = None
    while time.monotonic() < deadline:
        metas = [json.loads(p.read_text()) for p in (root / "collections").glob("*/collection.json")]
        building = next((m for m in metas if not m["complete"] and m["points_count"] >= 16), None)
        if building or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert building is not None, proc.communicate()[0].decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with EdgeStore(root) as store:
        assert store.resolve_alias("recipes") == old  # the alias never moved
        stored = store.count(building["name"])
        assert 16 <= stored < 40
    env["RECIPELENS_INDEXER_BATCH_PAUSE_S"] = "0"
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert f"skipped {stored} (already stored)" in done.stdout
    with EdgeStore(root) as store:
        assert store.resolve_alias("recipes") == building["name"] and store.count(building["name"]) == 40


def test_cli_messages_and_exit_codes(tiny_model_dir: Path, tmp_path: Path) -> None:
    from indexer.cli import run

    assert (
        run(
            [
                "build",
                "--catalog",
                str(tmp_path / "missing"),
                "--model",
                str(tiny_model_dir),
                "--store-path",
                str(tmp_path / "q"),
                "--no-progress",
            ]
        )
        == 1
    )
    assert run(["drop", "nope", "--store-path", str(tmp_path / "q")]) == 1
    assert run(["rollback", "--store-path", str(tmp_path / "q")]) == 1
    assert run(["list", "--store-path", str(tmp_path / "q")]) == 0
