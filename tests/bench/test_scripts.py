"""The benchmark scripts run end to end on the tiny model and print every row they promise (plumbing only).

Performance is never asserted here: the figures live in the README, measured with the real model.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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


def test_embed_bench_prints_the_paths_and_ratios(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from embedder.manifest import read_manifest, write_manifest

    twin = tmp_path / "tiny-int8"  # plumbing only: the tiny graph relabelled as an int8 twin
    shutil.copytree(tiny_model_dir, twin)
    fields = read_manifest(twin).model_dump(exclude={"version", "sha256", "format_version"})
    write_manifest(twin, **{**fields, "numerics": "int8"})
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


def test_search_bench_prints_latency_concurrency_and_the_cpu_ceiling() -> None:
    out = _run("bench/search.py", "--n", "8", "--repeats", "10", "--clients", "2", "--rounds", "1")
    assert re.search(rf"^\| gateway p50 overhead vs bare \| -?{NUMBER} % \| ≤ 25 % \|$", out, re.M)
    assert re.search(rf"^\| concurrent / sequential \| {NUMBER}× \| ≥ 1.8× \|$", out, re.M)
    cpu = re.search(
        rf"^\| machine CPU per search, sequential / concurrent \| ({NUMBER}) / ({NUMBER}) ms", out, re.M
    )
    assert cpu and float(cpu[1]) > 0 and float(cpu[2]) > 0
    assert re.search(rf"^\| ceiling at the concurrent CPU cost: .* \| {NUMBER}× \| \|$", out, re.M)
    assert re.search(rf"^\| cold start to SERVING \(median of 3\) \| {NUMBER} s \| ≤ 5 s \|$", out, re.M)
