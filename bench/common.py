"""Helpers the benchmark scripts share: their model arguments, the photos they measure on, percentiles, a
free port, CPU time."""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})


def model_parser(doc: str | None, *, model_help: str, required: bool = False) -> argparse.ArgumentParser:
    """A parser with what every model bench takes: ``--model``, its ``--int8`` twin, ``--photos``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=required, default=None, help=model_help)
    parser.add_argument(
        "--int8", type=Path, default=None, help="its int8 twin (recipelens-model int8), measured beside it"
    )
    parser.add_argument("--photos", type=Path, default=None, help="folder of photos (default: generated)")
    return parser


def load_photos(folder: Path | None, n: int) -> list[bytes]:
    """``n`` photos from ``folder`` (cycled), or ``n`` generated 640×480 JPEGs when no folder is given."""
    if folder is not None:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        if not files:
            sys.exit(f"{folder}: no photos found")
        return [files[i % len(files)].read_bytes() for i in range(n)]
    from tests.support.imagegen import encode, synthetic_photo

    return [encode(synthetic_photo(i, (640, 480))) for i in range(n)]


def percentiles(times_ms: list[float]) -> tuple[float, float]:
    """Median and 99th percentile."""
    ordered = sorted(times_ms)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine_cpu_seconds() -> float:
    """CPU seconds all cores of this machine have spent busy since boot, every process counted (Linux).

    From ``/proc/stat``: user + nice + system + irq + softirq; idle, I/O wait and time stolen by the
    hypervisor are not work. NaN where ``/proc/stat`` is not there.
    """
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    except (OSError, ValueError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def stop_process(proc: subprocess.Popen[bytes], what: str, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``: a bench never leaves a server behind (or hangs on one)."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        print(f"warning: {what} did not stop within {timeout_s:.0f} s of SIGTERM; killed", file=sys.stderr)
        proc.kill()
        proc.wait(timeout=timeout_s)
