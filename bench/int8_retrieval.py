"""Retrieval of an int8 twin next to its fp32 model, on the project's evaluation (the training report's).

Same catalogue split, the same distorted queries of the held-out photos (``moderate`` and ``strong``) and
the same gallery as ``recipelens-train`` evaluates on; both models run on the runtime serving picks
(``--provider`` to choose). Prints Recall@1/5, mAP@10 and same-category P@5 for each, the int8 − fp32
differences with a 95 % bootstrap interval over source photos, and the goals (R@1 within 0.5 points,
cat P@5 within 1 point).

    python bench/int8_retrieval.py --catalog data/demo --fp32 models/lite0-raw-<v> \
        --int8 models/lite0-raw-int8-<v>
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOALS_POINTS = {"recall@1": 0.5, "category_p@5": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--fp32", type=Path, required=True, help="the fp32 model folder")
    parser.add_argument("--int8", type=Path, required=True, help="its int8 twin")
    parser.add_argument("--preset", default="raw", help="whose split and evaluation settings (default raw)")
    parser.add_argument("--provider", action="append", help="execution provider(s) (default: serving's)")
    args = parser.parse_args()

    from embedder.logs import configure_logging
    from embedder.providers import DEFAULT_PROVIDERS
    from embedder.runtime import EmbeddingModel
    from training.dataset import prepare_data
    from training.evaluate import make_queries, paired_delta, recipe_ranks, score
    from training.presets import preset_config

    configure_logging("WARNING")
    config = preset_config(args.preset)
    with tempfile.TemporaryDirectory(prefix="recipelens-int8-eval-") as run_dir:
        data = prepare_data(config, args.catalog, Path(run_dir), progress=False)
    photos = data.photos
    test = np.concatenate([photos.photos_of(int(r)) for r in data.recipes["test"]])
    categories = photos.photo_categories() if photos.has_categories else None
    providers = args.provider or list(DEFAULT_PROVIDERS)
    models = {
        name: EmbeddingModel(folder, providers=providers)
        for name, folder in (("fp32", args.fp32), ("int8", args.int8))
    }
    for name, model in models.items():
        print(f"{name}: {model.version} {model.runs_on}")
    print(f"{len(photos)} photos, {len(test)} held-out; distortions {config.evaluation.distortions}")

    def embed(model: EmbeddingModel, images: np.ndarray) -> np.ndarray:
        return np.concatenate([model.embed_arrays(images[i : i + 32]) for i in range(0, len(images), 32)])

    galleries = {name: embed(m, photos.images) for name, m in models.items()}
    print()
    print("| queries | model | R@1 | R@5 | mAP@10 | cat P@5 |")
    print("|---|---|---:|---:|---:|---:|")
    deltas = []
    for level in config.evaluation.distortions:
        queries, origin = make_queries(
            [photos.files[p] for p in test],
            config.evaluation.queries_per_photo,
            config.evaluation.seed,
            level,
        )
        source = test[origin]
        query_recipe = photos.photo_recipe[source]
        per_model = {}
        for name, model in models.items():
            q = embed(model, queries)
            s = score(
                queries=q,
                query_recipe=query_recipe,
                gallery=galleries[name],
                gallery_recipe=photos.photo_recipe,
                gallery_category=categories,
                held_out=test,
                distortion=level,
            )
            flat = s.flat()
            per_model[name] = (flat, recipe_ranks(q, query_recipe, galleries[name], photos.photo_recipe) == 0)
            print(
                f"| {level} ({len(q)}) | {name} | {flat['recall@1']:.3f} | {flat['recall@5']:.3f} "
                f"| {flat['map@10']:.3f} | {flat.get('category_p@5', float('nan')):.3f} |"
            )
        d = paired_delta(
            per_model["int8"][1].astype(float), per_model["fp32"][1].astype(float), source,
            metric="recall@1", model="int8", reference="fp32", distortion=level,
        )  # fmt: skip
        deltas.append((level, per_model, d))
    print()
    print("| int8 − fp32 | measured, points | 95 % interval | goal |")
    print("|---|---:|---:|---:|")
    for level, _, d in deltas:
        print(
            f"| R@1, {level} queries | {d.delta * 100:+.1f} | [{d.low * 100:+.1f}, {d.high * 100:+.1f}] "
            f"| ≥ −{GOALS_POINTS['recall@1']} |"
        )
    fp32_flat, int8_flat = deltas[0][1]["fp32"][0], deltas[0][1]["int8"][0]
    if "category_p@5" in fp32_flat:  # from the clean held-out photos: the same for every query level
        diff = int8_flat["category_p@5"] - fp32_flat["category_p@5"]
        goal = GOALS_POINTS["category_p@5"]
        print(f"| cat P@5 (clean held-out photos) | {diff * 100:+.1f} | | ≥ −{goal} |")


if __name__ == "__main__":
    main()
