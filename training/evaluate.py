"""Held-out evaluation, always the trained model side by side with the raw backbone.

* **Instance retrieval** — the query is a distorted copy of a held-out recipe's photo (crop, rotation,
  light change, JPEG recompression, then the one preprocessing function, as a phone photo would go);
  the gallery is the whole catalogue's clean photos. A recipe ranks by its best photo. Recall@k: the
  query's recipe is among the first k recipes. mAP@10 over the photo ranking, relevant = the recipe's
  photos.
* **Same-category precision** — when the catalogue has categories: for each clean held-out photo, its
  nearest photos of *other* recipes; P@k is the share of the first k that share its category.
* **Noise** — every figure is a mean over few held-out photos (each with several distorted queries), so
  the report gives the trained model's difference to the raw backbone on the *same* queries with a 95 %
  bootstrap interval that resamples whole photos (a photo's queries move together), and the count of
  queries each model gets right that the other misses. "Beats raw" means the interval lies above 0.
* An embedding map (PCA of the gallery, coloured by category) per model as one PNG, and the report as
  JSON and Markdown.

Everything here is numpy, Pillow and matplotlib: the embeddings come in as arrays.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from embedder.preprocess import IMAGE_SIZE, preprocess
from indexer.distortions import DISTORTIONS, distort

log = logging.getLogger(__name__)

RECALL_AT = (1, 5, 10)
MAP_AT = 10
PRECISION_AT = (1, 5)
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
METRIC_LABELS = {"recall@1": "R@1", "category_p@5": "cat P@5"}


def make_queries(
    files: Sequence[Path], per_photo: int, seed: int, level: str = "moderate"
) -> tuple[np.ndarray, np.ndarray]:
    """(Q, S, S, 3) uint8 distorted views of ``files`` and the index of the photo each came from."""
    if level not in DISTORTIONS:
        raise ValueError(f"unknown distortion level {level!r}; choose one of {', '.join(DISTORTIONS)}")
    rng = np.random.default_rng(seed)
    arrays: list[np.ndarray] = []
    origin: list[int] = []
    for i, path in enumerate(files):
        data = Path(path).read_bytes()
        for _ in range(per_photo):
            arrays.append(preprocess(distort(data, rng, level)))
            origin.append(i)
    if not arrays:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), np.zeros((0,), np.int64)
    return np.stack(arrays), np.asarray(origin, np.int64)


@dataclass(frozen=True)
class RetrievalScores:
    """The figures of one model on one evaluation."""

    queries: int
    recall: dict[int, float]
    map_at_10: float
    category_queries: int
    category_precision: dict[int, float] | None
    distortion: str = "moderate"
    recall_at_1_ci: tuple[float, float] | None = None  # 95 % bootstrap interval over the source photos

    def flat(self) -> dict[str, float]:
        out = {f"recall@{k}": v for k, v in self.recall.items()}
        out[f"map@{MAP_AT}"] = self.map_at_10
        for k, v in (self.category_precision or {}).items():
            out[f"category_p@{k}"] = v
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _recipe_ranks(sims: np.ndarray, query_recipe: np.ndarray, gallery_recipe: np.ndarray) -> np.ndarray:
    recipes, inverse = np.unique(gallery_recipe, return_inverse=True)
    best = np.full((len(sims), len(recipes)), -np.inf, np.float32)
    np.maximum.at(best.T, inverse, sims.T)
    target = np.searchsorted(recipes, query_recipe)
    if not np.all(recipes[np.minimum(target, len(recipes) - 1)] == query_recipe):
        raise ValueError("every query's recipe must have a photo in the gallery")
    own = best[np.arange(len(sims)), target]
    return (best > own[:, None]).sum(axis=1)  # 0-based; ties count in the query's favour


def recipe_ranks(
    queries: np.ndarray, query_recipe: np.ndarray, gallery: np.ndarray, gallery_recipe: np.ndarray
) -> np.ndarray:
    """0-based rank of each query's own recipe among the recipes ranked by their best photo."""
    return _recipe_ranks(_unit(queries) @ _unit(gallery).T, query_recipe, gallery_recipe)


def instance_retrieval(
    queries: np.ndarray, query_recipe: np.ndarray, gallery: np.ndarray, gallery_recipe: np.ndarray
) -> tuple[dict[int, float], float]:
    """Recall@{1,5,10} over recipes ranked by their best photo, and mAP@10 over the photo ranking."""
    sims = _unit(queries) @ _unit(gallery).T  # (Q, G)
    rank = _recipe_ranks(sims, query_recipe, gallery_recipe)
    recipes, inverse = np.unique(gallery_recipe, return_inverse=True)
    target = np.searchsorted(recipes, query_recipe)
    recall = {k: float(np.mean(rank < k)) for k in RECALL_AT}
    order = np.argsort(-sims, axis=1, kind="stable")[:, :MAP_AT]
    relevant = gallery_recipe[order] == query_recipe[:, None]
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, order.shape[1] + 1)
    n_rel = np.minimum(np.bincount(inverse)[target], MAP_AT)
    ap = (precision * relevant).sum(axis=1) / n_rel
    return recall, float(np.mean(ap))


def category_precision(
    queries: np.ndarray,
    *,
    query_recipe: np.ndarray,
    query_category: np.ndarray,
    gallery: np.ndarray,
    gallery_recipe: np.ndarray,
    gallery_category: np.ndarray,
) -> dict[int, float]:
    """P@{1,5}: share of the nearest photos of other recipes that share the query's category."""
    same = _same_category(
        queries,
        query_recipe=query_recipe,
        query_category=query_category,
        gallery=gallery,
        gallery_recipe=gallery_recipe,
        gallery_category=gallery_category,
    )
    return {k: float(np.mean(same[:, :k])) for k in PRECISION_AT}


def _same_category(
    queries: np.ndarray,
    *,
    query_recipe: np.ndarray,
    query_category: np.ndarray,
    gallery: np.ndarray,
    gallery_recipe: np.ndarray,
    gallery_category: np.ndarray,
) -> np.ndarray:
    """(Q, max k) booleans: does the i-th nearest photo of another recipe share the query's category."""
    sims = _unit(queries) @ _unit(gallery).T
    sims[gallery_recipe[None, :] == query_recipe[:, None]] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, : max(PRECISION_AT)]
    usable = np.isfinite(np.take_along_axis(sims, order, axis=1))  # own photos rank last, never count
    return (gallery_category[order] == query_category[:, None]) & usable


def category_hits(
    gallery: np.ndarray,
    gallery_recipe: np.ndarray,
    gallery_category: np.ndarray,
    held_out: np.ndarray,
    k: int = 5,
) -> np.ndarray:
    """Per held-out photo with a category: the share of its k nearest other-recipe photos in its category."""
    usable = held_out[gallery_category[held_out] >= 0]
    same = _same_category(
        gallery[usable],
        query_recipe=gallery_recipe[usable],
        query_category=gallery_category[usable],
        gallery=gallery,
        gallery_recipe=gallery_recipe,
        gallery_category=gallery_category,
    )
    return same[:, :k].mean(axis=1)


def _group_sums(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, inverse = np.unique(groups, return_inverse=True)
    return np.bincount(inverse, weights=values), np.bincount(inverse).astype(np.float64)


def bootstrap_interval(
    values: np.ndarray,
    groups: np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` when whole ``groups`` (source photos) are resampled."""
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    sums, counts = _group_sums(values, np.asarray(groups))
    pick = np.random.default_rng(seed).integers(0, len(sums), size=(resamples, len(sums)))
    means = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedDelta:
    """``model`` minus ``reference`` on the same queries, with a bootstrap interval over source photos."""

    metric: str
    model: str
    reference: str
    distortion: str
    model_value: float
    reference_value: float
    delta: float
    low: float
    high: float
    better: int  # queries where the model scores higher than the reference
    worse: int
    queries: int
    photos: int

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no clear difference"


def paired_delta(
    model_values: np.ndarray,
    reference_values: np.ndarray,
    groups: np.ndarray,
    *,
    metric: str,
    model: str,
    reference: str = "raw",
    distortion: str = "moderate",
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> PairedDelta:
    """Per-query figures of two models on the same queries → mean difference, interval, counts."""
    m = np.asarray(model_values, np.float64)
    r = np.asarray(reference_values, np.float64)
    if m.shape != r.shape or m.shape != np.shape(groups):
        raise ValueError(f"paired figures need one value per query each: {m.shape}, {r.shape}")
    low, high = bootstrap_interval(m - r, groups, resamples=resamples, confidence=confidence, seed=seed)
    return PairedDelta(
        metric=metric,
        model=model,
        reference=reference,
        distortion=distortion,
        model_value=float(m.mean()) if len(m) else float("nan"),
        reference_value=float(r.mean()) if len(r) else float("nan"),
        delta=float((m - r).mean()) if len(m) else float("nan"),
        low=low,
        high=high,
        better=int((m > r).sum()),
        worse=int((m < r).sum()),
        queries=len(m),
        photos=len(np.unique(groups)),
    )


def score(
    *,
    queries: np.ndarray,
    query_recipe: np.ndarray,
    gallery: np.ndarray,
    gallery_recipe: np.ndarray,
    gallery_category: np.ndarray | None,
    held_out: np.ndarray,
    distortion: str = "moderate",
    query_groups: np.ndarray | None = None,
) -> RetrievalScores:
    """All figures for one model. ``held_out``: gallery indices of the held-out (test) photos.

    ``query_groups`` (the source photo of each query) adds a bootstrap interval to Recall@1.
    """
    recall, mean_ap = instance_retrieval(queries, query_recipe, gallery, gallery_recipe)
    interval = None
    if query_groups is not None and len(queries):
        hits = recipe_ranks(queries, query_recipe, gallery, gallery_recipe) == 0
        interval = bootstrap_interval(hits.astype(np.float64), query_groups)
    precision = None
    cat_queries = 0
    if gallery_category is not None:
        usable = held_out[gallery_category[held_out] >= 0]
        cat_queries = len(usable)
        if cat_queries:
            precision = category_precision(
                gallery[usable],
                query_recipe=gallery_recipe[usable],
                query_category=gallery_category[usable],
                gallery=gallery,
                gallery_recipe=gallery_recipe,
                gallery_category=gallery_category,
            )
    return RetrievalScores(len(queries), recall, mean_ap, cat_queries, precision, distortion, interval)


# ---------------------------------------------------------------------------------------------------------
# Reports and pictures


def pca_2d(x: np.ndarray) -> np.ndarray:
    """The first two principal components of the rows of ``x``."""
    centred = np.asarray(x, np.float64) - np.mean(x, axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def plot_embedding_map(
    embeddings: Mapping[str, np.ndarray],
    categories: np.ndarray,
    category_names: Sequence[str],
    path: Path,
    *,
    max_points: int = 2000,
    seed: int = 0,
) -> Path:
    """One PCA panel per model, points coloured by category (grey when unknown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(categories)
    pick = np.sort(np.random.default_rng(seed).permutation(n)[:max_points])
    fig, axes = plt.subplots(1, len(embeddings), figsize=(6 * len(embeddings), 5.5), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, (name, emb) in zip(axes[0], embeddings.items(), strict=True):
        xy = pca_2d(emb[pick])
        cats = categories[pick]
        ax.scatter(*xy[cats < 0].T, s=8, c="lightgrey", label="(none)" if (cats < 0).any() else None)
        for c in np.unique(cats[cats >= 0]):
            label = category_names[c] if c < len(category_names) else str(c)
            ax.scatter(*xy[cats == c].T, s=10, color=cmap(int(c) % 20), label=label[:28])
        ax.set_title(f"{name}: PCA of {len(pick)} gallery photos")
        ax.set_xticks([])
        ax.set_yticks([])
    handles, labels = axes[0][0].get_legend_handles_labels()
    if labels and len(labels) <= 24:
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7, frameon=False)
        fig.subplots_adjust(bottom=0.2)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _signed(v: float) -> str:
    return f"{100 * v:+.1f}".replace("-", "−")


def comparison_table(comparisons: Sequence[PairedDelta]) -> list[str]:
    """Markdown lines: each model minus the reference on the same queries, interval and verdict."""
    if not comparisons:
        return []
    first = comparisons[0]
    lines = [
        "",
        f"## Against {first.reference}, on the same queries",
        "",
        f"| model | queries | metric | {first.reference} | model | Δ points "
        f"| {100 * CONFIDENCE:.0f} % interval | better / worse | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| {c.model} | {c.distortion} | {METRIC_LABELS.get(c.metric, c.metric)} "
            f"| {_pct(c.reference_value)} | {_pct(c.model_value)} "
            f"| {_signed(c.delta)} | {_signed(c.low)} … {_signed(c.high)} | {c.better} / {c.worse} "
            f"| {c.verdict} |"
        )
    lines += [
        "",
        f"Interval: {BOOTSTRAP_RESAMPLES} bootstrap resamples of the {first.photos} held-out photos, each "
        "photo with all its queries (they are not independent). better / worse: queries (for cat P@5, "
        "held-out photos) where the model scores higher / lower than the reference. The verdict is "
        "'better' only when the whole interval lies above 0.",
    ]
    return lines


def markdown_report(
    results: Mapping[str, RetrievalScores],
    *,
    title: str,
    notes: Sequence[str] = (),
    targets: str = "",
    comparisons: Sequence[PairedDelta] = (),
) -> str:
    """A Markdown table: one row per model and query distortion, figures in percent."""
    cols = (
        ["queries"] + [f"R@{k}" for k in RECALL_AT] + [f"mAP@{MAP_AT}"] + [f"cat P@{k}" for k in PRECISION_AT]
    )
    lines = [f"# {title}", "", "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in results.items():
        cells = [r.distortion] + [_pct(r.recall[k]) for k in RECALL_AT] + [_pct(r.map_at_10)]
        cells += [_pct((r.category_precision or {}).get(k)) for k in PRECISION_AT]
        lines.append(f"| {name.split('@')[0]} | " + " | ".join(cells) + " |")
    first = next(iter(results.values()), None)
    if first is not None:
        lines += [
            "",
            f"R@k / mAP@10: {first.queries} distorted queries per row (held-out recipes' photos; "
            "levels in indexer/distortions.py DISTORTIONS) against the whole catalogue; a recipe ranks by "
            "its best photo. cat P@k: share of the nearest photos of other recipes in the same category, "
            f"over {first.category_queries} clean held-out photos.",
        ]
    lines += comparison_table(comparisons)
    if targets:
        lines += ["", targets]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: Path,
    results: Mapping[str, RetrievalScores],
    *,
    title: str,
    extra: Mapping[str, object] | None = None,
    notes: Sequence[str] = (),
    targets: str = "",
    comparisons: Sequence[PairedDelta] = (),
) -> tuple[Path, Path]:
    """``evaluation.json`` and ``evaluation.md`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "models": {name: {**asdict(r), "flat": r.flat()} for name, r in results.items()},
        "comparisons": [{**asdict(c), "verdict": c.verdict} for c in comparisons],
        **(extra or {}),
    }
    json_path = out_dir / "evaluation.json"
    json_path.write_text(json.dumps(payload, indent=2, default=str))
    md_path = out_dir / "evaluation.md"
    md_path.write_text(
        markdown_report(results, title=title, notes=notes, targets=targets, comparisons=comparisons)
    )
    return json_path, md_path
