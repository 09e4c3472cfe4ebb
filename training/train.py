"""One training run, as named stages: catalogue → photos → split → phase 1 → phase 2 → evaluation → export.

:func:`run` reads top to bottom as the stages it calls, each on one :class:`~training.run_state.Run` (the
config, the data, the networks, the run folder, the timer):

1. :func:`~training.dataset.prepare_data` — read and check the catalogue, decode its photos, split recipes;
2. :func:`~training.fitting.build_networks` — the model and its halves around the pooling layer;
3. :func:`~training.features.pretrained_features` — the frozen backbone's pooled features of the clean
   photos, of the evaluation's distorted queries and of the match verdict's non-food pictures, before
   any training (the raw backbone's row); frozen passes like these run in onnxruntime on a CPU
   (:func:`~training.features.frozen_fn`);
4. :func:`train_head` (phase 1) — ``cache_views − 1`` augmented views per training photo join the
   feature cache, the head starts as a linear map fitted to it (``head_init``, :mod:`training.heads`),
   and trains on triplets of cached features, so an epoch costs a few dense layers instead of 3P
   backbone passes;
5. :func:`fine_tune` (phase 2, ``phase2.epochs > 0``) — the top ``unfreeze_layers`` backbone layers
   (BatchNorm, and with ``phase2_depthwise=false`` the depthwise kernels, kept frozen) train with the
   head at a lower learning rate on activations cached at the unfreeze boundary
   (:mod:`training.activation_cache`; computed before phase 1, whose pooled-feature cache then comes
   from the same backbone pass);
6. :func:`~training.run_evaluation.evaluate_run` — raw backbone, the head at init and the trained model
   on the same queries, each compared with raw query by query
   (:func:`training.run_report.compare_with_raw`), and the match verdict's rates of raw and the model;
7. :func:`export_run` — ONNX + parity check + manifest with the flattened figures; the report is copied
   into the model folder.

Both phases fit through :func:`training.fitting.fit_phase`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from indexer.catalog import CatalogError
from training import activation_cache as act
from training.activation_cache import ActivationCache, BoundarySplit
from training.data import TripletSampler, feature_triplets
from training.dataset import prepare_data
from training.evaluate import RetrievalScores, VerdictRates
from training.features import (
    PretrainedFeatures,
    inference_fn,
    pooled_feature_cache,
    pretrained_features,
    reference_features,
)
from training.fitting import (
    BACKBONE_LAYER,
    build_networks,
    build_triplet_model,
    fit_phase,
    float32_twin,
    gallery_sizes,
    unfreeze_top,
)
from training.heads import init_head
from training.presets import TrainConfig
from training.run_evaluation import HEAD_INIT_ROW, Evaluation, evaluate_run
from training.run_report import copy_report, manifest_metrics, plot_curves
from training.run_state import Run, StageTimer, Training

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run produced: the exported model folder and the run folder with its reports."""

    model_dir: Path
    run_dir: Path
    evaluation: dict[str, RetrievalScores]
    validation: dict[str, float]
    timings: dict[str, float]
    history: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    verdict: dict[str, VerdictRates] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# Stages


def start_run_folder(config: TrainConfig, out_dir: Path) -> Path:
    """``<out>/runs/<preset>-<time>/`` with the full config in it."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = out_dir / "runs" / f"{config.preset}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2))
    log.info("run folder %s; config: %s", run_dir, config.model_dump_json())
    return run_dir


def _fit(
    run: Run,
    outcome: Training,
    phase: Literal["phase1", "phase2"],
    triplet: keras.Model,
    batches: Callable[[TripletSampler, bool], tf.data.Dataset],
    *,
    views: int,
) -> None:
    """One phase through :func:`~training.fitting.fit_phase`: its history and validation into ``outcome``."""
    outcome.history[phase], outcome.validation = fit_phase(
        phase,
        triplet,
        batches,
        config=run.config,
        settings=run.config.phase1 if phase == "phase1" else run.config.phase2,
        photos=run.data.photos,
        recipes=run.data.recipes,
        views=views,
        run_dir=run.run_dir,
        strategy=run.nets.strategy,
        progress=run.progress,
    )


def train_head(
    run: Run,
    raw: PretrainedFeatures,
    outcome: Training,
    activations: tuple[BoundarySplit, ActivationCache] | None = None,
) -> None:
    """Phase 1: the head on cached features of the frozen backbone, from its linear start.

    With phase 2's activation cache at hand (and at least ``cache_views`` views in it), the pooled
    features of the augmented views come from it through the frozen top layers: no second backbone pass.
    """
    config, data, nets = run.config, run.data, run.nets
    with run.timer("phase1_cache_s"):
        if activations is not None and activations[1].values.shape[1] >= config.cache_views:
            cache = act.pooled_features_from_cache(*activations, data.photos, raw.clean, config.cache_views)
        else:
            cache = pooled_feature_cache(
                config,
                nets.features,
                data.photos,
                data.photos_of("train", "validation"),
                raw.clean,
                progress=run.progress,
                fn=raw.frozen,
            )
    with run.timer("phase1_fit_s"):
        train_cache = cache[data.photos_of("train")]
        if init_head(nets.model, train_cache, config.head_init, config.whitening_shrinkage):
            head_fn = inference_fn(nets.head)
            queries = {level: np.asarray(head_fn(tf.constant(f))) for level, f in raw.query_features.items()}
            outcome.head_init = (np.asarray(head_fn(tf.constant(raw.clean))), queries)
        with nets.strategy.scope():
            head_triplet = build_triplet_model(nets.head, name="head_triplet")
        _fit(
            run,
            outcome,
            "phase1",
            head_triplet,
            lambda sampler, training: feature_triplets(sampler, cache, training=training, seed=config.seed),
            views=config.cache_views,
        )


def fine_tune(run: Run, split: BoundarySplit, cache: ActivationCache | None, outcome: Training) -> None:
    """Phase 2: the top backbone layers (BatchNorm frozen) and the head on boundary activations.

    From the activation cache when there is one, else rendering the views and running the frozen
    layers at every step: the same batches, views and model either way.
    """
    config, nets = run.config, run.nets
    with run.timer("phase2_fit_s"):
        with nets.strategy.scope():
            unfrozen = unfreeze_top(
                nets.model.get_layer(BACKBONE_LAYER),
                config.unfreeze_layers,
                depthwise=config.phase2_depthwise,
            )
            triplet = act.build_slot_triplet_model(
                split.upper, gallery_gradient=config.phase2_gallery_gradient
            )
        log.info(
            "phase 2: %d backbone layers with weights unfrozen (BatchNorm%s frozen), %s",
            unfrozen,
            "" if config.phase2_depthwise else " and depthwise convolutions",
            "on the activation cache" if cache is not None else "rendering views at every step",
        )

        def batches(sampler: TripletSampler, training: bool) -> tf.data.Dataset:
            if cache is not None:
                return act.activation_triplets(
                    sampler,
                    cache,
                    training=training,
                    seed=config.seed,
                    gallery_gradient=config.phase2_gallery_gradient,
                )
            return act.rendered_activation_triplets(
                sampler, split, config, training=training, seed=config.seed
            )

        _fit(run, outcome, "phase2", triplet, batches, views=config.phase2_views)
    outcome.backbone_trained = True


def export_run(run: Run, evaluation: Evaluation, outcome: Training, *, parity_count: int) -> Path:
    """ONNX + parity check + manifest (through :func:`training.export.export_model`)."""
    from training.export import export_model

    config, photos = run.config, run.data.photos
    model = run.nets.model
    sizes = gallery_sizes(config)
    if sizes or keras.mixed_precision.global_policy().name != "float32":
        model = float32_twin(model, config, free_size=bool(sizes))
    metrics = manifest_metrics(
        evaluation.results,
        evaluation.comparisons,
        outcome.validation,
        model=config.preset if config.train else "raw",
        headline=evaluation.headline,
        split_recipes={name: len(ids) for name, ids in run.data.recipes.items()},
        verdict=evaluation.verdict,
    )
    picks = np.linspace(0, len(photos) - 1, min(parity_count, len(photos))).astype(int)
    return export_model(
        model,
        run.out_dir,
        name=f"{config.backbone}-{config.preset}",
        backbone=config.backbone,
        source={
            "preset": config.preset,
            "catalog": str(run.catalog_path),
            "config": config.model_dump(mode="json"),
        },
        metrics=metrics,
        parity_images=[photos.files[i] for i in sorted(set(picks.tolist()))],
        tolerance=1e-4,
        gallery_sizes=sizes,
    )


# ---------------------------------------------------------------------------------------------------------
# The run


def run(
    config: TrainConfig,
    catalog_path: Path,
    out_dir: Path,
    *,
    progress: bool = True,
    parity_count: int = 4,
) -> RunResult:
    """Train (or not, for ``raw``), evaluate against the raw backbone, export; see the module docstring."""
    if not catalog_path.exists():  # before anything is written
        raise CatalogError(f"catalogue not found: {catalog_path}")
    started = time.perf_counter()
    run_dir = start_run_folder(config, out_dir)
    keras.utils.set_random_seed(config.seed)
    timer = StageTimer()
    with timer("decode_s"):
        data = prepare_data(config, catalog_path, run_dir, progress=progress)
    ctx = Run(config, catalog_path, out_dir, run_dir, data, build_networks(config), timer, progress)
    held_out = data.photos_of(config.evaluation.split)
    raw = pretrained_features(
        config, ctx.nets.features, data.photos, held_out, progress=progress, stage=timer
    )
    outcome = Training()
    split, activations = None, None
    if config.train and config.phase2.epochs > 0:
        split = act.split_at_unfreeze_boundary(ctx.nets.model, config.unfreeze_layers)
        if config.phase2_cache:
            activations = act.build_activation_cache(
                split,
                config,
                data.photos,
                data.photos_of("train", "validation"),
                views=config.phase2_views,
                run_dir=run_dir,
                progress=progress,
                stage=timer,
            )
    if config.train and config.phase1.epochs > 0:
        train_head(ctx, raw, outcome, (split, activations) if split and activations else None)
    if split is not None:
        fine_tune(ctx, split, activations, outcome)
    for phase, epochs in outcome.history.items():
        timer.timings[f"{phase}_epoch_s"] = timer.timings[f"{phase}_fit_s"] / max(1, len(epochs))
    if outcome.history:
        (run_dir / "history.json").write_text(json.dumps(outcome.history, indent=1))
        plot_curves(outcome.history, run_dir / "training_curves.png")
    with timer("evaluate_s"):
        evaluation = evaluate_run(
            ctx, raw, outcome, reference_features(config, data.photos, held_out, progress=progress)
        )
    with timer("export_s"):
        model_dir = export_run(ctx, evaluation, outcome, parity_count=parity_count)
    timer.timings["total_s"] = time.perf_counter() - started
    copy_report(run_dir, model_dir)
    (run_dir / "timings.json").write_text(json.dumps(timer.timings, indent=1))
    log.info("exported %s in %.0f s total", model_dir, timer.timings["total_s"])
    return RunResult(
        model_dir,
        run_dir,
        evaluation.results,
        outcome.validation,
        timer.timings,
        outcome.history,
        evaluation.verdict,
    )


__all__ = ["HEAD_INIT_ROW", "RunResult", "run"]
