"""Evaluation figures on hand-made embeddings, the query distortion, reports and pictures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedder.preprocess import preprocess
from tests.support.imagegen import encode, synthetic_photo
from training.evaluate import (
    bootstrap_interval,
    category_hits,
    category_precision,
    distort,
    instance_retrieval,
    make_queries,
    paired_delta,
    recipe_ranks,
    score,
)


def _angles(degrees: list[float]) -> np.ndarray:
    rad = np.radians(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


# Gallery: recipe 0 has photos at 0° and 100°, recipe 1 at 20°, recipe 2 at 40°, recipe 3 at 180°.
GALLERY = _angles([0, 100, 20, 40, 180])
GALLERY_RECIPE = np.array([0, 0, 1, 2, 3])


def test_recall_ranks_recipes_by_their_best_photo() -> None:
    # Query of recipe 0 at 95°: its 100° photo is nearest → rank 1.
    # Query of recipe 2 at 10°: 0° (r0) and 20° (r1) tie at 10°, 40° is 30° away → recipe 2 third.
    # Query of recipe 3 at 60°: r2 (20° away), r0 and r1 (40°) all beat 180° (120°) → recipe 3 fourth.
    queries = _angles([95, 10, 60])
    recall, mean_ap = instance_retrieval(queries, np.array([0, 2, 3]), GALLERY, GALLERY_RECIPE)
    assert recall == {1: pytest.approx(1 / 3), 5: 1.0, 10: 1.0}
    # mAP over the photo ranking, computed the long way.
    sims = queries @ GALLERY.T
    expected = []
    for q, recipe in enumerate([0, 2, 3]):
        order = np.argsort(-sims[q], kind="stable")
        rel = GALLERY_RECIPE[order] == recipe
        precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        expected.append((precision * rel).sum() / rel.sum())
    assert mean_ap == pytest.approx(np.mean(expected))
    assert expected[0] < 1.0  # recipe 0's second photo is not second: mAP differs from recall@1


def test_category_precision_excludes_the_query_recipe() -> None:
    categories = np.array([5, 5, 5, 7, 7])
    precision = category_precision(
        GALLERY[:1],
        query_recipe=GALLERY_RECIPE[:1],
        query_category=categories[:1],
        gallery=GALLERY,
        gallery_recipe=GALLERY_RECIPE,
        gallery_category=categories,
    )
    # Query 0° (r0) without r0's photos: 20° (cat 5), 40° (7), 180° (7) → P@1 = 1, P@5 over 3 + padding.
    assert precision[1] == 1.0
    assert precision[5] == pytest.approx(1 / 5)  # -inf entries rank last and never count as hits


def test_score_bundles_all_figures() -> None:
    result = score(
        queries=_angles([95, 10]),
        query_recipe=np.array([0, 2]),
        gallery=GALLERY,
        gallery_recipe=GALLERY_RECIPE,
        gallery_category=np.array([0, 0, 1, 1, -1]),
        held_out=np.array([2, 3, 4]),
    )
    flat = result.flat()
    assert set(flat) == {"recall@1", "recall@5", "recall@10", "map@10", "category_p@1", "category_p@5"}
    assert result.queries == 2 and result.category_queries == 2  # the uncategorised photo is skipped
    no_cats = score(
        queries=_angles([95]),
        query_recipe=np.array([0]),
        gallery=GALLERY,
        gallery_recipe=GALLERY_RECIPE,
        gallery_category=None,
        held_out=np.array([0]),
    )
    assert no_cats.category_precision is None and "category_p@1" not in no_cats.flat()


def test_query_recipe_must_be_in_the_gallery() -> None:
    with pytest.raises(ValueError, match="must have a photo in the gallery"):
        instance_retrieval(_angles([0]), np.array([9]), GALLERY, GALLERY_RECIPE)


def test_distort_is_a_seeded_realistic_query(tmp_path: Path) -> None:
    original = encode(synthetic_photo(3, size=(400, 300)), "PNG")
    a = distort(original, np.random.default_rng(0))
    b = distort(original, np.random.default_rng(0))
    c = distort(original, np.random.default_rng(1))
    assert a == b and a != c
    with Image.open(io.BytesIO(a)) as img:
        assert img.format == "JPEG"
        w, h = img.size
    assert 0.69 * 400 <= w <= 0.91 * 400 and 0.69 * 300 <= h <= 0.91 * 300
    clean, query = preprocess(original).astype(float), preprocess(a).astype(float)
    assert 3 < np.abs(clean - query).mean() < 80  # changed, but still the same picture more or less
    path = tmp_path / "p.png"
    path.write_bytes(original)
    arrays, origin = make_queries([path, path], per_photo=2, seed=4)
    assert arrays.shape == (4, 224, 224, 3) and arrays.dtype == np.uint8 and origin.tolist() == [0, 0, 1, 1]
    strong, _ = make_queries([path, path], per_photo=2, seed=4, level="strong")
    # The strong level moves the photo further than the moderate one.
    assert np.abs(strong.astype(float) - clean).mean() > np.abs(arrays.astype(float) - clean).mean()
    with pytest.raises(ValueError, match="unknown distortion level 'extreme'"):
        make_queries([path], per_photo=1, seed=0, level="extreme")


def test_bootstrap_interval_resamples_whole_photos() -> None:
    groups = np.repeat(np.arange(20), 4)  # 20 photos × 4 queries
    assert bootstrap_interval(np.ones(80), groups) == (1.0, 1.0)
    # Half the photos always right, half always wrong: the interval straddles 0.5 and is wide,
    # wider than if the 80 queries were independent of each other.
    values = (groups < 10).astype(float)
    low, high = bootstrap_interval(values, groups, seed=1)
    low_iid, high_iid = bootstrap_interval(values, np.arange(80), seed=1)
    assert low < 0.5 < high and high - low > 0.3
    assert high - low > high_iid - low_iid


def test_paired_delta_counts_and_verdict() -> None:
    groups = np.repeat(np.arange(30), 4)
    raw = np.ones(120, bool)
    raw[::4] = False  # raw misses the first query of every photo
    better = paired_delta(np.ones(120, bool), raw, groups, metric="recall@1", model="m", distortion="strong")
    assert (better.better, better.worse, better.queries, better.photos) == (30, 0, 120, 30)
    assert better.delta == pytest.approx(0.25) and better.low > 0 and better.verdict == "better"
    assert better.model_value == 1.0 and better.reference_value == pytest.approx(0.75)
    # Three photos gained and two lost: no clear difference.
    model = raw.copy()
    model[[0, 4, 8]] = True
    model[[13, 17]] = False
    mixed = paired_delta(model, raw, groups, metric="recall@1", model="m")
    assert (mixed.better, mixed.worse) == (3, 2)
    assert mixed.low < 0 < mixed.high and mixed.verdict == "no clear difference"
    worse = paired_delta(raw, np.ones(120, bool), groups, metric="recall@1", model="m")
    assert worse.verdict == "worse"
    with pytest.raises(ValueError, match="one value per query"):
        paired_delta(np.ones(3), np.ones(4), np.arange(3), metric="recall@1", model="m")


def test_per_query_figures_agree_with_the_means() -> None:
    queries, recipes = _angles([95, 10, 60]), np.array([0, 2, 3])
    ranks = recipe_ranks(queries, recipes, GALLERY, GALLERY_RECIPE)
    assert ranks.tolist() == [0, 2, 3]
    recall, _ = instance_retrieval(queries, recipes, GALLERY, GALLERY_RECIPE)
    assert recall[1] == pytest.approx(np.mean(ranks == 0))
    categories = np.array([5, 5, 5, 7, 7])
    held = np.array([0, 2, 3])
    shares = category_hits(GALLERY, GALLERY_RECIPE, categories, held, k=5)
    expected = category_precision(
        GALLERY[held],
        query_recipe=GALLERY_RECIPE[held],
        query_category=categories[held],
        gallery=GALLERY,
        gallery_recipe=GALLERY_RECIPE,
        gallery_category=categories,
    )
    assert shares.mean() == pytest.approx(expected[5])
    result = score(
        queries=queries,
        query_recipe=recipes,
        gallery=GALLERY,
        gallery_recipe=GALLERY_RECIPE,
        gallery_category=None,
        held_out=held,
        query_groups=np.array([0, 1, 2]),
    )
    assert result.recall_at_1_ci is not None
    low, high = result.recall_at_1_ci
    assert low <= result.recall[1] <= high


def test_category_precision_asks_with_query_vectors_where_the_gallery_differs() -> None:
    """With gallery sizes a photo's gallery vector is not its query vector: the clean held-out photos ask
    as queries (``clean``), against the gallery vectors."""
    gallery = np.array([[1.0, 0.0, 0.1], [0.0, 1.0, 0.0], [0.9, 0.0, 0.3], [0.0, 0.0, 1.0]], np.float32)
    clean = gallery.copy()
    clean[0] = [0.1, 1.0, 0.0]  # photo 0 as a query is nearest photo 1 (its category), as a gallery photo 2
    recipe, category, held_out = np.arange(4), np.array([0, 0, 1, 1]), np.array([0])
    as_gallery = score(
        queries=clean[:1], query_recipe=recipe[:1], gallery=gallery, gallery_recipe=recipe,
        gallery_category=category, held_out=held_out,
    )  # fmt: skip
    as_queries = score(
        queries=clean[:1], query_recipe=recipe[:1], gallery=gallery, gallery_recipe=recipe,
        gallery_category=category, held_out=held_out, clean=clean,
    )  # fmt: skip
    assert as_gallery.category_precision == {1: 0.0, 5: 0.25}
    assert as_queries.category_precision == {1: 1.0, 5: 0.25}
