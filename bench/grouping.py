"""What one hit per recipe and the match verdict add to a search: p50, side by side with a plain search.

A Qdrant Edge collection of ``--points`` synthetic 512-D unit vectors, ``--per-recipe`` photos per
recipe (each photo its recipe's centre plus noise, so a recipe's photos sit together as real ones do),
payloads shaped like the demo catalogue's, and a match calibration with a bank the size a build stores.
In interleaved rounds, the same queries (noisy copies of catalogue photos) go to

* ``EdgeStore.search`` — the top 5 photos, payloads included (what a search cost before grouping), and
* ``EdgeStore.search_recipes`` (the top 5 distinct recipes: over-fetch, collapse, payloads of the page)
  followed by ``match_verdict`` on their scores — what the gateway runs per search;

the difference of the two medians is the cost of grouping and of the verdict together (goal ≤ 1 ms at
13.5k points). ``bench/search.py`` prints the same row beside its own.

    python bench/grouping.py                        # 13,500 points, 4,500 recipes
    python bench/grouping.py --points 2000 --repeats 100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexer.calibration import MatchCalibration, match_verdict  # noqa: E402
from indexer.quality import BANK_SIZE  # noqa: E402
from indexer.store.base import RecipePoint, point_id  # noqa: E402
from indexer.store.edge import EdgeStore  # noqa: E402

GOAL = "≤ 1 ms"
POINTS = 13_500
PER_RECIPE = 3
DIM = 512
TOP_K = 5
VERSION = "bench-grouping"


@dataclass(frozen=True)
class GroupingCost:
    """Medians (ms) of one plain search and of one distinct-recipe search + verdict, same queries."""

    points: int
    plain_ms: float
    grouped_ms: float  # search_recipes + match_verdict
    verdict_ms: float  # match_verdict alone

    @property
    def extra_ms(self) -> float:
        """What grouping and the verdict add to a search: the difference of the two medians."""
        return self.grouped_ms - self.plain_ms

    def cells(self) -> tuple[str, str]:
        """The row's name and value, also for a table of other measures (``bench/search.py``)."""
        return (
            f"distinct recipes + verdict vs plain search, p50 at {self.points:,} points",
            f"{self.extra_ms:.2f} ms",
        )

    def row(self) -> str:
        """The Markdown row: the extra p50, the two medians it is the difference of, the goal."""
        name, extra = self.cells()
        medians = (
            f"{self.grouped_ms:.2f} − {self.plain_ms:.2f} ms (verdict alone {self.verdict_ms * 1000:.0f} µs)"
        )
        return f"| {name} | {extra} | {medians} | {GOAL} |"


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def _payload(recipe: int, photo: int, rng: np.random.Generator) -> dict[str, object]:
    """About the size of a demo catalogue payload (title, ingredients, instructions, keywords)."""
    words = [f"ingredient{int(w)}" for w in rng.integers(0, 500, 8)]
    return {
        "recipe_id": f"r{recipe}",
        "title": f"Synthetic dish {recipe}",
        "category": f"group{recipe % 20}",
        "ingredients": [f"1 cup {w}" for w in words],
        "cleaned_ingredients": words,
        "ingredient_keywords": words,
        "instructions": " ".join(["Stir the pot and simmer gently until done."] * 12),
        "image": f"images/r{recipe}/{photo}.jpg",
        "source_hash": f"{recipe:08x}{photo:08x}",
    }


def _calibration(rng: np.random.Generator) -> MatchCalibration:
    """Thresholds do not change the cost; the bank has the size a build stores."""
    return MatchCalibration(VERSION, 0.55, 0.8, _unit(rng.standard_normal((BANK_SIZE, DIM))), samples=100)


def grouping_cost(
    points: int = POINTS, per_recipe: int = PER_RECIPE, repeats: int = 300, seed: int = 0
) -> GroupingCost:
    """Build the synthetic collection in a temporary folder and measure (see the module docstring)."""
    rng = np.random.default_rng(seed)
    recipes = max(1, points // per_recipe)
    centres = _unit(rng.standard_normal((recipes, DIM)))
    owners = np.arange(points) % recipes
    vectors = _unit(centres[owners] + 0.6 * rng.standard_normal((points, DIM)) / np.sqrt(DIM))
    picked = rng.integers(0, points, 64)
    queries = _unit(vectors[picked] + 0.8 * rng.standard_normal((len(picked), DIM)) / np.sqrt(DIM))
    calibration = _calibration(rng)
    plain, grouped, verdict = [], [], []
    with tempfile.TemporaryDirectory(prefix="recipelens-grouping-") as work, EdgeStore(Path(work)) as store:
        store.create_collection("g", dimension=DIM, model_version=VERSION)
        for start in range(0, points, 1024):
            batch = [
                RecipePoint(point_id(f"r{owners[i]}", f"{i}.jpg"), vectors[i], _payload(owners[i], i, rng))
                for i in range(start, min(points, start + 1024))
            ]
            store.upsert("g", batch, model_version=VERSION)
        store.mark_complete("g")  # optimised, then read lock-free as the gateway reads it
        for i in range(repeats + 20):  # the first 20: warm-up
            query = queries[i % len(queries)]
            t0 = time.perf_counter()
            store.search("g", query, limit=TOP_K, model_version=VERSION)
            t1 = time.perf_counter()
            found = store.search_recipes("g", query, limit=TOP_K, model_version=VERSION)
            t2 = time.perf_counter()
            match_verdict(calibration, query, [h.score for h in found.hits])
            t3 = time.perf_counter()
            if i >= 20:
                plain.append((t1 - t0) * 1000)
                grouped.append((t3 - t1) * 1000)
                verdict.append((t3 - t2) * 1000)
    med = statistics.median
    return GroupingCost(points, med(plain), med(grouped), med(verdict))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=POINTS, help="photos in the collection")
    parser.add_argument("--per-recipe", type=int, default=PER_RECIPE, help="photos per recipe")
    parser.add_argument("--repeats", type=int, default=300, help="searches of each kind")
    args = parser.parse_args()
    if args.points < 1 or args.per_recipe < 1 or args.repeats < 1:
        parser.error("--points, --per-recipe and --repeats must be at least 1")
    cost = grouping_cost(args.points, args.per_recipe, args.repeats)
    shape = f"{cost.points:,} points, {args.per_recipe} per recipe, {DIM}-D, top {TOP_K}"
    print(f"{shape}, {args.repeats} searches of each kind")
    print()
    print("| measure | extra p50 | search_recipes + verdict − search (p50) | goal |")
    print("|---|---:|---:|---:|")
    print(cost.row())


if __name__ == "__main__":
    main()
