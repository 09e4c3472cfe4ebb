"""The verdict's non-food test set, for tests and benches: its home is :mod:`indexer.nonfood`.

Disjoint from the calibration: the build's reference bank uses generated seeds 0…, the build's own
check seeds 10 000…, this set seeds 50 000…; scikit-image's photos are never generated or stored.
"""

from __future__ import annotations

from indexer.nonfood import CROPS, NATURAL, TEST_SEED, natural_photos, nonfood_test_set

__all__ = ["CROPS", "NATURAL", "TEST_SEED", "natural_photos", "nonfood_test_set"]
