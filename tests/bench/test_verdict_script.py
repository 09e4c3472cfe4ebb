"""bench/verdict.py runs end to end on the tiny model and prints its table and summary (plumbing only)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.indexer.conftest import write_kaggle_catalog

ROOT = Path(__file__).resolve().parents[2]
NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def test_verdict_bench_prints_rates_per_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    write_kaggle_catalog(tmp_path / "catalog", 24)
    args = ["--catalog", str(tmp_path / "catalog"), "--model", str(tiny_model_dir), "--quality-sample", "12"]
    result = subprocess.run(
        [sys.executable, "bench/verdict.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    row = rf"^\| {re.escape(tiny_model_dir.name)} \| {NUMBER} \| {NUMBER} \| {NUMBER} \(24\) \| {NUMBER} \|"
    assert re.search(row, out, re.M), out
    assert re.search(rf"none below -?{NUMBER}, strong from -?{NUMBER}", out)
    assert re.search(r"^summary: 1 model\(s\); acceptance .*: (met|NOT met)$", out, re.M)
