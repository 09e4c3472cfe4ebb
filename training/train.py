"""One training run: catalogue → photos → split → phase 1 (cached features) → phase 2 → evaluation → export.

Phase 1 trains only the projection head. The frozen backbone's pooled features of every photo are
computed once — the clean photo as view 0 and ``cache_views - 1`` augmented views — and the head then
trains on triplets of cached features, so an epoch costs a few dense layers instead of 3P backbone
passes. Phase 2 (``phase2.epochs > 0``) unfreezes the top ``unfreeze_layers`` backbone layers
(BatchNorm kept frozen) and trains on augmented images rendered on the fly, at a lower learning rate.

The head starts as a linear map fitted to the cached training features — their PCA
(``head_init="pca"``, :func:`init_head_with_pca`) or their learned whitening (``"whitened"``,
:func:`init_head_with_whitening`) — so training refines a ranking at least as good as the backbone's;
the evaluation shows that starting point as a row of its own, next to the raw backbone and the trained
model.

Both phases: AdamW (weight decay 1e-4), ReduceLROnPlateau and EarlyStopping (best weights restored)
on the validation loss, a best-weights checkpoint, a CSV log. The raw backbone is evaluated in the
same run on the same queries, from features computed before any training, and every other row is
compared with it query by query (:func:`compare_with_raw`: difference, bootstrap interval, counts).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from indexer.catalog import CatalogError, read_catalog, write_bad_report
from training.data import (
    PhotoSet,
    TripletSampler,
    feature_triplets,
    image_triplets,
    load_photos,
    view_dataset,
)
from training.evaluate import (
    PairedDelta,
    RetrievalScores,
    category_hits,
    make_queries,
    paired_delta,
    plot_embedding_map,
    recipe_ranks,
    score,
    write_report,
)
from training.layers import ExtractTripletComponent, TripletStack
from training.losses import TripletLoss
from training.metrics import triplet_metrics
from training.presets import PhaseConfig, TrainConfig
from training.split import EmptySplitError, RecipeSplit, sample_recipes, split_recipes

log = logging.getLogger(__name__)

POOL_LAYER = "avg_pool"
BACKBONE_LAYER = "backbone"
HEAD_INIT_ROW = "head at init (untrained)"
SEED_TARGETS = {
    "triplet_accuracy": (">=", 0.85),
    "pos_similarity": (">=", 0.75),
    "neg_similarity": ("<=", 0.30),
}


# ---------------------------------------------------------------------------------------------------------
# Models


def build_triplet_model(embedding: keras.Model, *, name: str = "triplet") -> keras.Model:
    """``(batch, 3, *item)`` → ``(batch, 3, D)``: one shared embedding model applied to each slot."""
    item_shape = tuple(embedding.input_shape[1:])
    inputs = keras.Input(shape=(3, *item_shape), dtype=embedding.inputs[0].dtype, name=f"{name}_input")
    slots = [embedding(ExtractTripletComponent(i, name=f"{name}_slot{i}")(inputs)) for i in range(3)]
    return keras.Model(inputs, TripletStack(name=f"{name}_embeddings")(slots), name=name)


def split_at_pooling(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(images → pooled features, pooled features → embedding), sharing the model's layers and weights."""
    pool = model.get_layer(POOL_LAYER)
    features = keras.Model(model.input, pool.output, name="pooled_features")
    head_layers = model.layers[model.layers.index(pool) + 1 :]
    inputs = keras.Input(shape=tuple(pool.output.shape[1:]), name="features")
    x = inputs
    for layer in head_layers:
        x = layer(x)
    return features, keras.Model(inputs, x, name="head")


def unfreeze_top(backbone: keras.Model, count: int) -> int:
    """Make the last ``count`` layers of ``backbone`` trainable, BatchNorm excepted; returns how many were."""
    backbone.trainable = True
    layers = backbone.layers
    cut = max(0, len(layers) - count)
    trained = 0
    for i, layer in enumerate(layers):
        trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable
        trained += int(trainable and bool(layer.weights))
    return trained


def _compile(model: keras.Model, config: TrainConfig, phase: PhaseConfig) -> None:
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=phase.learning_rate, weight_decay=config.weight_decay),
        loss=TripletLoss(margin=config.margin, mining=config.mining),
        metrics=triplet_metrics(config.margin),
    )


def _callbacks(config: TrainConfig, run_dir: Path, phase: str) -> list[keras.callbacks.Callback]:
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    return [
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=config.lr_factor, patience=config.lr_patience, verbose=1
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.early_stopping_patience, restore_best_weights=True, verbose=1
        ),
        keras.callbacks.ModelCheckpoint(
            str(ckpt / f"{phase}.best.weights.h5"),
            monitor="val_loss",
            save_best_only=True,
            save_weights_only=True,
        ),
        keras.callbacks.CSVLogger(str(run_dir / f"{phase}_log.csv")),
    ]


# ---------------------------------------------------------------------------------------------------------
# Runs


@dataclass
class RunResult:
    """What a run produced: the exported model folder and the run folder with its reports."""

    model_dir: Path
    run_dir: Path
    evaluation: dict[str, RetrievalScores]
    validation: dict[str, float]
    timings: dict[str, float]
    history: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def _verbose(progress: bool) -> int:
    return (1 if sys.stderr.isatty() else 2) if progress else 0


def _embed_batches(
    fn: Callable[[tf.Tensor], tf.Tensor], batches: Iterable[Any], total: int, desc: str, progress: bool
) -> np.ndarray:
    out: list[np.ndarray] = []
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        for batch in batches:
            out.append(np.asarray(fn(tf.cast(batch, tf.float32)), np.float32))
            bar.update(int(batch.shape[0]))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _model_fn(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    @tf.function(reduce_retracing=True)
    def fn(x: tf.Tensor) -> tf.Tensor:
        return tf.cast(model(x, training=False), tf.float32)

    return fn


def _chunks(images: np.ndarray, size: int = 32) -> Iterable[np.ndarray]:
    return (images[i : i + size] for i in range(0, len(images), size))


def _set_linear_head(model: keras.Model, u: np.ndarray, mean: np.ndarray) -> bool:
    """Make the Dense(2D) → Dense(D) head compute ``(x − mean) · u`` exactly; False if it cannot."""
    hidden, projection = model.get_layer("projection_hidden"), model.get_layer("projection")
    dim = int(projection.kernel.shape[-1])
    if int(hidden.kernel.shape[-1]) != 2 * dim:
        log.warning("head is not Dense(2×%d) → Dense(%d): keeping its random initialisation", dim, dim)
        return False
    full = np.zeros((u.shape[0], dim))
    full[:, : min(dim, u.shape[1])] = u[:, :dim]
    hidden.set_weights([np.concatenate([full, -full], axis=1), np.concatenate([-mean @ full, mean @ full])])
    projection.set_weights([np.concatenate([np.eye(dim), -np.eye(dim)]), np.zeros(dim)])
    return True


def init_head_with_pca(model: keras.Model, features: np.ndarray) -> bool:
    """Start the head as the PCA projection of the training features instead of a random one.

    With ``hidden = 2 × embedding_dim`` the two dense layers can represent a linear map exactly
    (``relu(z) − relu(−z) = z``): hidden = [U, −U]·(x − μ), output = [I; −I]·hidden = Uᵀ(x − μ), with U
    the top principal directions of the cached training features. The untrained model then ranks
    almost like the raw backbone, and triplet training refines that instead of first having to undo a
    random projection fitted to a few hundred recipes. Returns False (random init kept) when the head
    does not have that shape.
    """
    x = features.reshape(-1, features.shape[-1]).astype(np.float64)
    if len(x) < 2:
        return False
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    if not _set_linear_head(model, vt.T, mean):
        return False
    log.info("head initialised with the PCA of %d training feature vectors", len(x))
    return True


def whitening_projection(features: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Learned whitening (Radenović et al.): (F, F) projection and mean from a (N, V, F) feature cache.

    View 0 is the clean photo, views 1… its augmented copies. The directions in which an augmented
    copy moves away from its photo (the covariance of the differences, shrunk towards a multiple of the
    identity by ``shrinkage``) are scaled down, then the result is rotated to its principal axes: a
    linear map under which a distorted photo stays near its original, ordered by how much it tells
    photos apart.
    """
    if features.ndim != 3 or features.shape[1] < 2:
        raise ValueError(f"whitening needs (photos, views ≥ 2, features), got {features.shape}")
    x = features.astype(np.float64)
    diff = (x[:, 1:] - x[:, :1]).reshape(-1, x.shape[-1])
    cov = diff.T @ diff / max(1, len(diff))
    cov = (1 - shrinkage) * cov + shrinkage * (np.trace(cov) / len(cov)) * np.eye(len(cov))
    eigval, eigvec = np.linalg.eigh(cov)
    inv_sqrt = eigvec @ np.diag(1.0 / np.sqrt(np.maximum(eigval, 1e-12))) @ eigvec.T
    flat = x.reshape(-1, x.shape[-1])
    mean = flat.mean(axis=0)
    _, _, vt = np.linalg.svd((flat - mean) @ inv_sqrt, full_matrices=False)
    return inv_sqrt @ vt.T, mean


def init_head_with_whitening(model: keras.Model, features: np.ndarray, shrinkage: float) -> bool:
    """Start the head as the learned whitening of the cached features (see :func:`whitening_projection`)."""
    projection, mean = whitening_projection(features, shrinkage)
    if not _set_linear_head(model, projection, mean):
        return False
    log.info(
        "head initialised with the learned whitening of %d photos × %d views (shrinkage %g)",
        features.shape[0],
        features.shape[1],
        shrinkage,
    )
    return True


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def setup_devices(config: TrainConfig) -> tf.distribute.Strategy:
    """MirroredStrategy over several GPUs, mixed precision on GPU, the default strategy on CPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus and config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
        log.info("mixed precision (mixed_float16) on %d GPU(s)", len(gpus))
    else:
        keras.mixed_precision.set_global_policy("float32")
    if len(gpus) > 1:
        strategy: tf.distribute.Strategy = tf.distribute.MirroredStrategy()
        log.info("MirroredStrategy over %d GPUs", strategy.num_replicas_in_sync)
        return strategy
    log.info("training on %s", "1 GPU" if gpus else "CPU")
    return tf.distribute.get_strategy()


@dataclass
class PreparedData:
    photos: PhotoSet
    split: RecipeSplit
    recipes: dict[str, np.ndarray]  # split name → recipe indices
    bad_count: int


def prepare_data(config: TrainConfig, catalog_path: Path, run_dir: Path, *, progress: bool) -> PreparedData:
    """Read and validate the catalogue, decode its photos, split recipes; a clear error when unusable."""
    catalog = read_catalog(catalog_path)
    by_id = {r.id: r for r in catalog.recipes}
    chosen = sample_recipes(by_id, config.max_recipes, salt=config.split.salt)
    if not chosen:
        raise EmptySplitError(f"{catalog_path}: the catalogue has no recipes")
    photos, bad = load_photos([by_id[rid] for rid in chosen], progress=progress)
    bad = [*catalog.bad, *bad]
    if bad:
        report = run_dir / "bad_images.csv"
        write_bad_report(bad, report)
        log.warning("%d unusable catalogue item(s) listed in %s", len(bad), report)
    if not photos.recipe_ids:
        raise EmptySplitError(
            f"{catalog_path}: no recipe has a usable photo (see {run_dir / 'bad_images.csv'})"
        )
    split = split_recipes(
        photos.hashes_by_recipe(),
        train=config.split.train,
        validation=config.split.validation,
        salt=config.split.salt,
    )
    (run_dir / "split.json").write_text(json.dumps(split.assignment, indent=0, sort_keys=True))
    hint = " — use a larger catalogue or change the fractions, e.g. --set split.validation=0.2"
    index = photos.recipe_index()
    recipes = {}
    for name, minimum in (
        ("train", 2 if config.train else 0),
        ("validation", 2 if config.train else 0),
        ("test", 1),
    ):
        ids = split.require(name, minimum, hint=hint)  # type: ignore[arg-type]
        recipes[name] = np.asarray([index[rid] for rid in ids], np.int32)
    log.info("split: %s", ", ".join(f"{k} {len(v)} recipes" for k, v in recipes.items()))
    return PreparedData(photos, split, recipes, len(bad))


def _photos_of(photos: PhotoSet, recipes: np.ndarray) -> np.ndarray:
    return (
        np.concatenate([photos.photos_of(int(r)) for r in recipes]) if len(recipes) else np.zeros(0, np.int64)
    )


def _history_rows(history: keras.callbacks.History) -> list[dict[str, float]]:
    keys = list(history.history)
    epochs = len(history.history[keys[0]]) if keys else 0
    return [{k: float(history.history[k][i]) for k in keys} for i in range(epochs)]


def plot_curves(history: dict[str, list[dict[str, float]]], path: Path) -> Path:
    """Loss and the four triplet metrics per epoch, training and validation, phases in sequence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["loss", "triplet_accuracy", "triplet_margin_accuracy", "pos_similarity", "neg_similarity"]
    rows = [(phase, row) for phase, rows in history.items() for row in rows]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4))
    x = np.arange(1, len(rows) + 1)
    for ax, name in zip(axes, names, strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            y = [row.get(prefix + name, np.nan) for _, row in rows]
            ax.plot(x, y, style, marker="o", ms=3, label="validation" if prefix else "training")
        boundary = len(next(iter(history.values()), []))
        if len(history) > 1:
            ax.axvline(boundary + 0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _targets_line(validation: dict[str, float]) -> str:
    parts = []
    for key, (op, target) in SEED_TARGETS.items():
        value = validation.get(key)
        if value is None:
            continue
        ok = value >= target if op == ">=" else value <= target
        parts.append(f"{key} {value:.3f} ({op} {target:g}: {'met' if ok else 'not met'})")
    return "Validation against the seed's targets: " + "; ".join(parts) if parts else ""


def run(
    config: TrainConfig,
    catalog_path: Path,
    out_dir: Path,
    *,
    progress: bool = True,
    parity_count: int = 4,
) -> RunResult:
    """Train (or not, for ``raw``), evaluate against the raw backbone, export; see the module docstring."""
    from training.export import export_model
    from training.models import build_embedding_model, build_raw_model

    if not catalog_path.exists():  # before anything is written
        raise CatalogError(f"catalogue not found: {catalog_path}")
    started = time.perf_counter()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = out_dir / "runs" / f"{config.preset}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2))
    log.info("run folder %s; config: %s", run_dir, config.model_dump_json())
    keras.utils.set_random_seed(config.seed)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    data = prepare_data(config, catalog_path, run_dir, progress=progress)
    photos = data.photos
    timings["decode_s"] = time.perf_counter() - t

    strategy = setup_devices(config)
    weights = config.backbone_weights
    with strategy.scope():
        if config.train:
            model = build_embedding_model(
                config.backbone, weights, embedding_dim=config.embedding_dim, dropout=config.dropout
            )
        else:
            model = build_raw_model(config.backbone, weights)
        if POOL_LAYER in [layer.name for layer in model.layers]:
            features_model, head = split_at_pooling(model)
        else:
            raise RuntimeError(
                f"the {config.backbone} model has no {POOL_LAYER!r} layer to cache features at"
            )
    if config.train:
        model.get_layer(BACKBONE_LAYER).trainable = False
    feature_fn = _model_fn(features_model)
    aug = config.augment

    # Pretrained features, before any training: the clean photos (gallery, phase-1 view 0) and the queries.
    t = time.perf_counter()
    all_photos = np.arange(len(photos))
    clean = _embed_batches(
        feature_fn,
        view_dataset(
            photos.images, all_photos, np.zeros_like(all_photos), base_seed=config.seed, config=aug, batch=32
        ),
        len(all_photos),
        "features: clean photos",
        progress,
    )
    test_photos = _photos_of(photos, data.recipes["test"])
    query_sets: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # level → (uint8 queries, source photo)
    query_features: dict[str, np.ndarray] = {}
    for level in config.evaluation.distortions:
        queries, origin = make_queries(
            [photos.files[p] for p in test_photos],
            config.evaluation.queries_per_photo,
            config.evaluation.seed,
            level,
        )
        query_sets[level] = (queries, test_photos[origin])
        query_features[level] = _embed_batches(
            feature_fn, _chunks(queries), len(queries), f"features: {level} queries", progress
        )
    timings["raw_features_s"] = time.perf_counter() - t

    history: dict[str, list[dict[str, float]]] = {}
    validation: dict[str, float] = {}
    backbone_trained = False
    head_init_embeddings: tuple[np.ndarray, dict[str, np.ndarray]] | None = None
    if config.train and config.phase1.epochs > 0:
        t = time.perf_counter()
        trainval = np.concatenate([data.recipes["train"], data.recipes["validation"]])
        cache_photos = _photos_of(photos, trainval)
        views = config.cache_views
        rep_p = np.repeat(cache_photos, views - 1)
        rep_v = np.tile(np.arange(1, views), len(cache_photos))
        augmented = _embed_batches(
            feature_fn,
            view_dataset(photos.images, rep_p, rep_v, base_seed=config.seed, config=aug, batch=32),
            len(rep_p),
            f"features: {views - 1} augmented views per photo",
            progress,
        )
        cache = np.zeros((len(photos), views, clean.shape[1]), np.float32)
        cache[:, 0] = clean
        cache[rep_p, rep_v] = augmented
        timings["phase1_cache_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if config.head_init != "random":
            train_cache = cache[_photos_of(photos, data.recipes["train"])]
            if config.head_init == "whitened":
                init_head_with_whitening(model, train_cache, config.whitening_shrinkage)
            else:
                init_head_with_pca(model, train_cache)
            init_fn = _model_fn(head)
            initial = {level: np.asarray(init_fn(tf.constant(f))) for level, f in query_features.items()}
            head_init_embeddings = (np.asarray(init_fn(tf.constant(clean))), initial)
        with strategy.scope():
            head_triplet = build_triplet_model(head, name="head_triplet")
        history["phase1"], validation = _fit_phase(
            "phase1",
            head_triplet,
            lambda sampler, training: feature_triplets(sampler, cache, training=training, seed=config.seed),
            config=config,
            settings=config.phase1,
            data=data,
            views=views,
            run_dir=run_dir,
            strategy=strategy,
            progress=progress,
        )
        timings["phase1_fit_s"] = time.perf_counter() - t
        timings["phase1_epoch_s"] = timings["phase1_fit_s"] / max(1, len(history["phase1"]))
    if config.train and config.phase2.epochs > 0:
        t = time.perf_counter()
        with strategy.scope():
            unfrozen = unfreeze_top(model.get_layer(BACKBONE_LAYER), config.unfreeze_layers)
            image_triplet = build_triplet_model(model, name="image_triplet")
        log.info("phase 2: %d backbone layers with weights unfrozen (BatchNorm frozen)", unfrozen)
        history["phase2"], validation = _fit_phase(
            "phase2",
            image_triplet,
            lambda sampler, training: image_triplets(
                sampler, aug, training=training, base_seed=config.seed, seed=config.seed
            ).map(lambda x, y: (tf.cast(x, tf.float32), y)),
            config=config,
            settings=config.phase2,
            data=data,
            views=config.phase2_views,
            run_dir=run_dir,
            strategy=strategy,
            progress=progress,
        )
        backbone_trained = True
        timings["phase2_fit_s"] = time.perf_counter() - t
    if history:
        (run_dir / "history.json").write_text(json.dumps(history, indent=1))
        plot_curves(history, run_dir / "training_curves.png")

    # Evaluation: raw backbone vs this model on the same distorted queries and the same gallery.
    t = time.perf_counter()
    gallery: dict[str, np.ndarray] = {"raw": _unit(clean)}
    query_emb: dict[str, dict[str, np.ndarray]] = {"raw": {k: _unit(v) for k, v in query_features.items()}}
    if head_init_embeddings is not None:
        gallery[HEAD_INIT_ROW], query_emb[HEAD_INIT_ROW] = head_init_embeddings
    if config.train:
        if backbone_trained:
            model_fn = _model_fn(model)
            gallery[config.preset] = _embed_batches(
                model_fn, _chunks(photos.images), len(photos), "embed gallery (trained)", progress
            )
            query_emb[config.preset] = {
                level: _embed_batches(
                    model_fn, _chunks(q), len(q), f"embed {level} queries (trained)", progress
                )
                for level, (q, _) in query_sets.items()
            }
        else:
            head_fn = _model_fn(head)
            gallery[config.preset] = np.asarray(head_fn(tf.constant(clean)))
            query_emb[config.preset] = {
                level: np.asarray(head_fn(tf.constant(f))) for level, f in query_features.items()
            }
    categories = photos.photo_categories() if photos.has_categories else None
    headline = config.evaluation.distortions[0]
    results = {
        (name if level == headline else f"{name}@{level}"): score(
            queries=query_emb[name][level],
            query_recipe=photos.photo_recipe[query_photo],
            gallery=gallery[name],
            gallery_recipe=photos.photo_recipe,
            gallery_category=categories,
            held_out=test_photos,
            distortion=level,
            query_groups=query_photo,
        )
        for level, (_, query_photo) in query_sets.items()
        for name in gallery
    }
    comparisons = compare_with_raw(
        gallery, query_emb, query_sets, photos=photos, categories=categories, held_out=test_photos
    )
    timings["evaluate_s"] = time.perf_counter() - t
    plot_embedding_map(
        gallery,
        photos.photo_categories(),
        photos.categories,
        run_dir / "embedding_map.png",
        max_points=config.evaluation.map_points,
        seed=config.seed,
    )
    counts = {name: len(ids) for name, ids in data.recipes.items()}
    write_report(
        run_dir,
        results,
        title=f"recipelens evaluation — preset {config.preset}",
        extra={
            "preset": config.preset,
            "catalog": str(catalog_path),
            "split_recipes": counts,
            "photos": len(photos),
            "validation": validation,
            "timings": timings,
        },
        targets=_targets_line(validation),
        notes=[f"catalogue {catalog_path}: {len(photos)} photos; recipes per split {counts}"],
        comparisons=comparisons,
    )
    for name, r in results.items():
        log.info("%s: %s", name, ", ".join(f"{k} {v:.3f}" for k, v in r.flat().items()))

    # Export through the slice's exporter (ONNX + parity check + manifest).
    t = time.perf_counter()
    export_keras = (
        _float32_copy(model, config) if keras.mixed_precision.global_policy().name != "float32" else model
    )
    mine = config.preset if config.train else "raw"
    metrics: dict[str, Any] = {"headline_queries": headline, "split_recipes": counts}
    for key, r in results.items():
        name, _, level = key.partition("@")
        for prefix in [p for p, row in (("test", mine), ("raw", "raw")) if row == name]:
            metrics.update({f"{prefix}/{level + '/' if level else ''}{k}": v for k, v in r.flat().items()})
    for c in comparisons:
        if c.model == mine:
            level = "" if c.distortion in (headline, "clean") else f"{c.distortion}/"
            key = f"test/{level}{c.metric}_vs_raw"
            metrics.update({key: c.delta, f"{key}_low": c.low, f"{key}_high": c.high})
    metrics.update({f"validation/{k}": v for k, v in validation.items()})
    picks = np.linspace(0, len(photos) - 1, min(parity_count, len(photos))).astype(int)
    parity = [photos.files[i] for i in sorted(set(picks.tolist()))]
    model_dir = export_model(
        export_keras,
        out_dir,
        name=f"{config.backbone}-{config.preset}",
        backbone=config.backbone,
        source={
            "preset": config.preset,
            "catalog": str(catalog_path),
            "config": config.model_dump(mode="json"),
        },
        metrics=metrics,
        parity_images=parity,
        tolerance=1e-4,
    )
    timings["export_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    report_dir = model_dir / "report"
    report_dir.mkdir(exist_ok=True)
    for name in (
        "evaluation.md",
        "evaluation.json",
        "embedding_map.png",
        "training_curves.png",
        "config.json",
    ):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, report_dir / name)
    (run_dir / "timings.json").write_text(json.dumps(timings, indent=1))
    log.info("exported %s in %.0f s total", model_dir, timings["total_s"])
    return RunResult(model_dir, run_dir, results, validation, timings, history)


def compare_with_raw(
    gallery: dict[str, np.ndarray],
    query_emb: dict[str, dict[str, np.ndarray]],
    query_sets: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    photos: PhotoSet,
    categories: np.ndarray | None,
    held_out: np.ndarray,
) -> list[PairedDelta]:
    """Every model minus the raw backbone on the same queries: R@1 per query level, cat P@5 once."""
    out: list[PairedDelta] = []
    models = [name for name in gallery if name != "raw"]
    for level, (_, query_photo) in query_sets.items():
        recipe = photos.photo_recipe[query_photo]
        hits = {
            name: recipe_ranks(query_emb[name][level], recipe, gallery[name], photos.photo_recipe) == 0
            for name in gallery
        }
        out += [
            paired_delta(hits[n], hits["raw"], query_photo, metric="recall@1", model=n, distortion=level)
            for n in models
        ]
    if categories is not None and (categories[held_out] >= 0).any():
        shares = {
            name: category_hits(gallery[name], photos.photo_recipe, categories, held_out) for name in gallery
        }
        groups = held_out[categories[held_out] >= 0]
        out += [
            paired_delta(shares[n], shares["raw"], groups, metric="category_p@5", model=n, distortion="clean")
            for n in models
        ]
    return out


def _fit_phase(
    phase: str,
    triplet_model: keras.Model,
    make_dataset: Callable[[TripletSampler, bool], tf.data.Dataset],
    *,
    config: TrainConfig,
    settings: PhaseConfig,
    data: PreparedData,
    views: int,
    run_dir: Path,
    strategy: tf.distribute.Strategy,
    progress: bool,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Fit one phase; returns its per-epoch history and the validation figures of its best weights."""
    train, val = (
        TripletSampler(
            data.photos,
            data.recipes[split],
            views=views,
            batch_recipes=settings.batch_recipes,
            label_aware=config.label_aware,
            query_gallery=config.query_gallery,
            seed=config.seed + offset,
        )
        for offset, split in enumerate(("train", "validation"))
    )
    steps = settings.steps_per_epoch or train.steps_per_epoch
    with strategy.scope():
        _compile(triplet_model, config, settings)
    log.info(
        "%s: %d epochs × %d steps of %d triplets (%s mining, margin %g, lr %g)",
        phase,
        settings.epochs,
        steps,
        train.batch_recipes,
        config.mining,
        config.margin,
        settings.learning_rate,
    )
    val_ds = make_dataset(val, False)
    history = triplet_model.fit(
        make_dataset(train, True),
        steps_per_epoch=steps,
        epochs=settings.epochs,
        validation_data=val_ds,
        callbacks=_callbacks(config, run_dir, phase),
        verbose=_verbose(progress),
        shuffle=False,
    )
    figures = triplet_model.evaluate(val_ds, verbose=0, return_dict=True)
    validation = {k: float(v) for k, v in figures.items()}
    log.info("%s best weights on validation: %s", phase, validation)
    return _history_rows(history), validation


def _float32_copy(model: keras.Model, config: TrainConfig) -> keras.Model:
    """A float32 twin of a mixed-precision model, for export (ONNX parity is checked in float32)."""
    from training.models import build_embedding_model, build_raw_model

    keras.mixed_precision.set_global_policy("float32")
    twin = (
        build_embedding_model(
            config.backbone, None, embedding_dim=config.embedding_dim, dropout=config.dropout
        )
        if config.train
        else build_raw_model(config.backbone, None)
    )
    twin.set_weights(model.get_weights())
    return twin


def epochs_done(result: RunResult) -> dict[str, int]:
    """Epochs each phase actually ran (early stopping may cut them short)."""
    return {phase: len(rows) for phase, rows in result.history.items()}


__all__ = [
    "RunResult",
    "build_triplet_model",
    "epochs_done",
    "prepare_data",
    "run",
    "split_at_pooling",
    "unfreeze_top",
]
