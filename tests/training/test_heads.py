"""Head initialisation: the untrained head is exactly the PCA or the learned whitening of the features."""

from __future__ import annotations

import numpy as np

from training.fitting import split_at_pooling
from training.heads import init_head_with_pca, init_head_with_whitening
from training.models import build_embedding_model


def test_pca_init_makes_the_head_a_pca_projection() -> None:
    model = build_embedding_model("efficientnet_lite0", None, embedding_dim=4, hidden=8, dropout=0.3)
    _, head = split_at_pooling(model)
    rng = np.random.default_rng(0)
    features = np.abs(rng.normal(size=(30, 2, 1280))).astype(np.float32)  # (photos, views, F)
    assert init_head_with_pca(model, features)
    x = features.reshape(-1, 1280).astype(np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    expected = (x - mean) @ vt[:4].T
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    got = head(x.astype(np.float32), training=False).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    odd = build_embedding_model("efficientnet_lite0", None, embedding_dim=4, hidden=6)
    assert not init_head_with_pca(odd, features)


def test_whitening_init_keeps_distorted_copies_near_their_photo() -> None:
    model = build_embedding_model("efficientnet_lite0", None, embedding_dim=32, hidden=64, dropout=0.3)
    _, head = split_at_pooling(model)
    rng = np.random.default_rng(1)
    clean = rng.normal(size=(60, 1, 1280))
    # Augmentation moves every photo a long way along 40 directions, and a little everywhere else.
    noise = np.zeros((60, 3, 1280))
    noise[:, :, :40] = 30 * rng.normal(size=(60, 3, 40))
    views = clean + noise + 0.1 * rng.normal(size=(60, 3, 1280))
    features = np.concatenate([clean, views], axis=1).astype(np.float32)  # view 0 clean

    def found(init: str) -> float:
        ok = (
            init_head_with_whitening(model, features, 0.0)
            if init == "w"
            else init_head_with_pca(model, features)
        )
        assert ok
        gallery = head(features[:, 0], training=False).numpy()
        queries = head(features[:, 1], training=False).numpy()
        return float(np.mean(np.argmax(queries @ gallery.T, axis=1) == np.arange(60)))

    # PCA keeps the noisy directions (the largest variance); whitening scales them down.
    assert found("pca") < 0.5
    assert found("w") == 1.0
    # Full shrinkage leaves nothing to whiten: the map is the PCA's, up to scale and column signs.
    assert init_head_with_whitening(model, features, 1.0)
    whitened = head(features[:, 0], training=False).numpy()
    assert init_head_with_pca(model, features)
    np.testing.assert_allclose(
        np.abs(whitened), np.abs(head(features[:, 0], training=False).numpy()), atol=1e-4
    )
