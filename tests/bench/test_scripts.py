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


def test_embed_bench_prints_the_paths_and_ratios(tiny_model_dir: Path) -> None:
    out = _run(
        "bench/embed.py", "--model", str(tiny_model_dir), "--skip-keras", "--batch", "4",
        "--latency-repeats", "3", "--throughput-repeats", "2",
    )  # fmt: skip
    for path in ("bare onnxruntime", "onnxruntime, decoded tensors", "embedder service (gRPC)"):
        assert re.search(
            rf"^\| {re.escape(path)} \| {NUMBER} \| {NUMBER} \| {NUMBER} \| {NUMBER} \|$", out, re.M
        )
    assert re.search(rf"^\| service / bare onnxruntime \| {NUMBER}× \| ≥ 0.9× \|$", out, re.M)


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
