"""The benchmark scripts run end to end on the tiny model and print every row they promise (plumbing only).

Performance is never asserted here: the figures live in the README, measured with the real model.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import machine_cpu_seconds

ROOT = Path(__file__).resolve().parents[2]
NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def _run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_machine_cpu_seconds_counts_work() -> None:
    before = machine_cpu_seconds()
    end = before + 0.05
    while machine_cpu_seconds() < end:  # busy until the kernel has counted 50 ms more of work
        sum(range(10_000))
    assert machine_cpu_seconds() >= end


def _int8_label(model: Path, tmp_path: Path) -> Path:
    """Plumbing only: the tiny graph copied and labelled as an int8 twin."""
    import shutil

    from embedder.manifest import read_manifest, write_manifest

    twin = tmp_path / "tiny-int8"
    shutil.copytree(model, twin)
    fields = read_manifest(twin).model_dump(exclude={"version", "sha256", "format_version"})
    write_manifest(twin, **{**fields, "numerics": "int8", "name": "tiny-int8"})
    return twin


def test_embed_bench_prints_the_paths_and_ratios(tiny_model_dir: Path, tmp_path: Path) -> None:
    twin = _int8_label(tiny_model_dir, tmp_path)
    out = _run(
        "bench/embed.py", "--model", str(tiny_model_dir), "--int8", str(twin), "--skip-keras", "--batch", "4",
        "--latency-repeats", "3", "--throughput-repeats", "2",
    )  # fmt: skip
    row = rf"\| {NUMBER} \| {NUMBER} \| {NUMBER} \| {NUMBER} \|$"
    for path in (
        "onnxruntime CPU, fp32, decoded tensors",
        "onnxruntime CPU, int8, decoded tensors",
        "decoding alone (preprocess)",
        "bare runtime, int8 (decode + run)",
        "embedder service, fp32 (gRPC)",
        "embedder service, int8 (gRPC)",
    ):
        assert re.search(rf"^\| {re.escape(path)} {row}", out, re.M), path
    assert re.search(
        rf"^\| int8 on onnxruntime CPU / fp32 on onnxruntime CPU, decoded \| {NUMBER}× \|", out, re.M
    )
    assert re.search(
        rf"^\| embedder service int8 / fp32 \(decode included\) \| {NUMBER}× \| {NUMBER}× ", out, re.M
    )
    assert re.search(
        rf"^\| decoding's share of a photo's work in the int8 service \| {NUMBER} % \|", out, re.M
    )
    assert re.search(rf"^\| service / bare runtime, fp32 \| {NUMBER}× \| 1× \| ≥ 0.95× \|$", out, re.M)


def test_search_bench_prints_latency_breakdown_concurrency_and_ceilings(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    twin = _int8_label(tiny_model_dir, tmp_path)
    out = _run(
        "bench/search.py", "--model", str(tiny_model_dir), "--int8", str(twin),
        "--n", "8", "--repeats", "10", "--clients", "2", "--rounds", "1", "--grouping-points", "300",
    )  # fmt: skip
    ms = rf"-?{NUMBER} ms"
    assert re.search(
        rf"^\| distinct recipes \+ verdict vs plain search, p50 at 300 points \| {ms} \|", out, re.M
    )
    # fp32 and int8 columns; on the openvino build fp32 twice, one per CPU runtime
    assert re.search(rf"^\| gateway p50 overhead vs bare( \| {ms}){{2,3}} \| 0 ms \| ≤ 3 ms \|$", out, re.M)
    for part in ("empty gRPC round trip", "alias lookup", "ANN \\+ payload", "rest: thread hops"):
        assert re.search(rf"^\| … {part}.* \| {ms} \| {ms} \|", out, re.M), part
    assert re.search(
        rf"^\| concurrent / sequential, int8 \(of the CPU ceiling\) (\| +)+\| {NUMBER}× \({NUMBER}\) \|",
        out,
        re.M,
    )
    cpu = re.search(
        rf"^\| machine CPU per search, sequential / concurrent \| ({NUMBER}) / ({NUMBER}) ms", out, re.M
    )
    assert cpu and float(cpu[1]) > 0 and float(cpu[2]) > 0
    assert re.search(
        rf"^\| int8 / (the faster )?fp32 searches/s, 2 clients \(fp32 on \w+\) (\| +)+\| {NUMBER}× \| "
        rf"{NUMBER}× .* \| ≥ 1.6× \|$",
        out,
        re.M,
    )
    assert re.search(rf"^\| cold start to SERVING \(median of 3\) \| {NUMBER} s \|", out, re.M)


def test_grouping_bench_prints_the_extra_cost_beside_its_goal() -> None:
    out = _run("bench/grouping.py", "--points", "400", "--repeats", "20")
    row = re.search(
        rf"^\| distinct recipes \+ verdict vs plain search, p50 at 400 points \| (-?{NUMBER}) ms "
        rf"\| ({NUMBER}) − ({NUMBER}) ms \(verdict alone {NUMBER} µs\) \| ≤ 1 ms \|$",
        out,
        re.M,
    )
    assert row, out
    assert float(row[1]) == pytest.approx(float(row[2]) - float(row[3]), abs=0.011)
    assert float(row[3]) > 0


def test_index_bench_prints_the_indexing_ratio_and_the_ann_rows() -> None:
    out = _run(
        "bench/index.py", "--n-photos", "16", "--repeats", "1", "--batch", "8",
        "--n", "2000", "--queries", "10", "--clusters", "20",
    )  # fmt: skip
    assert re.search(rf"^\| \*\*indexing / bare\*\* .* \| \*\*{NUMBER}×\*\* \(target ≥ 0.85×", out, re.M)
    for method in ("numpy brute force", "Qdrant Edge HNSW float32", "Qdrant Edge HNSW \\+ int8 SQ"):
        assert re.search(rf"^\| {method}.* \| {NUMBER} \| {NUMBER} \| {NUMBER} \| {NUMBER}× \|", out, re.M), (
            method
        )
    assert re.search(r"^\* Qdrant Edge HNSW float32: recall@10", out, re.M)


def test_int8_retrieval_bench_prints_both_models_and_the_differences(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from tests.training.triplet_catalog import write_catalog

    catalog = write_catalog(tmp_path / "catalog", recipes=24, broken=False)
    twin = _int8_label(tiny_model_dir, tmp_path)
    out = _run(
        "bench/int8_retrieval.py", "--catalog", str(catalog), "--fp32", str(tiny_model_dir),
        "--int8", str(twin), "--provider", "CPUExecutionProvider",
    )  # fmt: skip
    for level in ("moderate", "strong"):
        for numerics in ("fp32", "int8"):
            assert re.search(rf"^\| {level} \(\d+\) \| {numerics} \| {NUMBER} \| {NUMBER} \|", out, re.M)
        assert re.search(rf"^\| R@1, {level} queries \| [+-]{NUMBER} \| \[.*\] \| ≥ −0.5 \|$", out, re.M)
    assert re.search(rf"^\| cat P@5 \(clean held-out photos\) \| [+-]{NUMBER} \| \| ≥ −1.0 \|$", out, re.M)
