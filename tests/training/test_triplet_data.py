"""Photos, augmentation and triplet sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from indexer.catalog import Recipe
from tests.support.imagegen import encode, synthetic_photo
from training.data import (
    NO_CATEGORY,
    PhotoSet,
    TripletSampler,
    augment,
    feature_triplets,
    load_photos,
    render_views,
)
from training.presets import AugmentConfig

IDENTITY = AugmentConfig(
    rotation_degrees=0,
    brightness=(1, 1),
    horizontal_flip=False,
    crop_scale=(1, 1),
    crop_ratio=(1, 1),
    contrast=(1, 1),
    saturation=(1, 1),
    jpeg_quality=None,
)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(synthetic_photo(5, size=(64, 64)), dtype=np.uint8)


def _photo_set(photos_per_recipe: list[int], categories: list[int] | None = None) -> PhotoSet:
    owner = np.repeat(np.arange(len(photos_per_recipe)), photos_per_recipe).astype(np.int32)
    n = len(owner)
    cats = categories if categories is not None else [NO_CATEGORY] * len(photos_per_recipe)
    return PhotoSet(
        images=np.zeros((n, 4, 4, 3), np.uint8),
        photo_recipe=owner,
        photo_hash=[f"h{i}" for i in range(n)],
        files=[Path(f"p{i}.jpg") for i in range(n)],
        recipe_ids=[f"r{i}" for i in range(len(photos_per_recipe))],
        recipe_category=np.asarray(cats, np.int32),
        categories=[f"c{c}" for c in sorted(set(cats)) if c >= 0],
    )


def test_identity_augmentation_returns_the_photo(photo: np.ndarray) -> None:
    out = augment(tf.constant(photo), tf.constant([1, 2]), IDENTITY).numpy()
    np.testing.assert_array_equal(out, photo)


def test_flip_mirrors_and_views_are_seeded(photo: np.ndarray) -> None:
    flip_only = IDENTITY.model_copy(update={"horizontal_flip": True})
    outs = [augment(tf.constant(photo), tf.constant([s, 0]), flip_only).numpy() for s in range(8)]
    assert any(np.array_equal(o, photo[:, ::-1]) for o in outs)
    assert any(np.array_equal(o, photo) for o in outs)
    config = AugmentConfig()
    a = augment(tf.constant(photo), tf.constant([3, 4]), config).numpy()
    b = augment(tf.constant(photo), tf.constant([3, 4]), config).numpy()
    c = augment(tf.constant(photo), tf.constant([3, 5]), config).numpy()
    assert a.dtype == np.uint8 and a.shape == photo.shape
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 3
    # Brightness alone stays within ±10 % of each pixel.
    bright = IDENTITY.model_copy(update={"brightness": (0.9, 1.1)})
    d = augment(tf.constant(photo), tf.constant([9, 9]), bright).numpy().astype(float)
    mid = (photo > 60) & (photo < 220)  # away from rounding noise and clipping
    ratio = d[mid] / photo[mid]
    assert ratio.min() >= 0.89 and ratio.max() <= 1.11 and np.ptp(ratio) < 0.03


def test_render_views_keeps_view_zero_clean(photo: np.ndarray) -> None:
    images = tf.constant(np.stack([photo, photo[::-1]]))
    out = render_views(images, tf.constant([[1, 0]]), tf.constant([[0, 3]]), 0, AugmentConfig()).numpy()
    assert out.shape == (1, 2, 64, 64, 3)
    np.testing.assert_array_equal(out[0, 0], photo[::-1])
    assert not np.array_equal(out[0, 1], photo)


def test_one_photo_recipes_get_two_different_views() -> None:
    photos = _photo_set([1] * 10)
    sampler = TripletSampler(photos, range(10), views=4, batch_recipes=6, seed=0)
    for _ in range(20):
        b = sampler.batch()
        owners = photos.photo_recipe[b.photos]
        assert len(set(owners[:, 0])) == 6  # P distinct recipes
        assert (owners[:, 0] == owners[:, 1]).all() and (owners[:, 0] != owners[:, 2]).all()
        assert (b.photos[:, 0] == b.photos[:, 1]).all() and (b.views[:, 0] != b.views[:, 1]).all()
        assert set(owners[:, 2]) <= set(owners[:, 0])  # negatives come from the batch's recipes
        assert (b.labels[:, 0] == owners[:, 0]).all() and (b.labels[:, 2] == owners[:, 2]).all()


def test_rotation_fill_mirrors_or_leaves_black_corners(photo: np.ndarray) -> None:
    tilt = IDENTITY.model_copy(update={"rotation_degrees": 30.0})
    bright = np.clip(photo.astype(int) + 40, 40, 255).astype(np.uint8)  # no black pixel of its own
    for fill, corners_black in (("reflect", False), ("constant", True)):
        config = tilt.model_copy(update={"fill": fill})
        views = [augment(tf.constant(bright), tf.constant([s, 1]), config).numpy() for s in range(6)]
        tilted = [v for v in views if not np.array_equal(v, bright)]
        assert tilted
        black = [bool((v[0, 0] == 0).all() or (v[0, -1] == 0).all()) for v in tilted]
        assert any(black) if corners_black else not any(black)


def test_query_gallery_triplets_look_like_a_search() -> None:
    photos = _photo_set([1] * 8 + [2] * 2)
    sampler = TripletSampler(photos, range(10), views=5, batch_recipes=6, query_gallery=True, seed=3)
    for _ in range(20):
        b = sampler.batch()
        assert (b.views[:, 0] >= 1).all()  # the anchor is an augmented view: the query
        assert (b.views[:, 1:] == 0).all()  # positive and negative are clean: the gallery
        owners = photos.photo_recipe[b.photos]
        assert (owners[:, 0] == owners[:, 1]).all() and (owners[:, 0] != owners[:, 2]).all()
    for batch in sampler.fixed_batches(1):  # validation keeps its clean anchors
        assert (batch.views[:, 0] == 0).all()


def test_several_anchors_per_recipe_share_their_clean_positive() -> None:
    photos = _photo_set([1] * 12)
    sampler = TripletSampler(
        photos, range(12), views=8, batch_recipes=6, query_gallery=True, anchors_per_recipe=2, seed=4
    )
    distinct_views = 0
    for _ in range(20):
        b = sampler.batch()
        assert b.photos.shape == (6, 3)
        owners = photos.photo_recipe[b.photos]
        # 3 recipes, 2 rows each: augmented anchors of one recipe, its clean photo as the positive.
        assert len(set(owners[:, 0].tolist())) == 3
        assert (np.bincount(owners[:, 0], minlength=12) % 2 == 0).all()
        assert (owners[:, 0] == owners[:, 1]).all() and (owners[:, 0] != owners[:, 2]).all()
        assert (b.views[:, 0] >= 1).all() and (b.views[:, 1:] == 0).all()
        assert (b.labels[:, 0] != b.labels[:, 2]).all()  # no row's negative is its own recipe
        distinct_views += int(b.views[0, 0] != b.views[1, 0])
    assert distinct_views > 10  # a recipe's rows are different views of it, not copies
    # Validation batches still hold one row per recipe; K = 1 draws P distinct recipes.
    anchors = np.concatenate([b.photos[:, 0] for b in sampler.fixed_batches(1)])
    assert sorted(anchors.tolist()) == list(range(12))
    single = TripletSampler(photos, range(12), views=8, batch_recipes=6, seed=4).batch()
    assert len(set(photos.photo_recipe[single.photos[:, 0]].tolist())) == 6


def test_several_photo_recipes_pair_different_photos() -> None:
    photos = _photo_set([3, 2, 4, 2])
    sampler = TripletSampler(photos, range(4), views=3, batch_recipes=4, seed=1)
    for _ in range(20):
        b = sampler.batch()
        assert (b.photos[:, 0] != b.photos[:, 1]).all()
        assert (photos.photo_recipe[b.photos[:, 0]] == photos.photo_recipe[b.photos[:, 1]]).all()


def test_label_aware_positives_share_the_category() -> None:
    photos = _photo_set([1] * 12, categories=[i % 3 for i in range(12)])
    sampler = TripletSampler(photos, range(12), views=2, batch_recipes=6, label_aware=True, seed=2)
    crossed = 0
    for _ in range(20):
        b = sampler.batch()
        cats = photos.recipe_category[photos.photo_recipe[b.photos]]
        assert (cats[:, 0] == cats[:, 1]).all() and (cats[:, 0] != cats[:, 2]).all()
        assert (b.labels == cats).all()
        crossed += int((photos.photo_recipe[b.photos[:, 0]] != photos.photo_recipe[b.photos[:, 1]]).sum())
    assert crossed > 0  # positives really come from other recipes of the category


def test_validation_batches_are_fixed_and_cover_every_recipe() -> None:
    photos = _photo_set([1] * 7)
    sampler = TripletSampler(photos, range(7), views=3, batch_recipes=3, seed=0)
    first, again = sampler.fixed_batches(5), sampler.fixed_batches(5)
    assert [b.photos.tolist() for b in first] == [b.photos.tolist() for b in again]
    anchors = np.concatenate([b.photos[:, 0] for b in first])
    assert sorted(anchors.tolist()) == list(range(7))
    assert all((b.views[:, 0] == 0).all() for b in first)  # anchors are the clean photos


def test_too_few_recipes_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least 2 recipes"):
        TripletSampler(_photo_set([2]), [0], views=2, batch_recipes=4)


def test_feature_triplets_look_up_the_cache() -> None:
    photos = _photo_set([1, 2, 1, 1])
    sampler = TripletSampler(photos, range(4), views=3, batch_recipes=4, seed=0)
    cache = np.random.default_rng(0).normal(size=(len(photos), 3, 6)).astype(np.float32)
    ds = feature_triplets(sampler, cache, training=False, seed=9)
    (x, y), batch = next(iter(ds)), sampler.fixed_batches(9)[0]
    np.testing.assert_array_equal(x.numpy(), cache[batch.photos, batch.views])
    np.testing.assert_array_equal(y.numpy(), batch.labels)
    x2, _ = next(iter(feature_triplets(sampler, cache, training=True)))
    assert x2.shape == (4, 3, 6)


def test_load_photos_reports_bad_and_photo_less_recipes(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    good.write_bytes(encode(synthetic_photo(1, size=(90, 70)), "JPEG"))
    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(encode(synthetic_photo(2, size=(96, 96)).resize((12, 12)), "PNG"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")

    def recipe(rid: str, images: list[Path], category: str) -> Recipe:
        return Recipe(rid, rid, [], [], "", list(images), category)

    photos, bad = load_photos(
        [
            recipe("a", [good, broken], "Soup"),
            recipe("b", [tiny, tmp_path / "missing.jpg"], "Soup"),
            recipe("c", [good], ""),
        ],
        progress=False,
    )
    assert photos.recipe_ids == ["a", "c"] and len(photos) == 2
    assert photos.images.shape == (2, 224, 224, 3) and photos.images.dtype == np.uint8
    assert photos.recipe_category.tolist() == [0, NO_CATEGORY] and photos.categories == ["Soup"]
    reasons = {(b.recipe_id, Path(b.file).name if b.file else ""): b.reason for b in bad}
    assert set(reasons) == {("a", "broken.jpg"), ("b", "tiny.png"), ("b", "missing.jpg"), ("b", "")}
    assert "too small" in reasons[("b", "tiny.png")]
    assert "no usable photo" in reasons[("b", "")]
    assert photos.photo_hash[0] == photos.photo_hash[1]  # the same file twice: a duplicate the split sees
