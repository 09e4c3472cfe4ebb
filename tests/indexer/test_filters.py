"""Search filters (indexer/store/filters.py) and the one normal form of keywords (indexer/keywords.py)."""

from __future__ import annotations

import pytest

from indexer.keywords import ingredient_keywords, normal, query_keywords
from indexer.store.base import MAX_FILTER_TERMS, InvalidFilter, SearchFilter


def test_filters_are_capped_with_a_clear_error() -> None:
    SearchFilter(must_exclude=tuple(f"term{i}" for i in range(MAX_FILTER_TERMS)))
    with pytest.raises(InvalidFilter, match=r"filter of 65 terms \(at most 64\)"):
        SearchFilter(categories=("a",), must_exclude=tuple(f"term{i}" for i in range(MAX_FILTER_TERMS)))
    with pytest.raises(InvalidFilter, match="at most 100"):
        SearchFilter(must_exclude=("x" * 101,))
    with pytest.raises(InvalidFilter, match=r"bytes \(at most 4096\)"):
        SearchFilter(must_exclude=tuple("é" * 50 for _ in range(50)))
    with pytest.raises(InvalidFilter, match="list of strings"):
        SearchFilter(categories="Soups")  # type: ignore[arg-type]
    assert isinstance(InvalidFilter("x"), ValueError)  # callers map it to INVALID_ARGUMENT / 400
    assert SearchFilter(categories=[" Soups ", ""]).categories == ("Soups",)  # type: ignore[arg-type]


def test_one_normal_form_for_index_and_query() -> None:
    for spellings in (
        ["chilli", "chillies", "Chilli", "chilly"],
        ["berry", "berries"],
        ["tomato", "tomatoes"],
    ):
        assert len({normal(s) for s in spellings}) == 1, spellings
    assert normal("cookie") == normal("cookies") and normal("egg") == normal("eggs")
    assert normal("hummus") == "hummus" and normal("glass") == normal("glasses")
    assert query_keywords("Red CHILLIES") == ["red", "chilli"]
    assert set(ingredient_keywords(["2 chillies"])) == {"chillies", "chilli"}
