"""Phase 1 of ``tl-hard`` on the demo catalogue: wall time per stage and the per-epoch rate.

Phase 1 = decoding the catalogue, the frozen backbone's features of every clean photo and of the
augmented views (computed once, the cache), then the head's epochs on cached triplets. Target: under
15 minutes on a 2-core CPU. The run goes on to evaluate against the raw backbone and export, as
``recipelens-train --preset tl-hard`` does; those stages are timed too but are not phase 1.

    python bench/train.py --catalog data/demo [--out /tmp/recipelens-bench] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from embedder.logs import configure_logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TARGET_S = 15 * 60
PHASE1_STAGES = ("decode_s", "raw_features_s", "phase1_cache_s", "phase1_fit_s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=Path("data/demo"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/recipelens-bench"))
    parser.add_argument("--preset", default="tl-hard")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args()
    if not args.catalog.exists():
        sys.exit(f"{args.catalog}: no catalogue (make one with: recipelens-demo-catalog --out data/demo)")
    configure_logging("INFO")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    from training.presets import preset_config
    from training.train import run

    config = preset_config(args.preset).overridden(args.assignments)
    result = run(config, args.catalog, args.out, progress=args.progress)
    t = result.timings
    phase1 = sum(t.get(k, 0.0) for k in PHASE1_STAGES)
    epochs = len(result.history.get("phase1", []))
    print()
    print(f"{'stage':<34}{'seconds':>10}")
    labels = {
        "decode_s": "decode + preprocess photos",
        "raw_features_s": "backbone: clean photos + queries",
        "phase1_cache_s": f"backbone: {config.cache_views - 1} augmented views/photo",
        "phase1_fit_s": f"head: {epochs} epochs on cached features",
        "evaluate_s": "evaluation (raw vs trained)",
        "export_s": "ONNX export + parity",
        "total_s": "whole run",
    }
    for key, label in labels.items():
        if key in t:
            print(f"{label:<34}{t[key]:>10.1f}")
    verdict = "met" if phase1 < TARGET_S else "NOT met"
    print(f"{'phase 1 total':<34}{phase1:>10.1f}   target < {TARGET_S} s: {verdict}")
    if epochs:
        per_epoch = t["phase1_fit_s"] / epochs
        print(
            f"{'phase 1 seconds per epoch':<34}{per_epoch:>10.2f}   ({epochs} epochs, early stopping may cut)"
        )
    print()
    print((result.run_dir / "evaluation.md").read_text())
    print(f"model folder: {result.model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
