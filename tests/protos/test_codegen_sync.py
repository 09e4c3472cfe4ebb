"""The committed generated gRPC code is exactly what the pinned codegen makes from the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from protos import GENERATED_ROOT

ROOT = Path(__file__).resolve().parents[2]


def _files(root: Path) -> dict[str, Path]:
    return {
        p.relative_to(root).as_posix(): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def test_generated_code_is_in_sync(tmp_path: Path) -> None:
    # protoc runs in a process of its own, exactly as `python -m protos.codegen` does: grpc_tools' in-process
    # compiler can crash a test process that already holds many threads and loaded descriptors.
    result = subprocess.run(
        [sys.executable, "-m", "protos.codegen", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    fresh, committed = _files(tmp_path), _files(GENERATED_ROOT)
    assert sorted(fresh) == sorted(committed), (
        f"generated files differ: missing {sorted(set(fresh) - set(committed))}, "
        f"extra {sorted(set(committed) - set(fresh))}; run `python -m protos.codegen`"
    )
    stale = [name for name, path in fresh.items() if path.read_bytes() != committed[name].read_bytes()]
    assert not stale, f"protos/generated/{stale[0]} is stale (all: {stale}); run `python -m protos.codegen`"
