"""Photos in memory, random views of them, and triplet batches as ``tf.data`` pipelines.

Every photo goes through :func:`embedder.preprocess.preprocess_file` (the one preprocessing function)
exactly once; augmentation then works on its 224×224 uint8 result, inside the TensorFlow graph:

* random resized crop (area ``crop_scale``, aspect ``crop_ratio``), rotation ±``rotation_degrees``
  and horizontal flip, composed into one affine transform and sampled once (bilinear, reflected edges);
* brightness × U(0.9, 1.1); optionally contrast and saturation jitter and JPEG re-encoding.

Triplets. A batch is P rows of (anchor, positive, negative) drawn from P *distinct* recipes, so the
3P embeddings of a batch hold about K = 3 views of each of its P recipes — what the online miners in
:mod:`training.mining` search. Anchor and positive come from the same recipe: two different photos when
it has several, two different augmented views of its one photo otherwise; in label-aware mode the
positive is any photo of a recipe of the same category and labels are categories. The negative is a
photo of another recipe of the batch (of another category in label-aware mode). With
``query_gallery`` the training rows look like a search instead: the anchor is an augmented view (a
phone photo), positive and negative are clean catalogue photos (view 0), as in the gallery.

A slot is addressed as (photo index, view), the view number seeding its augmentation: phase 1 looks
it up in its feature cache, phase 2 in its activation cache (:mod:`training.activation_cache`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from embedder.preprocess import IMAGE_SIZE, ImageDecodeError
from indexer.catalog import BadItem, Recipe, load_photo
from training.split import content_hash

if TYPE_CHECKING:
    from training.presets import AugmentConfig

log = logging.getLogger(__name__)

NO_CATEGORY = -1


@dataclass(frozen=True)
class PhotoSet:
    """Decoded catalogue photos: ``images[i]`` belongs to recipe ``recipe_ids[photo_recipe[i]]``."""

    images: np.ndarray  # (N, S, S, 3) uint8, the output of preprocess()
    photo_recipe: np.ndarray  # (N,) int32 index into recipe_ids
    photo_hash: list[str]  # SHA-256 of each photo file's bytes
    files: list[Path]
    recipe_ids: list[str]
    recipe_category: np.ndarray  # (R,) int32 index into categories, NO_CATEGORY when unknown
    categories: list[str]
    _by_recipe: list[np.ndarray] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        order = np.argsort(self.photo_recipe, kind="stable")
        bounds = np.searchsorted(self.photo_recipe[order], np.arange(len(self.recipe_ids) + 1))
        self._by_recipe.extend(order[bounds[i] : bounds[i + 1]] for i in range(len(self.recipe_ids)))

    def __len__(self) -> int:
        return len(self.images)

    def photos_of(self, recipe: int) -> np.ndarray:
        """Photo indices of recipe number ``recipe``."""
        return self._by_recipe[recipe]

    def hashes_by_recipe(self) -> dict[str, list[str]]:
        """recipe id → content hashes of its photos (what the split groups duplicates by)."""
        return {rid: [self.photo_hash[p] for p in self.photos_of(i)] for i, rid in enumerate(self.recipe_ids)}

    def recipe_index(self) -> dict[str, int]:
        return {rid: i for i, rid in enumerate(self.recipe_ids)}

    def photo_categories(self) -> np.ndarray:
        return self.recipe_category[self.photo_recipe]

    @property
    def has_categories(self) -> bool:
        return bool((self.recipe_category != NO_CATEGORY).any())


def load_photos(
    recipes: Sequence[Recipe], *, size: int = IMAGE_SIZE, progress: bool = True
) -> tuple[PhotoSet, list[BadItem]]:
    """Preprocess every photo of ``recipes``; bad photos and photo-less recipes are reported, not fatal."""
    images: list[np.ndarray] = []
    photo_recipe: list[int] = []
    hashes: list[str] = []
    files: list[Path] = []
    recipe_ids: list[str] = []
    recipe_category: list[int] = []
    categories: dict[str, int] = {}
    bad: list[BadItem] = []
    total = sum(len(r.images) for r in recipes)
    with tqdm(total=total, desc="decode photos", unit="photo", disable=not progress) as bar:
        for recipe in recipes:
            usable: list[tuple[np.ndarray, str, Path]] = []
            for path in recipe.images:
                bar.update(1)
                try:
                    data, image = load_photo(path, size=size)  # the indexer's checks: decodable, not tiny
                    usable.append((image, content_hash(data), Path(path)))
                except ImageDecodeError as exc:
                    bad.append(BadItem(recipe.id, str(path), str(exc)))
            if not usable:
                bad.append(BadItem(recipe.id, "", "recipe has no usable photo; left out of training"))
                continue
            index = len(recipe_ids)
            recipe_ids.append(recipe.id)
            category = (recipe.category or "").strip()
            recipe_category.append(
                categories.setdefault(category, len(categories)) if category else NO_CATEGORY
            )
            for image, digest, path in usable:
                images.append(image)
                photo_recipe.append(index)
                hashes.append(digest)
                files.append(path)
    photos = PhotoSet(
        images=np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        photo_recipe=np.asarray(photo_recipe, np.int32),
        photo_hash=hashes,
        files=files,
        recipe_ids=recipe_ids,
        recipe_category=np.asarray(recipe_category, np.int32),
        categories=list(categories),
    )
    log.info(
        "decoded %d photos of %d recipes (%d categories); %d problem(s) reported",
        len(photos),
        len(recipe_ids),
        len(categories),
        len(bad),
    )
    return photos, bad


# ---------------------------------------------------------------------------------------------------------
# Augmentation (TensorFlow graph, stateless: the same seed always gives the same view)


def _uniform(seed: tf.Tensor, salt: int, low: float, high: float) -> tf.Tensor:
    s = tf.random.experimental.stateless_fold_in(seed, salt)
    return tf.random.stateless_uniform((), s, minval=low, maxval=high, dtype=tf.float32)


def augment(image: tf.Tensor, seed: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """One random view of a preprocessed (S, S, 3) uint8 photo; ``seed`` is a (2,) int tensor."""
    seed = tf.cast(seed, tf.int64)
    size = tf.cast(tf.shape(image)[0], tf.float32)
    # Random resized crop: area fraction and log-uniform aspect ratio, clipped to the photo.
    area = _uniform(seed, 1, *config.crop_scale)
    log_ratio = _uniform(seed, 2, math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1]))
    ratio = tf.exp(log_ratio)
    w = tf.minimum(size * tf.sqrt(area * ratio), size)
    h = tf.minimum(size * tf.sqrt(area / ratio), size)
    cx = w / 2 + _uniform(seed, 3, 0.0, 1.0) * (size - w)
    cy = h / 2 + _uniform(seed, 4, 0.0, 1.0) * (size - h)
    theta = _uniform(seed, 5, -1.0, 1.0) * (config.rotation_degrees * math.pi / 180.0)
    flip = (
        tf.where(_uniform(seed, 6, 0.0, 1.0) < 0.5, -1.0, 1.0) if config.horizontal_flip else tf.constant(1.0)
    )
    # Output pixel (x, y) → offset from the crop centre (flipped, scaled to the crop) → rotated → input.
    c0 = 0.5 / size - 0.5
    cos, sin = tf.cos(theta), tf.sin(theta)
    fw, fh = flip * w, h
    transform = tf.stack(
        [
            cos * fw / size,
            -sin * fh / size,
            cos * fw * c0 - sin * fh * c0 + cx - 0.5,
            sin * fw / size,
            cos * fh / size,
            sin * fw * c0 + cos * fh * c0 + cy - 0.5,
            0.0,
            0.0,
        ]
    )
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None],
        transforms=transform[None],
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=config.fill.upper(),
    )[0]
    out = warped * _uniform(seed, 7, *config.brightness)
    if config.contrast != (1.0, 1.0):
        mean = tf.reduce_mean(out, axis=[0, 1, 2], keepdims=True)
        out = mean + (out - mean) * _uniform(seed, 8, *config.contrast)
    if config.saturation != (1.0, 1.0):
        grey = tf.reduce_mean(out, axis=-1, keepdims=True)
        out = grey + (out - grey) * _uniform(seed, 9, *config.saturation)
    out = tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
    if config.jpeg_quality is not None:
        low, high = config.jpeg_quality
        out = tf.image.stateless_random_jpeg_quality(
            out, low, high + 1, tf.random.experimental.stateless_fold_in(seed, 10)
        )
    return tf.ensure_shape(out, image.shape)


def view_seed(base_seed: int, photo: tf.Tensor, view: tf.Tensor) -> tf.Tensor:
    """The augmentation seed of view ``view`` of photo ``photo`` (view 0 is the clean photo)."""
    return tf.stack([tf.cast(photo, tf.int64) + (base_seed % 1_000_003) * 1_000_003, tf.cast(view, tf.int64)])


def render_views(
    images: tf.Tensor, photos: tf.Tensor, views: tf.Tensor, base_seed: int, config: AugmentConfig
) -> tf.Tensor:
    """uint8 views for any-shaped int tensors ``photos``/``views``; view 0 is the photo itself."""
    flat_p, flat_v = tf.reshape(photos, (-1,)), tf.reshape(views, (-1,))

    def one(pv: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        p, v = pv
        img = tf.gather(images, p)
        return tf.cond(v > 0, lambda: augment(img, view_seed(base_seed, p, v), config), lambda: img)

    out = tf.map_fn(one, (flat_p, flat_v), fn_output_signature=tf.TensorSpec(images.shape[1:], tf.uint8))
    return tf.reshape(out, tf.concat([tf.shape(photos), tf.shape(images)[1:]], axis=0))


# ---------------------------------------------------------------------------------------------------------
# Triplet sampling


@dataclass(frozen=True)
class TripletBatch:
    """P rows × (anchor, positive, negative): photo index, view number and mining label per slot."""

    photos: np.ndarray  # (P, 3) int32
    views: np.ndarray  # (P, 3) int32
    labels: np.ndarray  # (P, 3) int32


class TripletSampler:
    """Draws triplet batches from the photos of a set of recipes (one split)."""

    def __init__(
        self,
        photos: PhotoSet,
        recipes: Sequence[int] | np.ndarray,
        *,
        views: int,
        batch_recipes: int,
        label_aware: bool = False,
        query_gallery: bool = False,
        anchors_per_recipe: int = 1,
        seed: int = 0,
    ) -> None:
        if views < 2:
            raise ValueError("at least 2 views per photo are needed (view 0 is the clean photo)")
        if anchors_per_recipe < 1:
            raise ValueError("anchors_per_recipe must be at least 1")
        self.photos = photos
        self.recipes = np.asarray(sorted(set(recipes)), np.int32)
        if len(self.recipes) < 2:
            raise ValueError(f"triplets need at least 2 recipes, got {len(self.recipes)}")
        self.views = views
        self.batch_recipes = min(batch_recipes, len(self.recipes))
        self.query_gallery = query_gallery
        # K rows per drawn recipe in training batches (P/K recipes, each with K anchors): several augmented
        # queries of one recipe against its one clean photo in the same batch. At most P/2, so that a
        # batch always holds two recipes (a negative for every row).
        self.anchors_per_recipe = min(anchors_per_recipe, max(1, self.batch_recipes // 2))
        self.label_aware = label_aware and photos.has_categories
        if label_aware and not self.label_aware:
            log.warning("label-aware sampling asked for, but the catalogue has no categories: using recipes")
        self.rng = np.random.default_rng(seed)
        cats = photos.recipe_category[self.recipes]
        self._same_category: dict[int, np.ndarray] = {}
        if self.label_aware:
            for cat in np.unique(cats):
                self._same_category[int(cat)] = self.recipes[cats == cat]

    @property
    def steps_per_epoch(self) -> int:
        """Batches that let every recipe anchor about once."""
        return max(1, math.ceil(len(self.recipes) / self.batch_recipes))

    def _label(self, recipe: int) -> int:
        if self.label_aware:
            cat = int(self.photos.recipe_category[recipe])
            return cat if cat != NO_CATEGORY else -2 - recipe  # uncategorised recipes are their own label
        return recipe

    def _view(self, rng: np.random.Generator, *, clean: bool) -> int:
        return 0 if clean else int(rng.integers(0, self.views))

    def _anchor_positive(
        self, rng: np.random.Generator, recipe: int, *, clean: bool
    ) -> tuple[int, int, int, int]:
        own = self.photos.photos_of(recipe)
        if self.label_aware and self.photos.recipe_category[recipe] != NO_CATEGORY:
            pool = self._same_category[int(self.photos.recipe_category[recipe])]
            partner = int(rng.choice(pool))
            pa = int(rng.choice(own))
            candidates = self.photos.photos_of(partner)
            pp = int(rng.choice(candidates[candidates != pa] if len(candidates) > 1 else candidates))
        elif len(own) > 1:
            pa, pp = (int(x) for x in rng.choice(own, size=2, replace=False))
        else:
            pa = pp = int(own[0])
        if self.query_gallery and not clean:  # an augmented view (the query) finds the clean photo
            return pa, int(rng.integers(1, self.views)), pp, 0
        if pa == pp:  # one photo: two different views of it
            va = self._view(rng, clean=clean)
            vp = int(rng.choice([v for v in range(self.views) if v != va]))
        else:
            va, vp = self._view(rng, clean=clean), self._view(rng, clean=False)
        return pa, va, pp, vp

    def batch(
        self, rng: np.random.Generator | None = None, *, recipes: np.ndarray | None = None
    ) -> TripletBatch:
        """One batch of P rows; ``recipes`` fixes which ones (else drawn at random).

        Drawn at random: ``ceil(P / K)`` distinct recipes, each anchoring ``K = anchors_per_recipe`` rows
        (each row its own anchor view; K = 1: P distinct recipes). Fixed: one row per given recipe.
        """
        rng = rng or self.rng
        if recipes is not None:
            chosen = recipes
        else:
            k = self.anchors_per_recipe
            drawn = rng.choice(self.recipes, -(-self.batch_recipes // k), replace=False)
            chosen = np.repeat(drawn, k)[: self.batch_recipes]
        rows = len(chosen)
        photos = np.zeros((rows, 3), np.int32)
        views = np.zeros((rows, 3), np.int32)
        labels = np.zeros((rows, 3), np.int32)
        row_labels = np.array([self._label(int(r)) for r in chosen])
        for i, recipe in enumerate(chosen):
            pa, va, pp, vp = self._anchor_positive(rng, int(recipe), clean=recipes is not None)
            others = np.flatnonzero(row_labels != row_labels[i])
            if len(others) == 0:  # the whole batch shares a label: any other recipe of the split
                pool = self.recipes[self.recipes != recipe]
                neg_recipe = int(rng.choice(pool))
            else:
                neg_recipe = int(chosen[int(rng.choice(others))])
            pn = int(rng.choice(self.photos.photos_of(neg_recipe)))
            photos[i] = (pa, pp, pn)
            views[i] = (va, vp, self._view(rng, clean=self.query_gallery and recipes is None))
            labels[i] = (row_labels[i], row_labels[i], self._label(neg_recipe))
        return TripletBatch(photos, views, labels)

    def stream(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Endless training batches (photos, views, labels) from the sampler's own random stream."""
        while True:
            b = self.batch()
            yield b.photos, b.views, b.labels

    def fixed_batches(self, seed: int) -> list[TripletBatch]:
        """Validation batches: every recipe anchors once, on its clean photo; the same on every call."""
        rng = np.random.default_rng(seed)
        order = rng.permutation(self.recipes)
        chunks = np.array_split(order, max(1, len(order) // self.batch_recipes))  # P to 2P-1 recipes each
        return [self.batch(rng, recipes=chunk) for chunk in chunks]


def _spec(rows: int | None) -> tuple[tf.TensorSpec, tf.TensorSpec, tf.TensorSpec]:
    return (
        tf.TensorSpec((rows, 3), tf.int32),
        tf.TensorSpec((rows, 3), tf.int32),
        tf.TensorSpec((rows, 3), tf.int32),
    )


def index_dataset(sampler: TripletSampler, *, training: bool, seed: int) -> tf.data.Dataset:
    """(photos, views, labels) index batches: endless random ones for training, fixed ones for validation."""
    if training:  # endless: Keras draws steps_per_epoch batches per epoch from one running stream
        signature = _spec(sampler.batch_recipes)
        return tf.data.Dataset.from_generator(sampler.stream, output_signature=signature).repeat()
    batches = sampler.fixed_batches(seed)
    if not batches:
        raise ValueError("the validation split is too small for one triplet batch (needs 2 recipes)")
    fixed = tf.data.Dataset.from_generator(
        lambda: ((b.photos, b.views, b.labels) for b in batches), output_signature=_spec(None)
    )
    return fixed.apply(tf.data.experimental.assert_cardinality(len(batches)))


def feature_triplets(
    sampler: TripletSampler, features: np.ndarray, *, training: bool, seed: int = 0
) -> tf.data.Dataset:
    """Phase 1: ((P, 3, F) cached features, (P, 3) labels) from a (N, V, F) feature cache."""
    table = tf.constant(features)

    def lookup(photos: tf.Tensor, views: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.gather_nd(table, tf.stack([photos, views], axis=-1)), labels

    return index_dataset(sampler, training=training, seed=seed).map(lookup).prefetch(2)


def view_dataset(
    images: np.ndarray,
    photos: np.ndarray,
    views: np.ndarray,
    *,
    base_seed: int,
    config: AugmentConfig,
    batch: int,
) -> tf.data.Dataset:
    """Batches of uint8 views ``(photos[i], views[i])`` in order, for feature caching."""
    table = tf.constant(images)
    ds = tf.data.Dataset.from_tensor_slices((photos.astype(np.int32), views.astype(np.int32))).batch(batch)
    return ds.map(
        lambda p, v: render_views(table, p, v, base_seed, config),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).prefetch(2)
