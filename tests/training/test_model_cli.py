"""``recipelens-model raw``: exports the real raw model, names bad paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedder.manifest import read_manifest
from tests.support.imagegen import encode, synthetic_photo
from tests.training.rawmodel import RawExport
from training.model_cli import main


@pytest.mark.slow
def test_raw_export_prints_the_folder_last(
    raw_export: RawExport, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(3):
        (photos / f"{seed}.jpg").write_bytes(encode(synthetic_photo(seed), "JPEG"))
    (photos / "notes.txt").write_text("not a photo, skipped by suffix")
    out = tmp_path / "models"
    assert main(["raw", "--out", str(out), "--parity-images", str(photos)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    folder = Path(lines[-1])
    manifest = read_manifest(folder)
    assert folder.parent == out
    # Deterministic export: the CLI build has the version of the session fixture's build.
    assert manifest.version == read_manifest(raw_export.folder).version
    assert any(line.startswith("version") and manifest.version in line for line in lines)
    assert any("1280" in line for line in lines if line.startswith("dim"))
    assert len(manifest.parity["images"]) == 4 + 3
    assert str(photos / "0.jpg") in manifest.parity["images"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weights", "{tmp}/missing.pth"], "--weights {tmp}/missing.pth: no such file"),
        (["--parity-images", "{tmp}/nowhere"], "--parity-images {tmp}/nowhere: not a directory"),
        (["--parity-images", "{tmp}"], "--parity-images {tmp}: no image files"),
    ],
)
def test_bad_paths_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    argv = ["raw", "--out", str(tmp_path / "models"), *(a.format(tmp=tmp_path) for a in args)]
    assert main(argv) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_unreadable_weights_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"garbage")
    assert main(["raw", "--out", str(tmp_path / "models"), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err
    assert "not a readable PyTorch checkpoint" in err or "truncated" in err
