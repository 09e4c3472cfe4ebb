"""Training on 2 CPU cores: phase 1, the phase-2 cache and phase 2 timed separately, extrapolated.

1. **Side by side, one process:** phase-2 steps on the activation cache against the same steps
   rendering the views and running the frozen layers (what phase 2 did before the cache), on a subset
   of the catalogue's recipes, same batches, same views; the ratio is the per-epoch speed-up
   (an epoch is the same number of steps either way), and on the cache with the gallery-only slots
   forward only (``phase2_gallery_gradient=false``), and with the depthwise kernels frozen
   (``phase2_depthwise=false``). Target: ≥ 5×.
2. **One whole run** of the preset (``recipelens-train``): seconds per stage — decode, the frozen parts'
   conversion for onnxruntime, raw features of the clean photos, the phase-2 activation cache, phase 1
   (its pooled cache comes from the same pass), phase 2, the evaluation's queries, evaluation, export —
   and the training part (decode … phase 2, not the evaluation) extrapolated linearly in the number of
   photos to a catalogue of ``--target-recipes`` (13.5k: the Kaggle catalogue), the conversion once.
   Target for ``ft``: < 1 h.

    python bench/train.py --catalog data/demo [--preset ft] [--set key=value ...] [--skip-run]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from embedder.logs import configure_logging

if TYPE_CHECKING:
    from training.presets import TrainConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SPEEDUP_TARGET = 5.0
HOUR_S = 3600.0
TRAINING_STAGES = (
    "decode_s",
    "raw_features_s",
    "phase2_cache_s",
    "phase1_cache_s",
    "phase1_fit_s",
    "phase2_fit_s",
)
FIXED_STAGES = ("frozen_convert_s",)  # once per run, whatever the catalogue's size
LABELS = {
    "decode_s": "decode + preprocess photos",
    "frozen_convert_s": "frozen parts → onnxruntime (fixed cost)",
    "raw_features_s": "backbone: clean photos",
    "query_features_s": "backbone: evaluation queries + non-food",
    "phase2_cache_s": "phase-2 cache: lower layers × views",
    "phase1_cache_s": "phase-1 cache (pooled features)",
    "phase1_fit_s": "phase 1: head epochs",
    "phase2_fit_s": "phase 2: top blocks + head epochs",
    "evaluate_s": "evaluation (raw vs trained)",
    "export_s": "ONNX export + parity",
    "total_s": "whole run",
}


def side_by_side(
    config: TrainConfig, catalog: Path, out: Path, *, recipes: int, steps: int, rounds: int = 3
) -> dict[str, float]:
    """Median seconds per phase-2 step, several ways, on the same batches, views and weights.

    ``before``: phase 2 as it ran before the cache — 3P views rendered and the whole backbone at every
    step (the embedding model in a triplet model); ``rendered``: distinct slots only, still rendered
    and through the frozen layers; ``cached``: distinct slots looked up in the activation cache;
    ``cached_queries``: the same with ``phase2_gallery_gradient=false`` (gallery-only slots forward only);
    ``cached_frozen_depthwise``: the cache with ``phase2_depthwise=false`` (depthwise kernels frozen).
    All but the last train the depthwise kernels, as phase 2 did before.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from training.activation_cache import (
        activation_triplets,
        build_activation_cache,
        build_slot_triplet_model,
        rendered_activation_triplets,
        split_at_unfreeze_boundary,
    )
    from training.data import TripletSampler, index_dataset, render_views
    from training.dataset import prepare_data
    from training.fitting import (
        BACKBONE_LAYER,
        build_networks,
        build_triplet_model,
        compile_triplet_model,
        unfreeze_top,
    )

    small = config.overridden([f"max_recipes={recipes}"])
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(small, catalog, out, progress=False)
    nets = build_networks(small)
    split = split_at_unfreeze_boundary(nets.model, small.unfreeze_layers)
    cache = build_activation_cache(
        split,
        small,
        data.photos,
        data.photos_of("train"),
        views=small.phase2_views,
        run_dir=out,
        progress=False,
    )
    images = tf.constant(data.photos.images)

    def sampler() -> TripletSampler:
        return TripletSampler(
            data.photos,
            data.recipes["train"],
            views=small.phase2_views,
            batch_recipes=small.phase2.batch_recipes,
            query_gallery=small.query_gallery,
            seed=small.seed,
        )

    def before(sampler: TripletSampler) -> tf.data.Dataset:
        def render(p: tf.Tensor, v: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return tf.cast(render_views(images, p, v, small.seed, small.augment), tf.float32), labels

        ds = index_dataset(sampler, training=True, seed=small.seed)
        return ds.map(render, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)

    def cached(s: TripletSampler) -> tf.data.Dataset:
        return activation_triplets(s, cache, training=True)

    backbone = nets.model.get_layer(BACKBONE_LAYER)
    unfreeze_top(backbone, small.unfreeze_layers)
    slot_model = build_slot_triplet_model(split.upper)
    paths = {
        "before": (build_triplet_model(nets.model, name="image_triplet"), before),
        "rendered": (slot_model, lambda s: rendered_activation_triplets(s, split, small, training=True)),
        "cached": (slot_model, cached),
        "cached_queries": (
            build_slot_triplet_model(split.upper, name="query_triplet", gallery_gradient=False),
            lambda s: activation_triplets(s, cache, training=True, gallery_gradient=False),
        ),
    }
    # A step's trainable variables are fixed when it is traced: trace these while the depthwise kernels
    # train, then freeze them for the last model.
    for model, batches in paths.values():
        compile_triplet_model(model, small, small.phase2)
        model.train_on_batch(*next(iter(batches(sampler()))))
    unfreeze_top(backbone, small.unfreeze_layers, depthwise=False)
    frozen = build_slot_triplet_model(split.upper, name="frozen_depthwise_triplet")
    compile_triplet_model(frozen, small, small.phase2)
    frozen.train_on_batch(*next(iter(cached(sampler()))))
    paths["cached_frozen_depthwise"] = (frozen, cached)

    per_step: dict[str, list[float]] = {}
    for _ in range(rounds):  # interleaved rounds: the machine's load drifts
        for name, (model, batches) in paths.items():
            it = iter(batches(sampler()))
            model.train_on_batch(*next(it))  # warm (each step was traced above)
            t = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(*next(it))
            per_step.setdefault(name, []).append((time.perf_counter() - t) / steps)
    keras.backend.clear_session()
    return {name: float(np.median(times)) for name, times in per_step.items()}


def embedding_rates(folders: list[Path], *, batch: int = 32, rounds: int = 5) -> dict[str, float]:
    """onnxruntime images/s at ``batch`` on decoded tensors per model folder, interleaved rounds, median."""
    import numpy as np

    from embedder.runtime import EmbeddingModel

    models = [EmbeddingModel(folder) for folder in folders]
    rng = np.random.default_rng(0)
    rates: dict[str, list[float]] = {}
    for _ in range(rounds + 1):
        for folder, model in zip(folders, models, strict=True):
            x = rng.integers(0, 256, (batch, model.image_size, model.image_size, 3), dtype=np.uint8)
            t = time.perf_counter()
            model.embed_arrays(x)
            rates.setdefault(str(folder), []).append(batch / (time.perf_counter() - t))
    return {name: float(np.median(r[1:])) for name, r in rates.items()}  # the first round warms up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=Path("data/demo"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/recipelens-bench"))
    parser.add_argument("--preset", default="ft")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--subset-recipes", type=int, default=96, help="recipes for the side-by-side steps")
    parser.add_argument("--steps", type=int, default=10, help="timed phase-2 steps per side and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the side-by-side steps")
    parser.add_argument("--target-recipes", type=int, default=13_500, help="catalogue size to extrapolate to")
    parser.add_argument("--skip-run", action="store_true", help="only the side-by-side phase-2 steps")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument(
        "--embed-rate", type=Path, nargs="+", metavar="MODEL_DIR", help="only: onnxruntime img/s per model"
    )
    args = parser.parse_args()
    if args.embed_rate:
        rates = embedding_rates(args.embed_rate)
        first = next(iter(rates.values()))
        for name, rate in rates.items():
            print(
                f"{rate:8.1f} img/s  {rate / first:5.2f}×  {name}  (onnxruntime CPU, batch 32, median of 5)"
            )
        return 0
    if not args.catalog.exists():
        sys.exit(f"{args.catalog}: no catalogue (make one with: recipelens-demo-catalog --out data/demo)")
    configure_logging("INFO")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    from training.presets import preset_config
    from training.train import run

    config = preset_config(args.preset).overridden(args.assignments)
    step = side_by_side(
        config,
        args.catalog,
        args.out / "side-by-side",
        recipes=args.subset_recipes,
        steps=args.steps,
        rounds=args.rounds,
    )
    default = "cached" if config.phase2_depthwise else "cached_frozen_depthwise"
    print()
    print(
        f"phase-2 step of {config.phase2.batch_recipes} triplets "
        f"({config.backbone}, top {config.unfreeze_layers} layers; "
        f"median of {args.rounds} interleaved rounds)"
    )
    rows = (
        ("before", "before: 3P views rendered, whole backbone"),
        ("rendered", "distinct slots, rendered + frozen layers"),
        ("cached", "distinct slots on the activation cache"),
        ("cached_frozen_depthwise", "  … depthwise kernels frozen (phase2_depthwise=false)"),
        ("cached_queries", "  … gallery slots forward only (phase2_gallery_gradient=false)"),
    )
    for key, label in rows:
        print(f"  {label:<64}{step[key]:8.3f} s{'   (this config)' if key == default else ''}")
    print(f"  {'cache alone (rendered / cached)':<64}{step['rendered'] / step['cached']:8.1f}×")
    print(f"  speed-up per step (= per epoch) vs before, target ≥ {SPEEDUP_TARGET:g}×:")
    for key, label in rows[2:]:
        ratio = step["before"] / step[key]
        verdict = "met" if ratio >= SPEEDUP_TARGET else "NOT met"
        mark = "   (this config)" if key == default else ""
        print(f"  {label:<64}{ratio:8.1f}×   {verdict}{mark}")
    if args.skip_run:
        return 0

    result = run(config, args.catalog, args.out, progress=args.progress)
    t = result.timings
    counts = json.loads((result.run_dir / "evaluation.json").read_text()).get("split_recipes", {})
    recipes = sum(counts.values()) if counts else 0
    print()
    print(f"{'stage':<40}{'seconds':>10}")
    for key, label in LABELS.items():
        if key in t:
            print(f"{label:<40}{t[key]:>10.1f}")
    scaled = sum(t.get(k, 0.0) for k in TRAINING_STAGES)
    fixed = sum(t.get(k, 0.0) for k in FIXED_STAGES)
    training = scaled + fixed
    epochs = {phase: len(rows) for phase, rows in result.history.items()}
    for phase, n in epochs.items():
        print(f"{phase + ' seconds per epoch':<40}{t[phase + '_fit_s'] / max(1, n):>10.2f}   ({n} epochs)")
    scale = args.target_recipes / max(1, recipes)
    print(f"{'training (decode … phase 2)':<40}{training:>10.1f}")
    estimate = scaled * scale + fixed
    verdict = "met" if estimate < HOUR_S else "NOT met"
    print(
        f"{'training at ' + format(args.target_recipes, ',') + ' recipes':<40}{estimate:>10.0f}"
        f"   ({scale:.1f}× the {recipes} recipes here, linear in photos, the fixed cost once; "
        f"target < {HOUR_S:.0f} s: {verdict})"
    )
    print()
    print((result.run_dir / "evaluation.md").read_text())
    print(f"model folder: {result.model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
