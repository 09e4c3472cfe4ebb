"""``recipelens-search``: a table for a photo, errors that name the file, --wait-ready."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedder.server import start_server
from embedder.settings import EmbedderSettings
from gateway.cli import main
from tests.gateway.conftest import World


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_search_prints_a_table(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    photo = world.images / "r002.jpg"
    code, out, _ = _run(
        [str(photo), "--top-k", "3", "--model-dir", str(world.models), "--store-path", str(world.store_path)],
        capsys,
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["rank", "score", "confidence", "title", "category", "model"]
    assert lines[2].split()[0] == "1" and "Recipe 2" in lines[2] and world.version_a in lines[2]
    assert "3 recipe(s) from recipes-a" in lines[-1]


def test_errors_name_the_file(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    code, _, err = _run(
        [str(text), "--model-dir", str(world.models), "--store-path", str(world.store_path)], capsys
    )
    assert code == 1 and str(text) in err
    missing = tmp_path / "missing.jpg"
    code, _, err = _run([str(missing), "--store-path", str(world.store_path)], capsys)
    assert code == 1 and str(missing) in err and "cannot read" in err
    code, _, err = _run([], capsys)
    assert code == 2 and "PHOTO" in err


def test_wait_ready_with_the_embedder(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    with start_server(EmbedderSettings(model_dir=world.models, port=0, reload_interval_s=0)) as server:
        args = ["--embedder", server.address, "--store-path", str(world.store_path), "--timeout", "10"]
        code, out, _ = _run(["--wait-ready", *args], capsys)
        assert code == 0 and "ready" in out
        code, out, _ = _run([str(world.images / "r004.jpg"), "--wait-ready", *args], capsys)
        assert code == 0 and "Recipe 4" in out.splitlines()[2]
        code, _, err = _run(["--wait-ready", "--alias", "absent", *args[:-1], "1"], capsys)
        assert code == 1 and "absent" in err
