"""Whole builds on Qdrant Edge with the tiny ONNX model: blue/green, rollback, guards, edits, resume."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from embedder.embedding import combine_views
from embedder.preprocess import preprocess
from embedder.runtime import EmbeddingModel
from indexer.build import BuildError, build_index, open_embedder
from indexer.catalog import Recipe
from indexer.collections import rollback
from indexer.edit import upsert_recipe
from indexer.store.base import ModelVersionMismatch, SearchFilter
from indexer.store.edge import EdgeStore
from tests.indexer.conftest import write_kaggle_catalog
from tests.support.imagegen import distorted, encode, synthetic_photo
from tests.support.search import SyncSearch
from tests.support.tinymodel import write_tiny_model

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


class Killed(Exception):
    """Stands for a kill between two batches: what was flushed stays, nothing else happens."""


class DyingEmbedder:
    """The real in-process embedder, which dies after ``batches`` batches."""

    def __init__(self, model_dir: Path, batches: int) -> None:
        self.inner = open_embedder(model_dir, None)
        self.version, self.dimension = self.inner.version, self.inner.dimension
        self.image_size = self.inner.image_size
        self.batches = batches

    def embed_gallery_batches(self, batches):  # type: ignore[no-untyped-def]
        for i, vectors in enumerate(self.inner.embed_gallery_batches(batches)):
            if i == self.batches:
                raise Killed
            yield vectors


def _edit_csv(csv_path: Path, edit: Callable[[list[dict[str, str]]], list[dict[str, str]]]) -> None:
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    rows = edit(rows)
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields or []))
        writer.writeheader()
        writer.writerows(rows)


def test_a_resume_re_embeds_what_changed_and_deletes_what_left(tiny_model_dir: Path, tmp_path: Path) -> None:
    catalog = tmp_path / "cat"
    write_kaggle_catalog(catalog, 24)
    with EdgeStore(tmp_path / "q") as store:
        with pytest.raises(Killed):
            _build(catalog, tiny_model_dir, store, batch_size=8, embedder=DyingEmbedder(tiny_model_dir, 2))
        (unfinished,) = store.list_collections()
        assert store.count(unfinished.name) == 16 and store.resolve_alias("recipes") is None

        def edit(rows: list[dict[str, str]]) -> list[dict[str, str]]:
            for row in rows:
                if row["Id"] == "r1":
                    row["Title"] = "Dish 1, renamed"
            return [row for row in rows if row["Id"] != "r2"]

        _edit_csv(catalog / "recipes.csv", edit)  # r1 retitled, r2 gone, r3 another photo
        (catalog / "images" / "dish-003.jpg").write_bytes(encode(synthetic_photo(903, (160, 120))))
        done = _build(catalog, tiny_model_dir, store, verify_sample=4)
        assert done.resumed and done.collection == unfinished.name
        assert (done.skipped, done.changed, done.removed, done.indexed, done.total) == (13, 2, 1, 10, 23)
        assert "re-embedded 2 (changed), removed 1 (left the catalogue)" in done.line()
        assert store.resolve_alias("recipes") == done.collection and store.count(done.collection) == 23
        assert store.ids_of_recipe(done.collection, "r2") == []
        (r1,) = store.retrieve(done.collection, store.ids_of_recipe(done.collection, "r1"))
        assert r1.payload["title"] == "Dish 1, renamed"
        model = EmbeddingModel(tiny_model_dir)
        query = model.embed_images([encode(synthetic_photo(903, (160, 120)))])[0]
        best = store.search_recipes(done.collection, query, limit=1, model_version=model.version).hits[0]
        assert best.recipe_id == "r3" and best.score == pytest.approx(1.0, abs=1e-4)  # the new photo


def test_an_unfinished_build_of_another_catalogue_is_not_resumed(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write_kaggle_catalog(first, 24)
    write_kaggle_catalog(second, 10, seed0=100)
    with EdgeStore(tmp_path / "q") as store:
        with pytest.raises(Killed):
            _build(first, tiny_model_dir, store, batch_size=8, embedder=DyingEmbedder(tiny_model_dir, 2))
        (unfinished,) = store.list_collections()
        with caplog.at_level(logging.WARNING, logger="indexer.build"):
            other = _build(second, tiny_model_dir, store, verify_sample=2)
        assert not other.resumed and other.collection != unfinished.name
        assert (other.indexed, store.count(other.collection)) == (10, 10)
        assert f"unfinished collection {unfinished.name} was filled from another catalogue" in caplog.text
        assert "starting a fresh collection" in caplog.text
        assert store.count(unfinished.name) == 16  # left alone, for its own catalogue
        again = _build(first, tiny_model_dir, store, verify_sample=2, force=True)  # vs another catalogue
        assert again.resumed and again.collection == unfinished.name and again.skipped == 16
        assert store.resolve_alias("recipes") == unfinished.name and store.count(unfinished.name) == 24


def test_cli_swap_drop_and_a_missing_store(
    catalog40: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from indexer.cli import run

    missing = tmp_path / "does" / "not" / "exist"
    for command in (["list"], ["rollback"], ["swap", "c"], ["drop", "c"], ["delete", "r1"]):
        assert run([*command, "--store-path", str(missing)]) == 1
        assert f"the store {missing} does not exist" in capsys.readouterr().err
    assert not missing.parent.parent.exists()  # nothing created

    root = tmp_path / "q"
    with EdgeStore(root) as store:
        first = _build(catalog40, tiny_model_dir, store, verify_sample=1).collection
        second = _build(catalog40, tiny_model_dir, store, verify_sample=1).collection
        store.create_collection("unfinished", dimension=64, model_version="m")
    capsys.readouterr()
    assert run(["drop", second, "--store-path", str(root)]) == 1
    message = capsys.readouterr().err
    assert "behind alias 'recipes'" in message and "`recipelens-index swap NAME --alias recipes`" in message
    assert run(["swap", "unfinished", "--store-path", str(root)]) == 1
    assert "incomplete; it cannot go behind alias" in capsys.readouterr().err
    assert run(["swap", "nope", "--store-path", str(root)]) == 1
    assert "no collection 'nope'" in capsys.readouterr().err
    assert run(["swap", first, "--store-path", str(root)]) == 0  # what the drop message suggests
    assert capsys.readouterr().out.strip() == f"alias 'recipes': {second} → {first}"
    assert run(["drop", second, "--store-path", str(root)]) == 0
    with EdgeStore(root) as store:
        assert store.resolve_alias("recipes") == first
        assert {c.name for c in store.list_collections()} == {first, "unfinished"}


def test_catalogue_photos_are_stored_at_every_gallery_size_of_the_model(
    catalog40: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "models" / "zoomed"
    write_tiny_model(folder, gallery_sizes=(224, 288))
    model = EmbeddingModel(folder)

    def vectors(data: bytes) -> tuple[np.ndarray, np.ndarray]:
        views = [model.embed_arrays(preprocess(data, size=size)[None]) for size in (224, 288)]
        return views[0][0], combine_views(views)[0]

    with EdgeStore(tmp_path / "q") as store:
        built = _build(catalog40, folder, store, verify_sample=8)  # the sample re-embeds as stored
        query, gallery = vectors((catalog40 / "images" / "dish-007.jpg").read_bytes())
        (stored,) = store.search(built.collection, gallery, limit=1, model_version=model.version)
        assert stored.payload["recipe_id"] == "r7" and stored.score == pytest.approx(1.0, abs=1e-4)
        (found,) = store.search(built.collection, query, limit=1, model_version=model.version)
        assert found.payload["recipe_id"] == "r7" and found.score < 0.99  # a query is embedded at 224 alone
        # A single-recipe edit stores its photo the same way.
        photo = tmp_path / "new" / "n1.jpg"
        photo.parent.mkdir()
        photo.write_bytes(encode(synthetic_photo(500, (160, 120))))
        new = Recipe("n1", "New dish", ["2 leeks"], ["leeks"], "Stew.", [photo], "Soups", "test")
        upsert_recipe(store, new, open_embedder(folder, None), catalog_root=photo.parent)
        _, gallery = vectors(photo.read_bytes())
        (stored,) = store.search(
            store.resolve_alias("recipes") or "", gallery, limit=1, model_version=model.version
        )
        assert stored.payload["recipe_id"] == "n1" and stored.score == pytest.approx(1.0, abs=1e-4)
