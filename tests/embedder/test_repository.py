"""ModelRepository on real tiny model folders: default version, lookups, refusals, hot add and remove."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest

from embedder.repository import ModelRepository, ModelRepositoryError, UnknownModelError
from embedder.runtime import STOP_SPINNING, select_providers
from tests.embedder.conftest import NEW, NEWEST, OLD, corrupt, make_model

CPU = ["CPUExecutionProvider"]


def test_loads_every_folder_and_defaults_to_the_newest(two_models: tuple[Path, str, str]) -> None:
    root, old, new = two_models
    repo = ModelRepository(root, providers=CPU)
    assert repo.versions() == [new, old]
    assert repo.default_version == new
    assert repo.get(None).version == new
    assert repo.get("").version == new
    assert repo.get(old).version == old
    assert repo.get(old).provider == "CPUExecutionProvider"
    with pytest.raises(UnknownModelError) as info:
        repo.get("feedfacefeedface")
    assert "feedfacefeedface" in str(info.value)
    assert old in str(info.value) and new in str(info.value)
    assert info.value.available == [new, old]


def test_the_default_model_is_the_one_the_setting_names_while_it_is_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = make_model(tmp_path / "m-seed0", seed=0, created_at=OLD)
    new = make_model(tmp_path / "m-seed1", seed=1, created_at=NEW)
    assert ModelRepository(tmp_path, providers=CPU, default_model=old).default_version == old
    repo = ModelRepository(tmp_path, providers=CPU, default_model="m-seed0")  # or by folder name
    assert repo.default_version == old and repo.get(None).version == old and repo.versions() == [new, old]
    # named but gone: the newest, said once; back again: the named one
    shutil.rmtree(tmp_path / "m-seed0")
    with caplog.at_level(logging.INFO, logger="embedder.repository"):
        repo.refresh()
        repo.refresh()
    assert repo.default_version == new
    assert caplog.text.count("default model 'm-seed0' is not loaded") == 1
    assert f"default model is now {new} (was {old})" in caplog.text
    assert make_model(tmp_path / "m-seed0", seed=0, created_at=OLD) == old
    repo.refresh()
    assert repo.default_version == old
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="embedder.repository"):
        assert ModelRepository(tmp_path, providers=CPU, default_model="feedface").default_version == new
    assert "default model 'feedface' is not loaded" in caplog.text


def test_onnxruntime_threads_spin_between_runs_only_when_asked(two_models: tuple[Path, str, str]) -> None:
    root, old, new = two_models
    quiet = ModelRepository(root, providers=CPU)  # the default: idle threads leave the cores to others
    spinning = ModelRepository(root, providers=CPU, spinning=True)
    for version in (old, new):
        options = quiet.get(version).session.get_session_options()
        assert options.get_session_config_entry(STOP_SPINNING) == "1"
        options = spinning.get(version).session.get_session_options()
        with pytest.raises(RuntimeError, match="does not have"):  # onnxruntime's default: go on spinning
            options.get_session_config_entry(STOP_SPINNING)


def test_a_single_model_folder_is_a_repository(two_models: tuple[Path, str, str]) -> None:
    root, old, _ = two_models
    repo = ModelRepository(root / "m-seed0", providers=CPU)
    assert repo.versions() == [old]


def test_corrupt_folder_is_refused_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = make_model(tmp_path / "good", seed=0, created_at=OLD)
    make_model(tmp_path / "bad", seed=1, created_at=NEWEST)
    corrupt(tmp_path / "bad")
    with caplog.at_level(logging.ERROR, logger="embedder.repository"):
        repo = ModelRepository(tmp_path, providers=CPU)
    assert repo.versions() == [good]  # the newer but corrupt one never becomes the default
    reason = repo.refused[tmp_path / "bad"]
    assert "does not match" in reason
    assert re.search(r"hash [0-9a-f]{16}.*sha256 [0-9a-f]{16}", reason)
    assert any(str(tmp_path / "bad") in r.getMessage() for r in caplog.records)


def test_only_corrupt_folders_means_no_start(tmp_path: Path) -> None:
    make_model(tmp_path / "bad", seed=1, created_at=NEW)
    corrupt(tmp_path / "bad")
    with pytest.raises(ModelRepositoryError, match=r"no usable model.*bad.*does not match"):
        ModelRepository(tmp_path, providers=CPU)
    with pytest.raises(ModelRepositoryError, match="no model folders"):
        ModelRepository(_empty(tmp_path), providers=CPU)


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_refresh_adds_new_folders_and_drops_removed_ones(tmp_path: Path) -> None:
    first = make_model(tmp_path / "a", seed=0, created_at=OLD)
    repo = ModelRepository(tmp_path, providers=CPU)
    assert repo.refresh().changed is False  # nothing new: nothing reloaded

    second = make_model(tmp_path / "b", seed=1, created_at=NEW)
    report = repo.refresh()
    assert report.added == [second] and report.removed == []
    assert repo.default_version == second
    assert repo.get(first).version == first  # the old model stays beside the new one

    make_model(tmp_path / "c", seed=2, created_at=NEWEST)
    corrupt(tmp_path / "c")
    report = repo.refresh()
    assert report.added == [] and tmp_path / "c" in report.refused
    assert repo.default_version == second
    assert repo.refresh().refused == {}  # unchanged refused folder: not retried, not logged again

    third = make_model(tmp_path / "c", seed=2, created_at=NEWEST)  # re-exported properly
    report = repo.refresh()
    assert report.added == [third]
    assert tmp_path / "c" not in repo.refused

    shutil.rmtree(tmp_path / "b")
    report = repo.refresh()
    assert report.removed == [second]
    assert repo.versions() == [third, first]
    with pytest.raises(UnknownModelError):
        repo.get(second)


def test_provider_selection_prefers_accelerators_that_are_installed() -> None:
    preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(preferred, available=["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert select_providers(preferred, available=["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert (
        select_providers(
            preferred,
            available=["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"],
        )
        == preferred
    )
    # CPU is always the last resort, even when not asked for
    assert select_providers(["CUDAExecutionProvider"], available=["CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]
    assert select_providers(["CUDAExecutionProvider"], available=["CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_unreadable_model_dir_keeps_the_loaded_models(tmp_path: Path) -> None:
    root = tmp_path / "models"
    version = make_model(root / "a", seed=0, created_at=OLD)
    repo = ModelRepository(root, providers=CPU)
    root.rename(tmp_path / "moved")  # e.g. a volume being remounted
    assert repo.refresh().changed is False
    assert repo.versions() == [version]
