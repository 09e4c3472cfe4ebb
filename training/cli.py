"""``recipelens-model``: build and export models.

    recipelens-model raw --out models [--backbone efficientnet_lite0|efficientnet_b0]
                         [--weights imagenet|PATH] [--parity-images DIR]

prints a summary and, as the last stdout line, the exported model folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from embedder.logs import configure_logging
from embedder.preprocess import ImageDecodeError
from indexer.catalog import IMAGE_SUFFIXES

SHORT_NAMES = {"efficientnet_lite0": "lite0", "efficientnet_b0": "b0"}
MAX_PARITY_IMAGES = 16

log = logging.getLogger("recipelens.model")


class UsageError(Exception):
    """A command-line argument names something that cannot be used."""


def parity_image_files(folder: Path, limit: int = MAX_PARITY_IMAGES) -> list[Path]:
    """Up to ``limit`` image files from ``folder`` (sorted by name, not recursive)."""
    if not folder.is_dir():
        raise UsageError(f"--parity-images {folder}: not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"--parity-images {folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files[:limit]


def _weights_arg(value: str) -> str | Path:
    if value == "imagenet":
        return value
    path = Path(value)
    if not path.is_file():
        raise UsageError(f"--weights {path}: no such file")
    return path


def cmd_raw(args: argparse.Namespace) -> Path:
    """Export the pretrained backbone with GAP + L2 normalisation, no training."""
    weights = _weights_arg(args.weights)
    parity_files = parity_image_files(args.parity_images) if args.parity_images else []

    from training.backbones import BackboneWeightsError
    from training.export import ExportError, export_model
    from training.models import build_raw_model
    from training.pth_reader import CheckpointError

    try:
        model = build_raw_model(args.backbone, weights)
    except (BackboneWeightsError, CheckpointError) as exc:
        raise UsageError(str(exc)) from None
    name = f"{SHORT_NAMES[args.backbone]}-raw"
    source = {
        "kind": "pretrained backbone, global average pooling, L2 normalisation (no training)",
        "backbone": args.backbone,
        "weights": str(weights),
    }
    try:
        return export_model(
            model, args.out, name=name, backbone=args.backbone, source=source, parity_images=parity_files
        )
    except ExportError as exc:
        raise UsageError(f"export failed: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recipelens-model", description="Build and export recipelens models."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    raw = sub.add_parser("raw", help="export the pretrained backbone as an embedding model (no training)")
    raw.add_argument("--out", type=Path, required=True, help="folder that receives <name>-<version>/")
    raw.add_argument("--backbone", choices=sorted(SHORT_NAMES), default="efficientnet_lite0")
    raw.add_argument("--weights", default="imagenet", help="'imagenet' (default) or a local weights file")
    raw.add_argument(
        "--parity-images",
        type=Path,
        help=f"folder of photos for the Keras/ONNX parity check (up to {MAX_PARITY_IMAGES}, plus built-ins)",
    )
    raw.set_defaults(handler=cmd_raw)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging("DEBUG" if args.verbose else "INFO")
    try:
        folder: Path = args.handler(args)
    except (UsageError, ImageDecodeError, OSError) as exc:
        print(f"recipelens-model: error: {exc}", file=sys.stderr)
        return 2
    from embedder.manifest import read_manifest

    manifest = read_manifest(folder)
    print(f"model    {manifest.name}")
    print(f"version  {manifest.version}")
    print(f"backbone {manifest.backbone}")
    print(f"dim      {manifest.embedding_dim}")
    print(
        f"parity   max |onnx - keras| = {manifest.parity['max_abs_diff']:.2g} "
        f"over {len(manifest.parity['images'])} photos (tolerance {manifest.parity['tolerance']:g})"
    )
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
