"""The evaluation stage of a run: every model row embedded, scored, compared with raw, reported.

Rows: ``raw`` (the frozen backbone), the reference backbone (when the run's differs), the head at
init and the trained model; the match verdict's rates for raw and the trained model. With gallery sizes
(``gallery_zoom``) the trained model's gallery is what the indexer will store — each photo at every
size, :func:`embedder.embedding.combine_views` — while its queries, and the clean photos as queries of
same-category precision, stay at the input size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from embedder.embedding import combine_views
from embedder.preprocess import preprocess_file
from training.evaluate import PairedDelta, RetrievalScores, VerdictRates, score, verdict_figures
from training.features import PretrainedFeatures, Reference, chunks, embed_batches, inference_fn, unit
from training.fitting import float32_twin, gallery_sizes
from training.models import build_raw_model
from training.presets import TrainConfig
from training.run_report import compare_with_raw, plot_embedding_map, targets_line, verdict_line, write_report
from training.run_state import Run, Training

log = logging.getLogger(__name__)

HEAD_INIT_ROW = "head at init (untrained)"


@dataclass
class Evaluation:
    """Scores per model row (``name`` or ``name@level``) and the paired comparisons with raw."""

    results: dict[str, RetrievalScores]
    comparisons: list[PairedDelta]
    headline: str
    verdict: dict[str, VerdictRates]  # raw and the trained model


@dataclass
class Embeddings:
    """Per model row: gallery, queries by distortion level, non-food sets by family (raw and the model)."""

    gallery: dict[str, np.ndarray]
    queries: dict[str, dict[str, np.ndarray]]
    nonfood: dict[str, dict[str, np.ndarray]]
    # Query vectors of the gallery photos, for a row whose gallery vectors differ (gallery sizes).
    clean: dict[str, np.ndarray] = field(default_factory=dict)


def _trained_embedder(run: Run, outcome: Training) -> Callable[[np.ndarray, np.ndarray, str], np.ndarray]:
    """(uint8 pictures, their raw pooled features, what) → the trained model's embeddings of them."""
    if outcome.backbone_trained:
        model_fn = inference_fn(run.nets.model)
        return lambda images, _, what: embed_batches(
            model_fn, chunks(images), len(images), f"embed {what} (trained)", run.progress
        )
    head_fn = inference_fn(run.nets.head)
    return lambda _, features, __: np.asarray(head_fn(tf.constant(features)))


def _embed_at_size(run: Run, model: keras.Model, images: np.ndarray, what: str) -> np.ndarray:
    """``model``'s (free-size) unit vectors of ``images``, the catalogue photos at one gallery size."""
    return unit(embed_batches(inference_fn(model), chunks(images), len(images), what, run.progress))


def gallery_row(name: str, sizes: list[int]) -> str:
    """The report's row of ``name`` with a gallery of several sizes: ``raw, gallery 224 + 288``."""
    return f"{name}, gallery {' + '.join(map(str, sizes))}"


def _gallery_note(config: TrainConfig) -> list[str]:
    sizes = gallery_sizes(config)
    if not sizes:
        return []
    return [
        f"{config.preset}: catalogue photos embedded at {' + '.join(map(str, sizes))} px and combined "
        f"(gallery_zoom {config.gallery_zoom}), queries at {sizes[0]} px; so are those of "
        f"{gallery_row('raw', sizes)!r}, for comparison; the other rows: one size"
    ]


def _add_gallery_sizes(run: Run, emb: Embeddings, clean: np.ndarray, sizes: list[int]) -> None:
    """The trained model's gallery as the indexer will store it — each photo at every gallery size,
    combined — and the raw backbone with the same gallery, for comparison (what the sizes give untrained)."""
    config = run.config
    twin = float32_twin(run.nets.model, config, free_size=True)
    raw_twin = build_raw_model(
        config.backbone, config.backbone_weights, pooling=config.pooling, gem_p=config.gem_p, free_size=True
    )
    trained, untrained = [unit(clean)], [emb.gallery["raw"]]
    for size in sizes[1:]:  # each size decoded once, for both models
        images = np.stack([preprocess_file(path, size=size) for path in run.data.photos.files])
        trained.append(_embed_at_size(run, twin, images, f"embed gallery at {size} px (trained)"))
        untrained.append(_embed_at_size(run, raw_twin, images, f"embed gallery at {size} px (raw)"))
    emb.clean[config.preset] = clean
    emb.gallery[config.preset] = combine_views(trained)
    row = gallery_row("raw", sizes)
    emb.clean[row] = emb.gallery["raw"]
    emb.gallery[row] = combine_views(untrained)
    emb.queries[row] = emb.queries["raw"]


def _embeddings(
    run: Run, raw: PretrainedFeatures, outcome: Training, reference: Reference | None
) -> Embeddings:
    """Embeddings per model row (raw, the reference, the head at init, the model); non-food: raw and model."""
    config, photos = run.config, run.data.photos
    emb = Embeddings(
        {"raw": unit(raw.clean)},
        {"raw": {k: unit(v) for k, v in raw.query_features.items()}},
        {"raw": {family: unit(f) for family, (_, f) in raw.nonfood.items()}},
    )
    if reference is not None:
        emb.gallery[reference.row], emb.queries[reference.row] = reference.gallery, reference.queries
    if outcome.head_init is not None:
        emb.gallery[HEAD_INIT_ROW], emb.queries[HEAD_INIT_ROW] = outcome.head_init
    if config.train:
        embed = _trained_embedder(run, outcome)
        clean = embed(photos.images, raw.clean, "gallery")
        sizes = gallery_sizes(config)
        emb.gallery[config.preset] = clean
        if sizes:
            _add_gallery_sizes(run, emb, clean, sizes)
        emb.queries[config.preset] = {
            level: embed(q, raw.query_features[level], f"{level} queries")
            for level, (q, _) in raw.query_sets.items()
        }
        emb.nonfood[config.preset] = {
            family: embed(pictures, f, f"non-food {family}") for family, (pictures, f) in raw.nonfood.items()
        }
    return emb


def evaluate_run(
    run: Run, raw: PretrainedFeatures, outcome: Training, reference: Reference | None = None
) -> Evaluation:
    """Raw backbone vs this model on the same distorted queries and gallery; writes the report."""
    config, data = run.config, run.data
    photos = data.photos
    emb = _embeddings(run, raw, outcome, reference)
    gallery, query_emb = emb.gallery, emb.queries
    categories = photos.photo_categories() if photos.has_categories else None
    headline = config.evaluation.distortions[0]
    results = {
        (name if level == headline else f"{name}@{level}"): score(
            queries=query_emb[name][level],
            query_recipe=photos.photo_recipe[query_photo],
            gallery=gallery[name],
            gallery_recipe=photos.photo_recipe,
            gallery_category=categories,
            held_out=raw.held_out,
            distortion=level,
            query_groups=query_photo,
            clean=emb.clean.get(name),
        )
        for level, (_, query_photo) in raw.query_sets.items()
        for name in gallery
    }
    verdict = {
        name: verdict_figures(
            gallery[name],
            photos.photo_recipe,
            [query_emb[name][level] for level in raw.query_sets],
            [query_photo for _, query_photo in raw.query_sets.values()],
            nonfood,
        )
        for name, nonfood in emb.nonfood.items()
    }
    comparisons = [
        delta
        for ref in ["raw", *([reference.row] if reference else [])]
        for delta in compare_with_raw(
            gallery,
            query_emb,
            raw.query_sets,
            photos=photos,
            categories=categories,
            held_out=raw.held_out,
            reference=ref,
            clean=emb.clean,
        )
    ]
    plot_embedding_map(
        gallery,
        photos.photo_categories(),
        photos.categories,
        run.run_dir / "embedding_map.png",
        max_points=config.evaluation.map_points,
        seed=config.seed,
    )
    counts = {name: len(ids) for name, ids in data.recipes.items()}
    write_report(
        run.run_dir,
        results,
        title=f"recipelens evaluation — preset {config.preset}",
        extra={
            "preset": config.preset,
            "catalog": str(run.catalog_path),
            "split_recipes": counts,
            "photos": len(photos),
            "validation": outcome.validation,
            "timings": run.timer.timings,
        },
        verdict=verdict,
        targets=targets_line(outcome.validation),
        notes=[
            f"catalogue {run.catalog_path}: {len(photos)} photos; recipes per split {counts}; "
            f"queries from the {config.evaluation.split} split",
            *_gallery_note(config),
        ],
        comparisons=comparisons,
    )
    for name, r in results.items():
        log.info("%s: %s", name, ", ".join(f"{k} {v:.3f}" for k, v in r.flat().items()))
    log.info("match verdict: %s", verdict_line(verdict))
    return Evaluation(results, comparisons, headline, verdict)
