"""Online negative mining inside one batch of triplets.

A batch is P rows of (anchor, positive, negative) embeddings with a label per slot. Its 3P
embeddings form the pool that the miners pick a negative from, for each anchor, among the
embeddings whose label differs from the anchor's:

* ``random``: the row's own negative slot (already a random other recipe of the batch);
* ``batch-hard``: the closest negative in the pool;
* ``semi-hard`` (FaceNet): the closest negative that is still farther than the row's positive,
  ``d(a,p) < d(a,n)``; when every negative is closer than the positive, the farthest one.

A row whose anchor has no negative anywhere in the pool keeps its own negative slot.

``gallery_only``: the pool is the positive and negative slots alone (with ``query_gallery``, the clean
photos), so an anchor — an augmented query — is never pushed away from another row's augmented query:
a search compares a query with gallery photos only.
"""

from __future__ import annotations

import tensorflow as tf

from training.presets import Mining

MINING_STRATEGIES: tuple[Mining, ...] = ("random", "batch-hard", "semi-hard")


def cosine_distance(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Row-wise ``1 - cos`` of two (N, D) batches of unit vectors."""
    return 1.0 - tf.reduce_sum(a * b, axis=-1)


def anchor_pairs(embeddings: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Each row's anchor against every slot of the batch, as (P, 3P): cosine similarity, positives
    (the anchor's label, the anchor itself left out) and negatives (any other label)."""
    rows = tf.shape(embeddings)[0]
    pool = tf.reshape(embeddings, (-1, tf.shape(embeddings)[-1]))
    pool_labels = tf.reshape(labels, (-1,))
    sims = tf.matmul(embeddings[:, 0], pool, transpose_b=True)
    same_label = tf.equal(labels[:, :1], pool_labels[None, :])
    not_self = tf.logical_not(tf.one_hot(tf.range(rows) * 3, 3 * rows, on_value=True, off_value=False))
    return sims, tf.logical_and(same_label, not_self), tf.logical_not(same_label)


def select_negatives(
    embeddings: tf.Tensor, labels: tf.Tensor, strategy: Mining, *, gallery_only: bool = False
) -> tf.Tensor:
    """(P, 3, D) unit embeddings + (P, 3) labels → (P,) index into the flattened (3P, D) pool."""
    if strategy not in MINING_STRATEGIES:
        raise ValueError(
            f"unknown mining strategy {strategy!r}; choose one of {', '.join(MINING_STRATEGIES)}"
        )
    rows = tf.shape(embeddings)[0]
    own_slot = tf.range(rows) * 3 + 2
    if strategy == "random":
        return own_slot
    sims, _, is_negative = anchor_pairs(embeddings, labels)
    dist = 1.0 - sims  # (P, 3P)
    if gallery_only:
        is_negative = tf.logical_and(is_negative, (tf.range(3 * rows) % 3 != 0)[None, :])
    inf = tf.constant(float("inf"), dist.dtype)
    if strategy == "batch-hard":
        chosen = tf.argmin(tf.where(is_negative, dist, inf), axis=1, output_type=tf.int32)
    else:
        d_ap = cosine_distance(embeddings[:, 0], embeddings[:, 1])[:, None]
        semi_hard = tf.logical_and(is_negative, dist > d_ap)
        closest_semi_hard = tf.argmin(tf.where(semi_hard, dist, inf), axis=1, output_type=tf.int32)
        farthest = tf.argmax(tf.where(is_negative, dist, -inf), axis=1, output_type=tf.int32)
        chosen = tf.where(tf.reduce_any(semi_hard, axis=1), closest_semi_hard, farthest)
    return tf.where(tf.reduce_any(is_negative, axis=1), chosen, own_slot)
