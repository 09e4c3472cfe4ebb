"""Error rates of the match verdict per model: non-food that gets "none", catalogue photos that do not.

For each model: build the catalogue into a fresh Qdrant Edge collection (the build calibrates the
verdict on distorted copies of a sample of its photos and a generated non-food bank), then score a
test set disjoint from that calibration:

* **food** — distorted copies (moderate and strong, :mod:`indexer.distortions`, another seed) of the
  catalogue photos the calibration did *not* sample; goal ≥ 95 % not ``none``;
* **non-food** — scikit-image's real photos and their crops, and generated noise, flat colours,
  gradients, text, screenshots, textures, patterns and shapes of a seed range the build never used
  (``tests/support/nonfood_set.py``); goal ≥ 90 % ``none``.

It also prints the median cost of the verdict itself (one bank product and a few logistics), and for
an int8 twin measured beside its fp32 model the two rates' differences (goal: within 2 points).

    python bench/verdict.py --catalog data/demo --model models/lite0-raw-<version> --model models/<tl-hard>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedder.logs import configure_logging  # noqa: E402
from embedder.manifest import read_manifest  # noqa: E402
from embedder.runtime import EmbeddingModel  # noqa: E402
from indexer.build import build_index  # noqa: E402
from indexer.calibration import CALIBRATION_KEY, MatchCalibration, match_verdict  # noqa: E402
from indexer.catalog import read_catalog  # noqa: E402
from indexer.distortions import distort  # noqa: E402
from indexer.quality import LEVELS, sample_photos  # noqa: E402
from indexer.settings import IndexerSettings  # noqa: E402
from indexer.store.edge import EdgeStore  # noqa: E402
from tests.support.nonfood_set import nonfood_test_set  # noqa: E402

TEST_SEED = 1234
TWIN_GOAL_POINTS = 2.0  # an int8 twin's verdict rates within this of its fp32 model's


def _verdicts(
    store: EdgeStore, collection: str, model: EmbeddingModel, cal: MatchCalibration, datas: list[bytes]
) -> tuple[list[str], list[float]]:
    matches: list[str] = []
    costs: list[float] = []
    for start in range(0, len(datas), 32):
        for vector in model.embed_images(datas[start : start + 32]):
            hits = store.search(collection, vector, limit=5, model_version=model.version)
            scores = [h.score for h in hits]
            t0 = time.perf_counter()
            verdict = match_verdict(cal, vector, scores)
            costs.append((time.perf_counter() - t0) * 1e6)
            matches.append(verdict.match)
    return matches, costs


def measure(catalog: Path, model_dir: Path, quality_sample: int, work: Path) -> dict[str, object]:
    """Build, then score the disjoint test set; the figures of one model."""
    with EdgeStore(work / model_dir.name) as store:
        summary = build_index(
            catalog, model_dir, store, quality_sample=quality_sample, batch_size=32, progress=False
        )
        info = store.collection_info(summary.collection)
        cal = MatchCalibration.from_metadata(info.extra[CALIBRATION_KEY])
        model = EmbeddingModel(model_dir)
        photos = [(r.id, img) for r, img in read_catalog(catalog).photos()]
        calibrated = {str(img) for _, img in sample_photos(photos, quality_sample)}
        held = [img for _, img in photos if str(img) not in calibrated]
        rng = np.random.default_rng(TEST_SEED)
        food: dict[str, list[bytes]] = {level: [] for level in LEVELS}
        for img in held:
            raw = Path(img).read_bytes()
            for level in LEVELS:
                food[level].append(distort(raw, rng, level))
        nonfood = nonfood_test_set()
        food_matches = {
            level: _verdicts(store, summary.collection, model, cal, food[level]) for level in LEVELS
        }
        nf_matches, nf_costs = _verdicts(store, summary.collection, model, cal, [d for _, d in nonfood])
        unseen = sorted((catalog / "queries").glob("*.jpg"))  # the demo's held-out dishes (not in it)
        unseen_matches, _ = _verdicts(store, summary.collection, model, cal, [p.read_bytes() for p in unseen])
    groups = ["photo" if k.startswith("photo:") else k for k, _ in nonfood]
    missed = Counter(g for g, m in zip(groups, nf_matches, strict=True) if m != "none")
    all_food = [m for level in LEVELS for m in food_matches[level][0]]
    costs = nf_costs + [c for level in LEVELS for c in food_matches[level][1]]
    manifest = read_manifest(model_dir)
    return {
        "model": model_dir.name,
        "version": manifest.version,
        "fp32_version": manifest.source.get("fp32_version", ""),
        "none_below": cal.none_below,
        "strong_from": cal.strong_from,
        "held": len(held),
        "food": {level: float(np.mean([m != "none" for m in food_matches[level][0]])) for level in LEVELS},
        "food_all": float(np.mean([m != "none" for m in all_food])),
        "food_strong": float(np.mean([m == "strong" for m in all_food])),
        "food_queries": len(all_food),
        "nonfood_all": float(np.mean([m == "none" for m in nf_matches])),
        "nonfood_photos": float(
            np.mean([m == "none" for g, m in zip(groups, nf_matches, strict=True) if g == "photo"])
        ),
        "nonfood_generated": float(
            np.mean([m == "none" for g, m in zip(groups, nf_matches, strict=True) if g != "photo"])
        ),
        "nonfood_queries": len(nf_matches),
        "photo_queries": groups.count("photo"),
        "missed": dict(missed),
        "verdict_us": statistics.median(costs),
        "gate": summary.quality.line() if summary.quality else "-",
        "unseen": dict(Counter(unseen_matches)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", type=Path, required=True, help="catalogue (e.g. data/demo)")
    parser.add_argument(
        "--model", type=Path, action="append", required=True, help="model folder (repeatable)"
    )
    parser.add_argument("--quality-sample", type=int, default=IndexerSettings().quality_sample)
    args = parser.parse_args()
    configure_logging("WARNING")
    rows = []
    with tempfile.TemporaryDirectory(prefix="recipelens-verdict-") as tmp:
        for i, model_dir in enumerate(args.model, 1):
            print(f"[{i}/{len(args.model)}] {model_dir.name}: building and scoring …", flush=True)
            rows.append(measure(args.catalog, model_dir, args.quality_sample, Path(tmp)))
    print()
    print(
        "| model | food not none: moderate | strong | all (goal ≥ 95 %) | food strong | "
        "non-food none: photos | generated | all (goal ≥ 90 %) | verdict p50 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        food = r["food"]
        assert isinstance(food, dict)
        print(
            f"| {r['model']} | {100 * food['moderate']:.1f} | {100 * food['strong']:.1f} | "
            f"{100 * float(r['food_all']):.1f} ({r['food_queries']}) | {100 * float(r['food_strong']):.1f} | "
            f"{100 * float(r['nonfood_photos']):.1f} ({r['photo_queries']}) | "
            f"{100 * float(r['nonfood_generated']):.1f} | "
            f"{100 * float(r['nonfood_all']):.1f} ({r['nonfood_queries']}) | "
            f"{float(r['verdict_us']):.0f} µs |"
        )
    for r in rows:
        print(
            f"{r['model']}: none below {float(r['none_below']):.3f}, "
            f"strong from {float(r['strong_from']):.3f}; "
            f"non-food not none by kind {r['missed'] or '{}'}; food photos of dishes not in the catalogue: "
            f"{r['unseen'] or '-'}; build's own figures: {r['gate']}"
        )
    for r in rows:
        fp32 = next((f for f in rows if f is not r and f["version"] == r["fp32_version"]), None)
        if fp32 is None:
            continue
        diffs = [100 * (float(r[key]) - float(fp32[key])) for key in ("food_all", "nonfood_all")]
        within = all(abs(d) <= TWIN_GOAL_POINTS for d in diffs)
        print(
            f"{r['model']} − {fp32['model']}: food not none {diffs[0]:+.1f} points, non-food none "
            f"{diffs[1]:+.1f} points (goal within {TWIN_GOAL_POINTS:g}: {'met' if within else 'NOT met'})"
        )
    ok = all(
        float(r["food_all"]) >= 0.95 and float(r["nonfood_all"]) >= 0.90 and int(r["nonfood_queries"]) >= 60
        for r in rows
    )
    print(
        f"summary: {len(rows)} model(s); acceptance (≥ 95 % food not none, ≥ 90 % of ≥ 60 non-food none): "
        f"{'met' if ok else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
