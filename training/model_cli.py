"""``recipelens-model``: build and export models.

    recipelens-model raw --out models [--backbone efficientnet_lite0|lite1|lite2|efficientnet_b0]
                         [--weights imagenet|PATH] [--parity-images DIR] [--int8-catalog PATH]
    recipelens-model int8 MODEL_FOLDER --catalog PATH [--out DIR]

``--int8-catalog`` / ``int8`` also make the calibrated int8 twin (:mod:`training.quantize`; settings
``RECIPELENS_INT8_*``), refused when it agrees with fp32 less than those settings require.

prints a summary and, as the last stdout line, the exported model folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from embedder.logs import configure_logging
from embedder.preprocess import ImageDecodeError
from indexer.catalog import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from embedder.manifest import ModelManifest

SHORT_NAMES = {
    "efficientnet_lite0": "lite0",
    "efficientnet_lite1": "lite1",
    "efficientnet_lite2": "lite2",
    "efficientnet_b0": "b0",
}
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
        folder = export_model(
            model, args.out, name=name, backbone=args.backbone, source=source, parity_images=parity_files
        )
    except ExportError as exc:
        raise UsageError(f"export failed: {exc}") from None
    if args.int8_catalog is None:
        return folder
    _print_summary(folder)
    return _int8(folder, args.int8_catalog, args.out)


def _int8(folder: Path, catalog: Path, out: Path | None, serve_choice: bool = False) -> Path:
    from indexer.catalog import CatalogError
    from training.quantize import Int8Settings, QuantizationError, quantize_model, serving_choice

    settings = Int8Settings()
    try:
        twin = quantize_model(folder, catalog=catalog, out_dir=out, settings=settings)
    except (QuantizationError, CatalogError) as exc:
        raise UsageError(f"int8: {exc}") from None
    if not serve_choice:
        return twin
    chosen, why = serving_choice(folder, twin, settings)
    if chosen != twin:
        _print_summary(twin)  # main prints the chosen folder's
    print(f"serve    {chosen.name}: {why}")
    return chosen


def cmd_int8(args: argparse.Namespace) -> Path:
    """Make the calibrated int8 twin of an exported fp32 model folder."""
    return _int8(args.model, args.catalog, args.out, args.serve_choice)


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
    raw.add_argument(
        "--int8-catalog", type=Path, help="also make the calibrated int8 twin from this catalogue's photos"
    )
    raw.set_defaults(handler=cmd_raw)
    int8 = sub.add_parser("int8", help="make the calibrated int8 twin of an exported model folder")
    int8.add_argument("model", type=Path, help="the fp32 model folder")
    int8.add_argument("--catalog", type=Path, required=True, help="catalogue whose photos calibrate it")
    int8.add_argument("--out", type=Path, help="folder that receives the twin (default: beside the model)")
    int8.add_argument(
        "--serve-choice",
        action="store_true",
        help="end with the folder to serve here: the twin where it ran RECIPELENS_INT8_MIN_SPEEDUP × "
        "fp32 or faster, else the fp32 model",
    )
    int8.set_defaults(handler=cmd_int8)
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
    _print_summary(folder)
    print(folder)
    return 0


def _print_summary(folder: Path) -> None:
    from embedder.manifest import MANIFEST_FILE, read_manifest

    manifest = read_manifest(folder)
    print(f"model    {manifest.name}")
    print(f"version  {manifest.version}")
    print(f"backbone {manifest.backbone}")
    print(f"dim      {manifest.embedding_dim}")
    print(f"numerics {manifest.numerics}")
    if manifest.parity:
        print(
            f"parity   max |onnx - keras| = {manifest.parity['max_abs_diff']:.2g} "
            f"over {len(manifest.parity['images'])} photos (tolerance {manifest.parity['tolerance']:g})"
        )
    if manifest.quantization:
        try:
            _print_int8_summary(manifest)
        except (KeyError, TypeError, ValueError) as exc:  # a hand-edited record: say so, don't crash
            print(
                f"int8     {folder / MANIFEST_FILE}: its quantization record is not as the export "
                f"writes it ({exc!r})"
            )


def _print_int8_summary(manifest: ModelManifest) -> None:
    q, a = manifest.quantization, manifest.quantization["agreement"]
    print(
        f"int8     {q['method']} on {q['calibration']['photos']} photos; agreement to fp32 "
        f"{manifest.source.get('fp32_version')}: cosine min {a['cosine_min']:.3f} / mean "
        f"{a['cosine_mean']:.3f}, top-10 overlap {a['top10_overlap_mean']:.3f}"
    )
    for runtime, other in manifest.quantization_record("agreement_by_runtime").items():
        print(
            f"         on {runtime}: cosine min {other['cosine_min']:.3f} / mean "
            f"{other['cosine_mean']:.3f}, top-10 overlap {other['top10_overlap_mean']:.3f}"
        )
    on, speedup = manifest.quantization_record("measured_on"), manifest.int8_speedup()
    if on:
        speed = f"{speedup:.2f}× fp32's images/s" if speedup is not None else "speed-up not recorded"
        record = manifest.quantization_record("speedup")
        runtime, fp32_runtime = record.get("runtime", "?"), record.get("fp32_runtime")
        against = f" (fp32 on {fp32_runtime})" if fp32_runtime and fp32_runtime != runtime else ""
        print(
            f"         measured on {on.get('cpu', '?')} ({on.get('int8_instructions', '?')}, "
            f"{on.get('int8_products', '?')} int8 products): {speed} on {runtime}{against}"
        )
        if "bf16_float_parts_speedup" in on:
            print(
                f"         float parts on OpenVINO in {on.get('int8_float_parts', '?')} "
                f"(bf16 ran {on['bf16_float_parts_speedup']}× their fp32 images/s)"
            )


if __name__ == "__main__":
    sys.exit(main())
