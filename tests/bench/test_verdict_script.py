"""bench/verdict.py runs end to end on the tiny model and prints its table and summary (plumbing only)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import onnx

from embedder.manifest import MODEL_FILE, read_manifest, write_manifest
from tests.indexer.conftest import write_kaggle_catalog

ROOT = Path(__file__).resolve().parents[2]
NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def _verdict_bench(catalog: Path, *models: Path) -> str:
    """bench/verdict.py's output on a 24-recipe generated catalogue (asserting it exits 0)."""
    write_kaggle_catalog(catalog, 24)
    args = [
        "--catalog",
        str(catalog),
        "--quality-sample",
        "12",
        *(a for m in models for a in ("--model", str(m))),
    ]
    result = subprocess.run(
        [sys.executable, "bench/verdict.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_verdict_bench_prints_rates_per_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = _verdict_bench(tmp_path / "catalog", tiny_model_dir)
    row = rf"^\| {re.escape(tiny_model_dir.name)} \| {NUMBER} \| {NUMBER} \| {NUMBER} \(24\) \| {NUMBER} \|"
    assert re.search(row, out, re.M), out
    assert re.search(rf"none below -?{NUMBER}, strong from -?{NUMBER}", out)
    assert re.search(r"^summary: 1 model\(s\); acceptance .*: (met|NOT met)$", out, re.M)


def test_verdict_bench_compares_an_int8_twin_with_its_fp32(tiny_model_dir: Path, tmp_path: Path) -> None:
    twin = tmp_path / "tiny-int8"
    twin.mkdir()
    graph = onnx.load(str(tiny_model_dir / MODEL_FILE))
    graph.doc_string = "labelled int8 twin (same numbers, other bytes: a version of its own)"
    onnx.save(graph, str(twin / MODEL_FILE))
    fp32 = read_manifest(tiny_model_dir)
    fields = fp32.model_dump(exclude={"version", "sha256", "format_version"})
    source = {**fp32.source, "fp32_version": fp32.version}
    write_manifest(twin, **{**fields, "numerics": "int8", "name": "tiny-int8", "source": source})
    out = _verdict_bench(tmp_path / "catalog", tiny_model_dir, twin)
    line = (
        rf"^tiny-int8 − {re.escape(tiny_model_dir.name)}: food not none [+-]{NUMBER} points, "
        rf"non-food none [+-]{NUMBER} points \(goal within 2: (met|NOT met)\)$"
    )
    assert len(re.findall(line, out, re.M)) == 1, out  # the fp32 model gets no line
