"""Issue 13 item 8: the CLIs on a store that is not there say so and create nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.reliability.stack import World
from tests.support.imagegen import encode, synthetic_photo

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def test_search_and_index_commands_on_a_missing_store_create_nothing(world: World, tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encode(synthetic_photo(3)))
    missing = tmp_path / "does" / "not" / "exist"
    model = str(world.model_dir)
    search = _run("gateway.cli", str(photo), "--model-dir", model, "--store-path", str(missing))
    assert search.returncode == 1 and f"the store {missing} does not exist" in search.stderr, search.stderr
    for command in (["list"], ["swap", "x"], ["upsert", "--model", model, "--recipe", "{}"]):
        done = _run("indexer.cli", *command, "--store-path", str(missing))
        assert done.returncode == 1 and f"the store {missing} does not exist" in done.stderr, done.stderr
    assert not (tmp_path / "does").exists()
