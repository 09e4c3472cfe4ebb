"""Qdrant Edge collections with int8-quantized vectors (indexer/store/edge.py): exact recall of each point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def test_int8_quantized_edge_collection_finds_each_point_first(tmp_path: Path) -> None:
    from indexer.store.base import RecipePoint, point_id
    from indexer.store.edge import EdgeStore

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with EdgeStore(tmp_path / "q") as store:
        store.create_collection("q8", dimension=32, model_version="m", quantization="int8")
        points = [
            RecipePoint(point_id(str(i), "a.jpg"), vectors[i], {"recipe_id": str(i)}) for i in range(300)
        ]
        store.upsert("q8", points, model_version="m")
        store.mark_complete("q8")
        for i in range(0, 300, 37):  # rescored with the original vectors: exact self-match on top
            hits = store.search("q8", vectors[i], limit=3, model_version="m")
            assert hits[0].payload["recipe_id"] == str(i)
            assert hits[0].score == pytest.approx(1.0, abs=1e-5)
