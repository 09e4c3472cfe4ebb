"""What a run leaves behind besides the model: curves, the comparison with raw, manifest figures.

:func:`compare_with_raw` pairs every model with the raw backbone query by query; :func:`manifest_metrics`
flattens the evaluation into the ``test/…``, ``raw/…`` and ``validation/…`` keys of the exported
manifest; :func:`copy_report` puts the report and pictures into the model folder's ``report/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from training.data import PhotoSet
from training.evaluate import PairedDelta, RetrievalScores, category_hits, paired_delta, recipe_ranks

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
) -> list[PairedDelta]:
    """Every model minus ``reference`` on the same queries: R@1 per query level, cat P@5 once."""
    out: list[PairedDelta] = []
    models = [name for name in gallery if name != reference]
    for level, (_, query_photo) in query_sets.items():
        recipe = photos.photo_recipe[query_photo]
        hits = {
            name: recipe_ranks(query_emb[name][level], recipe, gallery[name], photos.photo_recipe) == 0
            for name in gallery
        }
        out += [
            paired_delta(
                hits[n],
                hits[reference],
                query_photo,
                metric="recall@1",
                model=n,
                reference=reference,
                distortion=level,
            )
            for n in models
        ]
    if categories is not None and (categories[held_out] >= 0).any():
        shares = {
            name: category_hits(gallery[name], photos.photo_recipe, categories, held_out) for name in gallery
        }
        groups = held_out[categories[held_out] >= 0]
        out += [
            paired_delta(
                shares[n],
                shares[reference],
                groups,
                metric="category_p@5",
                model=n,
                reference=reference,
                distortion="clean",
            )
            for n in models
        ]
    return out


def manifest_metrics(
    results: dict[str, RetrievalScores],
    comparisons: list[PairedDelta],
    validation: dict[str, float],
    *,
    model: str,
    headline: str,
    split_recipes: dict[str, int],
) -> dict[str, Any]:
    """The evaluation as flat manifest keys: ``test/…`` (of ``model``), ``raw/…``, ``validation/…``."""
    metrics: dict[str, Any] = {"headline_queries": headline, "split_recipes": split_recipes}
    for key, r in results.items():
        name, _, level = key.partition("@")
        for prefix in [p for p, row in (("test", model), ("raw", "raw")) if row == name]:
            metrics.update({f"{prefix}/{level + '/' if level else ''}{k}": v for k, v in r.flat().items()})
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
