"""``recipelens-train``: train a preset on a catalogue, evaluate it against the raw backbone, export it.

    recipelens-train --preset raw|tl|tl-hard|ft --catalog PATH --out models
                     [--epochs N] [--max-recipes N] [--set key=value ...] [--show-config]

The run folder (``<out>/runs/<preset>-<time>/``) keeps the full config, the split, the training log
and curves, the embedding map and the evaluation report; the exported model folder (the last stdout
line) carries the config and the evaluation figures in its manifest.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from embedder.logs import configure_logging
from training.presets import PRESETS, TrainConfig, preset_config

log = logging.getLogger("recipelens.train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recipelens-train",
        description="Train a recipelens embedding model (seed presets), evaluate it and export it.",
    )
    parser.add_argument(
        "--preset", choices=list(PRESETS), default="tl-hard", help="training recipe (default tl-hard)"
    )
    parser.add_argument(
        "--catalog", type=Path, help="catalogue: Kaggle CSV (or its folder), recipe folders, JSONL"
    )
    parser.add_argument("--out", type=Path, default=Path("models"), help="models folder (default ./models)")
    parser.add_argument("--epochs", type=int, help="epochs for every phase that trains")
    parser.add_argument("--max-recipes", type=int, help="train and evaluate on a stable sample of N recipes")
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set margin=0.5 --set phase1.batch_recipes=64 (see --show-config)",
    )
    parser.add_argument(
        "--show-config", action="store_true", help="print the resolved configuration and exit"
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also make the calibrated int8 twin from the catalogue (settings RECIPELENS_INT8_*)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return parser


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """The preset with ``--epochs``, ``--max-recipes`` and ``--set`` applied (ValueError on a bad value)."""
    config = preset_config(args.preset)
    if args.epochs is not None:
        if args.epochs < 1:
            raise ValueError(f"--epochs {args.epochs}: must be at least 1")
        config = config.with_epochs(args.epochs)
    if args.max_recipes is not None:
        config = config.overridden([f"max_recipes={args.max_recipes}"])
    return config.overridden(args.assignments)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging("DEBUG" if args.verbose else "INFO")
    try:
        config = resolve_config(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.show_config:
        print(config.model_dump_json(indent=2))
        return 0
    if args.catalog is None:
        parser.error("--catalog PATH is required (a Kaggle CSV, its folder, recipe folders or a JSONL file)")

    from indexer.catalog import CatalogError
    from training.backbones import BackboneWeightsError
    from training.export import ExportError
    from training.run_report import verdict_line
    from training.split import EmptySplitError
    from training.train import run

    try:
        result = run(config, args.catalog, args.out, progress=not args.no_progress)
    except (CatalogError, EmptySplitError, FileNotFoundError) as exc:
        print(f"recipelens-train: error: {exc}", file=sys.stderr)
        return 2
    except (BackboneWeightsError, ExportError) as exc:
        print(f"recipelens-train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("recipelens-train: interrupted", file=sys.stderr)
        return 130
    report = result.run_dir / "evaluation.md"
    print(report.read_text())
    print(f"run folder: {result.run_dir}")
    print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    print(f"match verdict: {verdict_line(result.verdict)} (goals ≥ 95 % · ≥ 90 %)")
    print(result.model_dir)
    return _int8_twin(result.model_dir, args.catalog, args.out) if args.int8 else 0


def _int8_twin(model_dir: Path, catalog: Path, out: Path) -> int:
    """Make the int8 twin; its folder is then the last stdout line (the fp32 one the line before)."""
    from training.quantize import QuantizationError, quantize_model

    try:
        print(quantize_model(model_dir, catalog=catalog, out_dir=out))
    except QuantizationError as exc:
        print(f"recipelens-train: int8: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
