#!/usr/bin/env python3
"""Hard-link identical files under a folder, so an image layer stores each once.

    python dedupe-files.py /opt/venv

Wheels cannot hold symlinks, so a library shipped as ``libx.so``, ``libx.so.1`` and ``libx.so.1.2`` is
three full copies once installed (onnxruntime-openvino: libopenvino.so three times, 25 MB each). Run in
the same RUN as the install, before the layer is committed; only byte-identical regular files are linked.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

MIN_BYTES = 1 << 20  # small files are not worth a hash


def digest(path: Path) -> str:
    """SHA-256 of the file; the script runs before the project is installed, so the stdlib's helper."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def dedupe(root: Path) -> tuple[int, int]:
    """Link every duplicate to its first copy; return (files linked, bytes saved)."""
    by_size: dict[int, list[Path]] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink() and path.stat().st_size >= MIN_BYTES:
                by_size.setdefault(path.stat().st_size, []).append(path)
    linked = saved = 0
    for size, paths in by_size.items():
        if len(paths) < 2:
            continue
        first: dict[str, Path] = {}
        for path in sorted(paths):
            key = digest(path)
            if key not in first:
                first[key] = path
            elif not path.samefile(first[key]):
                temporary = path.with_name(path.name + ".dedupe")
                os.link(first[key], temporary)
                temporary.replace(path)
                linked += 1
                saved += size
    return linked, saved


def main() -> int:
    root = Path(sys.argv[1])
    linked, saved = dedupe(root)
    print(f"dedupe: {linked} duplicate files under {root} hard-linked, {saved / 1e6:.0f} MB saved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
