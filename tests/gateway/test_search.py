"""Search results and the paging rules: hits from store points, bounds checked in one place."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.errors import ErrorKind, GatewayError
from gateway.search import MAX_OFFSET, MAX_TOP_K, RecipeHit, check_paging
from indexer.store.base import StoreHit


def test_check_paging_bounds() -> None:
    for top_k, offset in ((1, 0), (MAX_TOP_K, MAX_OFFSET)):
        check_paging(top_k, offset)
    for top_k, offset, name in ((0, 0, "top_k"), (MAX_TOP_K + 1, 0, "top_k"), (1, -1, "offset")):
        with pytest.raises(GatewayError, match=name) as info:
            check_paging(top_k, offset)
        assert info.value.kind is ErrorKind.INVALID_ARGUMENT
    with pytest.raises(GatewayError, match="offset"):
        check_paging(1, MAX_OFFSET + 1)


def test_recipe_hit_from_a_store_point() -> None:
    payload = {
        "recipe_id": "r1",
        "title": "Soup",
        "ingredients": ["2 leeks"],
        "image": "a.jpg",
        "category": "Soups",
    }
    hit = RecipeHit.from_store(3, StoreHit(id="p1", score=np.float32(0.5), payload=payload))
    assert (hit.rank, hit.score, hit.recipe_id, hit.title, hit.category) == (3, 0.5, "r1", "Soup", "Soups")
    assert hit.ingredients == ["2 leeks"] and hit.instructions == "" and hit.payload == payload
    bare = RecipeHit.from_store(1, StoreHit(id="p2", score=0.1, payload={}))
    assert bare.recipe_id == "p2" and bare.ingredients == [] and bare.image == ""
