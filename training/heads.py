"""Where the projection head starts: a linear map fitted to the cached training features.

With ``hidden = 2 × embedding_dim`` the head's two dense layers can represent a linear map exactly
(``relu(z) − relu(−z) = z``), so the untrained model can rank like a chosen projection of the
backbone's features — their PCA (:func:`init_head_with_pca`) or their learned whitening
(:func:`init_head_with_whitening`) — and triplet training refines that instead of first undoing a
random projection fitted to a few hundred recipes.
"""

from __future__ import annotations

import logging

import keras
import numpy as np

log = logging.getLogger(__name__)


def _set_linear_head(model: keras.Model, u: np.ndarray, mean: np.ndarray) -> bool:
    """Make the Dense(2D) → Dense(D) head compute ``(x − mean) · u`` exactly; False if it cannot."""
    hidden, projection = model.get_layer("projection_hidden"), model.get_layer("projection")
    dim = int(projection.kernel.shape[-1])
    if int(hidden.kernel.shape[-1]) != 2 * dim:
        log.warning("head is not Dense(2×%d) → Dense(%d): keeping its random initialisation", dim, dim)
        return False
    full = np.zeros((u.shape[0], dim))
    full[:, : min(dim, u.shape[1])] = u[:, :dim]
    hidden.set_weights([np.concatenate([full, -full], axis=1), np.concatenate([-mean @ full, mean @ full])])
    projection.set_weights([np.concatenate([np.eye(dim), -np.eye(dim)]), np.zeros(dim)])
    return True


def init_head_with_pca(model: keras.Model, features: np.ndarray) -> bool:
    """Start the head as the PCA projection of the training features instead of a random one.

    hidden = [U, −U]·(x − μ), output = [I; −I]·hidden = Uᵀ(x − μ), with U the top principal directions
    of the cached training features: the untrained model then ranks almost like the raw backbone.
    Returns False (random init kept) when the head does not have that shape.
    """
    x = features.reshape(-1, features.shape[-1]).astype(np.float64)
    if len(x) < 2:
        return False
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    if not _set_linear_head(model, vt.T, mean):
        return False
    log.info("head initialised with the PCA of %d training feature vectors", len(x))
    return True


def whitening_projection(features: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Learned whitening (Radenović et al.): (F, F) projection and mean from a (N, V, F) feature cache.

    View 0 is the clean photo, views 1… its augmented copies. The directions in which an augmented
    copy moves away from its photo (the covariance of the differences, shrunk towards a multiple of the
    identity by ``shrinkage``) are scaled down, then the result is rotated to its principal axes: a
    linear map under which a distorted photo stays near its original, ordered by how much it tells
    photos apart.
    """
    if features.ndim != 3 or features.shape[1] < 2:
        raise ValueError(f"whitening needs (photos, views ≥ 2, features), got {features.shape}")
    x = features.astype(np.float64)
    diff = (x[:, 1:] - x[:, :1]).reshape(-1, x.shape[-1])
    cov = diff.T @ diff / max(1, len(diff))
    cov = (1 - shrinkage) * cov + shrinkage * (np.trace(cov) / len(cov)) * np.eye(len(cov))
    eigval, eigvec = np.linalg.eigh(cov)
    inv_sqrt = eigvec @ np.diag(1.0 / np.sqrt(np.maximum(eigval, 1e-12))) @ eigvec.T
    flat = x.reshape(-1, x.shape[-1])
    mean = flat.mean(axis=0)
    _, _, vt = np.linalg.svd((flat - mean) @ inv_sqrt, full_matrices=False)
    return inv_sqrt @ vt.T, mean


def init_head_with_whitening(model: keras.Model, features: np.ndarray, shrinkage: float) -> bool:
    """Start the head as the learned whitening of the cached features (see :func:`whitening_projection`)."""
    projection, mean = whitening_projection(features, shrinkage)
    if not _set_linear_head(model, projection, mean):
        return False
    log.info(
        "head initialised with the learned whitening of %d photos × %d views (shrinkage %g)",
        features.shape[0],
        features.shape[1],
        shrinkage,
    )
    return True


def init_head(model: keras.Model, features: np.ndarray, method: str, shrinkage: float) -> bool:
    """Apply ``head_init`` (``pca``, ``whitened``; ``random`` keeps Keras' initialisation)."""
    if method == "whitened":
        return init_head_with_whitening(model, features, shrinkage)
    if method == "pca":
        return init_head_with_pca(model, features)
    return False
