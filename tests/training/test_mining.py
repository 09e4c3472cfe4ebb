"""Online negative mining, the triplet loss and the triplet metrics on hand-made unit vectors."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import tensorflow as tf

from training.losses import TripletLoss, contrastive_term, multi_similarity_term, triplet_distances
from training.mining import select_negatives
from training.triplet_metrics import triplet_metrics


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# Three rows (anchor, positive, negative) on the unit circle; labels per slot.
# Row 0: anchor 0°, positive 30° (d = 1 - cos 30° = 0.134); its own negative at 170°.
# Pool negatives for row 0 (label ≠ 0): 20° (row 1 anchor, closer than the positive),
# 45° (row 1 positive, farther than the positive), 170°, 100°, 90°, 180°.
ANGLES = [[0, 30, 170], [20, 45, 100], [90, 180, 0]]
LABELS = [[0, 0, 1], [1, 1, 2], [2, 2, 0]]


def _batch() -> tuple[tf.Tensor, tf.Tensor]:
    emb = tf.constant([[_unit(a) for a in row] for row in ANGLES], tf.float32)
    return emb, tf.constant(LABELS, tf.int32)


def test_random_keeps_each_rows_own_negative() -> None:
    emb, labels = _batch()
    assert select_negatives(emb, labels, "random").numpy().tolist() == [2, 5, 8]


def test_batch_hard_picks_the_closest_negative_of_another_label() -> None:
    emb, labels = _batch()
    chosen = select_negatives(emb, labels, "batch-hard").numpy().tolist()
    # Row 0 (0°): closest other-label item is 20° (index 3). Row 1 (20°, label 1): candidates of
    # labels 0/2 are 0° (idx 0 and 8), 30°, 170°, 90°, 180° → 30° at index 1 is closest (10°).
    # Row 2 (90°, label 2): 100° has label 2 (its own kind), so the closest is 45° (index 4).
    assert chosen == [3, 1, 4]


def test_gallery_only_mining_never_picks_another_rows_anchor() -> None:
    emb, labels = _batch()
    chosen = select_negatives(emb, labels, "batch-hard", gallery_only=True).numpy().tolist()
    # Row 0's closest negative in the whole batch is row 1's anchor (20°, index 3); among the positive
    # and negative slots it is 45° (index 4). Rows 1 and 2 already picked gallery slots (1 and 4).
    assert chosen == [4, 1, 4]
    _, d_an = triplet_distances(labels, emb, "batch-hard", gallery_only=True)
    np.testing.assert_allclose(d_an.numpy()[0], 1 - math.cos(math.radians(45)), rtol=1e-6)
    loss = TripletLoss(margin=0.3, mining="batch-hard", mine_gallery_only=True)
    assert TripletLoss.from_config(loss.get_config()).mine_gallery_only is True


def test_semi_hard_takes_the_closest_negative_beyond_the_positive() -> None:
    emb, labels = _batch()
    chosen = select_negatives(emb, labels, "semi-hard").numpy().tolist()
    # Row 0: d(a,p) is 30°; 20° is closer than the positive, so the semi-hard one is 45° (index 4).
    # Row 1: d(a,p) is 25°; 0°/30° are within 25°... 30° is 10° away, 0° is 20° away, both closer:
    # the closest beyond 25° is 90° (index 6, 70° away) vs 170° (150°) → index 6.
    # Row 2: positive 180° is 90° away; beyond that: 0° (idx 0/8, 90° — not strictly farther),
    # 170° (80°, closer). Nothing strictly farther → fall back to the farthest: 0° at index 0.
    assert chosen == [4, 6, 0]


def test_unknown_strategy_is_refused() -> None:
    emb, labels = _batch()
    with pytest.raises(ValueError, match="unknown mining strategy 'hardest'"):
        select_negatives(emb, labels, "hardest")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mining", "negatives"),
    [("random", [170, 100, 0]), ("batch-hard", [20, 30, 45])],
)
def test_loss_is_the_hinge_on_cosine_distance(mining: str, negatives: list[float]) -> None:
    emb, labels = _batch()
    margin = 0.3
    loss = TripletLoss(margin=margin, mining=mining)  # type: ignore[arg-type]
    expected = []
    for (a, p, _), n in zip(ANGLES, negatives, strict=True):
        d_ap = 1 - math.cos(math.radians(p - a))
        d_an = 1 - math.cos(math.radians(n - a))
        expected.append(max(0.0, d_ap - d_an + margin))
    per_row = loss.call(labels, emb).numpy()
    np.testing.assert_allclose(per_row, expected, atol=1e-6)
    np.testing.assert_allclose(float(loss(tf.cast(labels, tf.float32), emb)), np.mean(expected), atol=1e-6)
    assert TripletLoss.from_config(loss.get_config()).get_config() == loss.get_config()


def test_distances_match_hand_computation() -> None:
    emb, labels = _batch()
    d_ap, d_an = triplet_distances(labels, emb, "random")
    np.testing.assert_allclose(d_ap.numpy(), [1 - math.cos(math.radians(d)) for d in (30, 25, 90)], atol=1e-6)
    np.testing.assert_allclose(
        d_an.numpy(), [1 - math.cos(math.radians(d)) for d in (170, 80, 90)], atol=1e-6
    )


def test_metrics_on_hand_made_rows() -> None:
    emb, labels = _batch()
    acc, margin_acc, pos, neg = triplet_metrics(margin=0.75)
    for metric in (acc, margin_acc, pos, neg):
        metric.update_state(tf.cast(labels, tf.float32), emb)
    # Rows: (30° vs 170°) right by 1.85 > margin, (25° vs 80°) right by 0.73 < margin, (90° vs 90°) a tie.
    assert float(acc.result()) == pytest.approx(2 / 3)
    assert float(margin_acc.result()) == pytest.approx(1 / 3)
    cos = [math.cos(math.radians(d)) for d in (30, 25, 90)]
    assert float(pos.result()) == pytest.approx(np.mean(cos), abs=1e-6)
    cos_n = [math.cos(math.radians(d)) for d in (170, 80, 90)]
    assert float(neg.result()) == pytest.approx(np.mean(cos_n), abs=1e-6)


def test_metrics_serialise() -> None:
    for metric in triplet_metrics(margin=0.4):
        rebuilt = type(metric).from_config(metric.get_config())
        assert rebuilt.name == metric.name and rebuilt.get_config() == metric.get_config()
    assert triplet_metrics(margin=0.4)[1].get_config()["margin"] == 0.4


def _anchor_pairs(row: int) -> tuple[dict[int, float], list[int], list[int]]:
    """Row ``row``'s anchor against the other 8 slots: cosine similarities, same-label and other slots."""
    flat_angles = [a for r in ANGLES for a in r]
    flat_labels = [x for r in LABELS for x in r]
    others = [i for i in range(9) if i != 3 * row]
    sims = {i: math.cos(math.radians(flat_angles[i] - ANGLES[row][0])) for i in others}
    same = [i for i in others if flat_labels[i] == LABELS[row][0]]
    return sims, same, [i for i in others if i not in same]


def _check_term(
    term: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], expected: list[float], loss: TripletLoss, weight: float
) -> None:
    """``term`` per row as ``expected``; 0 for a row without positives; ``loss`` = hinge + weight × term."""
    emb, labels = _batch()
    np.testing.assert_allclose(term(labels, emb).numpy(), expected, rtol=1e-5)
    # An anchor with no other embedding of its label in the batch contributes 0 (rows 0 and 1 here).
    lonely = tf.constant([[0, 5, 6], [1, 7, 8], [2, 9, 2]], tf.int32)
    got = term(lonely, emb).numpy()
    np.testing.assert_allclose(got[:2], [0.0, 0.0])
    assert got[2] > 0
    hinge = TripletLoss(margin=0.3, mining="batch-hard").call(labels, emb).numpy()
    np.testing.assert_allclose(loss.call(labels, emb).numpy(), hinge + weight * np.array(expected), rtol=1e-5)
    assert TripletLoss.from_config(loss.get_config()).get_config() == loss.get_config()


def test_contrastive_term_is_supervised_infonce_over_the_batch() -> None:
    tau = 0.1
    expected = []
    for r in range(len(ANGLES)):
        sims, same, _ = _anchor_pairs(r)
        logits = {i: s / tau for i, s in sims.items()}
        expected.append(
            math.log(sum(math.exp(v) for v in logits.values()))
            - math.log(sum(math.exp(logits[i]) for i in same))
        )
    loss = TripletLoss(margin=0.3, mining="batch-hard", nce_weight=0.5, temperature=tau)
    _check_term(lambda labels, emb: contrastive_term(labels, emb, tau), expected, loss, 0.5)
    with pytest.raises(ValueError, match="temperature"):
        TripletLoss(temperature=0.0)


def test_multi_similarity_term_mines_pairs_and_weights_them_as_the_paper() -> None:
    alpha, beta, base, eps = 2.0, 10.0, 0.5, 0.1
    expected, kept_counts = [], []
    for r in range(len(ANGLES)):
        sims, pos, neg = _anchor_pairs(r)
        kept_neg = [i for i in neg if sims[i] + eps > min(sims[p] for p in pos)]
        kept_pos = [i for i in pos if sims[i] - eps < max(sims[n] for n in neg)]
        kept_counts.append((len(kept_pos), len(kept_neg)))
        pull = sum(math.exp(-alpha * (sims[i] - base)) for i in kept_pos)
        push = sum(math.exp(beta * (sims[i] - base)) for i in kept_neg)
        expected.append(math.log1p(pull) / alpha + math.log1p(push) / beta)
    # The mining rule drops pairs: row 0 keeps one of its six negatives (20°, within ε of its hardest
    # positive at 30°), row 2 drops its easy positive (100°, farther from every negative than ε).
    assert kept_counts == [(2, 1), (2, 6), (1, 6)]
    loss = TripletLoss(margin=0.3, mining="batch-hard", ms_weight=0.5, ms_beta=beta)
    _check_term(
        lambda labels, emb: multi_similarity_term(
            labels, emb, alpha=alpha, beta=beta, base=base, epsilon=eps
        ),
        expected,
        loss,
        0.5,
    )
    with pytest.raises(ValueError, match="ms_alpha"):
        TripletLoss(ms_alpha=0.0)
