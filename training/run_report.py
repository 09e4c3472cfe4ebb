"""What a run leaves behind besides the model: the evaluation report, pictures, manifest figures.

:func:`write_report` writes ``evaluation.md`` / ``evaluation.json``; :func:`plot_embedding_map` (PCA
of the gallery per model, coloured by category) and :func:`plot_curves` the PNGs next to them;
:func:`compare_with_raw` pairs every model with the raw backbone query by query, :func:`verdict_table`
shows the match verdict's rates; :func:`manifest_metrics` flattens the evaluation into the ``test/…``,
``raw/…`` and ``validation/…`` keys of the exported manifest; :func:`copy_report` puts the report and
pictures into the model folder's ``report/``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from training.data import PhotoSet
from training.evaluate import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    MAP_AT,
    METRIC_LABELS,
    PRECISION_AT,
    RECALL_AT,
    VERDICT_GOALS,
    PairedDelta,
    RetrievalScores,
    VerdictRates,
    category_hits,
    paired_delta,
    recipe_ranks,
)

SEED_TARGETS = {
    "triplet_accuracy": (">=", 0.85),
    "pos_similarity": (">=", 0.75),
    "neg_similarity": ("<=", 0.30),
}
REPORT_FILES = ("evaluation.md", "evaluation.json", "embedding_map.png", "training_curves.png", "config.json")


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


def targets_line(validation: dict[str, float]) -> str:
    """The seed notebooks' validation targets, each with its value and whether it is met."""
    parts = []
    for key, (op, target) in SEED_TARGETS.items():
        value = validation.get(key)
        if value is None:
            continue
        ok = value >= target if op == ">=" else value <= target
        parts.append(f"{key} {value:.3f} ({op} {target:g}: {'met' if ok else 'not met'})")
    return "Validation against the seed's targets: " + "; ".join(parts) if parts else ""


def compare_with_raw(
    gallery: dict[str, np.ndarray],
    query_emb: dict[str, dict[str, np.ndarray]],
    query_sets: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    photos: PhotoSet,
    categories: np.ndarray | None,
    held_out: np.ndarray,
    reference: str = "raw",
    clean: dict[str, np.ndarray] | None = None,
) -> list[PairedDelta]:
    """Every model minus ``reference`` on the same queries: R@1 per query level, cat P@5 once (``clean``:
    a model's query vectors of the gallery photos where they are not its gallery vectors)."""
    models = [name for name in gallery if name != reference]

    def against_reference(
        per_model: dict[str, np.ndarray], groups: np.ndarray, metric: str, distortion: str
    ) -> list[PairedDelta]:
        ref = per_model[reference]
        return [
            paired_delta(
                per_model[n], ref, groups, metric=metric, model=n, reference=reference, distortion=distortion
            )
            for n in models
        ]

    out: list[PairedDelta] = []
    for level, (_, query_photo) in query_sets.items():
        recipe = photos.photo_recipe[query_photo]
        hits = {
            name: recipe_ranks(query_emb[name][level], recipe, gallery[name], photos.photo_recipe) == 0
            for name in gallery
        }
        out += against_reference(hits, query_photo, "recall@1", level)
    if categories is not None and (categories[held_out] >= 0).any():
        shares = {
            name: category_hits(
                gallery[name], photos.photo_recipe, categories, held_out, clean=(clean or {}).get(name)
            )
            for name in gallery
        }
        out += against_reference(shares, held_out[categories[held_out] >= 0], "category_p@5", "clean")
    return out


def manifest_metrics(
    results: dict[str, RetrievalScores],
    comparisons: list[PairedDelta],
    validation: dict[str, float],
    *,
    model: str,
    headline: str,
    split_recipes: dict[str, int],
    verdict: Mapping[str, VerdictRates] | None = None,
) -> dict[str, Any]:
    """The evaluation as flat manifest keys: ``test/…`` (of ``model``), ``raw/…``, ``validation/…``.

    The verdict's rates go under ``test/food_not_none``, ``raw/nonfood_none`` and the like.
    """
    metrics: dict[str, Any] = {"headline_queries": headline, "split_recipes": split_recipes}
    rows = (("test", model), ("raw", "raw"))
    for key, r in results.items():
        name, _, level = key.partition("@")
        for prefix in [p for p, row in rows if row == name]:
            metrics.update({f"{prefix}/{level + '/' if level else ''}{k}": v for k, v in r.flat().items()})
    for prefix, row in rows:
        if verdict and row in verdict:
            metrics.update({f"{prefix}/{k}": v for k, v in verdict[row].flat().items()})
    for c in comparisons:
        if c.model == model:
            level = "" if c.distortion in (headline, "clean") else f"{c.distortion}/"
            key = f"test/{level}{c.metric}_vs_{c.reference.replace(' ', '_')}"
            metrics.update({key: c.delta, f"{key}_low": c.low, f"{key}_high": c.high})
    metrics.update({f"validation/{k}": v for k, v in validation.items()})
    return metrics


def copy_report(run_dir: Path, model_dir: Path) -> Path:
    """Copy the run's report, pictures and config into ``<model>/report/`` (extra files, not hashed)."""
    report_dir = model_dir / "report"
    report_dir.mkdir(exist_ok=True)
    for name in REPORT_FILES:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, report_dir / name)
    return report_dir


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
    lines: list[str] = []
    for reference in dict.fromkeys(c.reference for c in comparisons):
        lines += [
            "",
            f"## Against {reference}, on the same queries",
            "",
            f"| model | queries | metric | {reference} | model | Δ points "
            f"| {100 * CONFIDENCE:.0f} % interval | better / worse | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c in comparisons:
            if c.reference != reference:
                continue
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


def verdict_line(verdict: Mapping[str, VerdictRates]) -> str:
    """One line: each model's food-not-none and non-food-none rates in percent."""
    return "; ".join(
        f"{name} food not none {_pct(v.food_not_none)} % · non-food none {_pct(v.nonfood_none)} %"
        for name, v in verdict.items()
    )


def verdict_table(verdict: Mapping[str, VerdictRates]) -> list[str]:
    """Markdown lines: the match verdict's two rates per model, against their goals."""
    if not verdict:
        return []
    first = next(iter(verdict.values()))
    food, nonfood = (f"{100 * VERDICT_GOALS[k]:.0f} %" for k in ("food_not_none", "nonfood_none"))
    lines = [
        "",
        "## Match verdict",
        "",
        f"| model | food not none (goal ≥ {food}) | non-food none (goal ≥ {nonfood}) | goals |",
        "|---|---|---|---|",
    ]
    for name, v in verdict.items():
        goals = "met" if v.meets_goals() else "NOT met"
        lines.append(f"| {name} | {_pct(v.food_not_none)} | {_pct(v.nonfood_none)} | {goals} |")
    lines += [
        "",
        "Verdict of indexer/calibration.py, calibrated as a build does (verdict_rates): of the "
        f"{first.food_queries} distorted held-out queries, those of every other held-out recipe fit the "
        f"thresholds (with the build's reference bank of {first.bank} generated non-food pictures) and the "
        f"others check them; non-food: {first.nonfood_queries} pictures of the test family of "
        "indexer/nonfood.py (scikit-image's real photos, generated pictures of another seed range), "
        "disjoint from the bank.",
    ]
    return lines


def markdown_report(
    results: Mapping[str, RetrievalScores],
    *,
    title: str,
    notes: Sequence[str] = (),
    targets: str = "",
    comparisons: Sequence[PairedDelta] = (),
    verdict: Mapping[str, VerdictRates] | None = None,
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
    lines += verdict_table(verdict or {})
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
    verdict: Mapping[str, VerdictRates] | None = None,
) -> tuple[Path, Path]:
    """``evaluation.json`` and ``evaluation.md`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "models": {name: {**asdict(r), "flat": r.flat()} for name, r in results.items()},
        "comparisons": [{**asdict(c), "verdict": c.verdict} for c in comparisons],
        "match_verdict": {name: asdict(v) for name, v in (verdict or {}).items()},
        **(extra or {}),
    }
    json_path = out_dir / "evaluation.json"
    json_path.write_text(json.dumps(payload, indent=2, default=str))
    md_path = out_dir / "evaluation.md"
    md_path.write_text(
        markdown_report(
            results, title=title, notes=notes, targets=targets, comparisons=comparisons, verdict=verdict
        )
    )
    return json_path, md_path
