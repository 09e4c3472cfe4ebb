#!/usr/bin/env python3
"""Collect every wheel the images install into a folder, so ``docker build`` needs no package index.

    python deploy/wheelhouse.py [--variant cpu] [--variant gpu] [DIR]      # `make wheelhouse`

What is collected comes from pyproject.toml alone: the build backend (``[build-system] requires``, which
the builder stage needs to build the project's own wheel) and the project's dependencies with each
variant's extra, resolved by pip on this host for the image's platform (CPython 3.11, manylinux x86_64 —
the host must match, which is checked). The project's own wheel is left out: the image builds it from the
sources it copies, so a wheelhouse never holds stale code. deploy/Dockerfile installs from DIR
(default deploy/wheelhouse) with ``--no-index`` when it holds wheels, and from the index otherwise.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / "deploy" / "wheelhouse"
IMAGE_PYTHON = (3, 11)  # the python:3.11-slim base (or its bookworm stand-in) the images run on


def requirements(pyproject: dict[str, object], variants: list[str]) -> list[str]:
    """pip arguments naming what the images install: the build backend and ``.[variant]`` per variant."""
    build = pyproject["build-system"]
    project = pyproject["project"]
    assert isinstance(build, dict) and isinstance(project, dict)
    extras = project.get("optional-dependencies", {})
    unknown = [v for v in variants if v not in extras]
    if unknown:
        raise SystemExit(f"wheelhouse: pyproject.toml has no extra {unknown} (extras: {sorted(extras)})")
    return [*build["requires"], *(f"{ROOT}[{variant}]" for variant in variants)]


def check_host() -> None:
    """The wheels are resolved for this interpreter: it must be the images' CPython on x86_64 Linux."""
    problems = []
    if sys.version_info[:2] != IMAGE_PYTHON or platform.python_implementation() != "CPython":
        problems.append(f"CPython {IMAGE_PYTHON[0]}.{IMAGE_PYTHON[1]} (this is {sys.version.split()[0]})")
    if sysconfig.get_platform() != "linux-x86_64":
        problems.append(f"linux-x86_64 (this is {sysconfig.get_platform()})")
    if problems:
        raise SystemExit("wheelhouse: run this with " + " on ".join(problems) + ", like the images")


def collect(target: Path, variants: list[str]) -> list[Path]:
    """Resolve and build every wheel into a fresh folder, then replace ``target``'s wheels with it."""
    check_host()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    args = requirements(pyproject, variants)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".staging-") as staging:
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", staging, *args]
        print(f"wheelhouse: pip wheel {' '.join(args)}", flush=True)
        subprocess.run(command, check=True)
        name = str(pyproject["project"]["name"]).replace("-", "_")  # type: ignore[index]
        for own in Path(staging).glob(f"{name}-*.whl"):
            own.unlink()
        for old in target.glob("*.whl"):
            old.unlink()
        for wheel in Path(staging).glob("*.whl"):
            wheel.rename(target / wheel.name)
    return sorted(target.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR, help="default deploy/wheelhouse")
    parser.add_argument(
        "--variant", action="append", help="runtime extra to collect (repeatable; default cpu)"
    )
    args = parser.parse_args(argv)
    variants = args.variant or ["cpu"]
    start = time.monotonic()
    wheels = collect(args.dir.resolve(), variants)
    size = sum(w.stat().st_size for w in wheels) / 1e6
    print(
        f"wheelhouse: {len(wheels)} wheels, {size:.0f} MB for {'+'.join(variants)} in {args.dir} "
        f"({time.monotonic() - start:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
