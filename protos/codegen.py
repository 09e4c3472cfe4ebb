"""Regenerate ``protos/generated`` from the ``.proto`` files with grpcio-tools.

Usage: ``python -m protos.codegen [OUT_DIR]`` (default: ``protos/generated``). The test suite runs this
into a temporary folder and fails when the committed code differs.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

from protos import GENERATED_ROOT, PROTO_FILES, PROTO_ROOT

PINNED_GRPCIO_TOOLS = "1.85.1"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc for every proto file into ``out_dir``; return the files written."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency, imported only when generating

    version = getattr(grpc_tools, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("grpcio-tools")
    if version != PINNED_GRPCIO_TOOLS:
        raise SystemExit(f"grpcio-tools {PINNED_GRPCIO_TOOLS} is pinned for codegen, found {version}")
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = str(files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package_dirs = {out_dir / Path(p).parent for p in PROTO_FILES}
    for pkg in sorted(package_dirs | {d.parent for d in package_dirs}):
        init = pkg / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated gRPC code; regenerate with `python -m protos.codegen`."""\n')
    return sorted(p for p in out_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else GENERATED_ROOT
    for path in generate(out):
        print(path)


if __name__ == "__main__":
    main()
