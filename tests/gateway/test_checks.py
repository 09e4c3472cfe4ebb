"""The request checks of the search path (gateway/checks.py): API keys, the photo's bytes, the filter."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from gateway.checks import bearer_token, key_matches, search_filter, sniff_image
from gateway.errors import ErrorKind, GatewayError
from indexer.store.base import MAX_FILTER_TERMS
from tests.support.imagegen import encode, synthetic_photo


def _kind(info: pytest.ExceptionInfo[GatewayError]) -> ErrorKind:
    return info.value.kind


def test_bearer_token_and_key_matches() -> None:
    assert bearer_token("Bearer abc") == "abc" and bearer_token("Token abc") is None
    assert key_matches("a", [SecretStr("b"), SecretStr("a")]) and not key_matches(None, [SecretStr("a")])


def test_sniff_image_checks_size_format_and_pixels() -> None:
    photo = encode(synthetic_photo(1, (160, 120)), "PNG")
    assert sniff_image(photo, max_bytes=1 << 20, max_pixels=20_000) == ("PNG", 160, 120)
    cases = [
        (b"", ErrorKind.INVALID_ARGUMENT, "empty"),
        (b"plain text", ErrorKind.INVALID_ARGUMENT, "not a picture"),
        (photo, ErrorKind.RESOURCE_EXHAUSTED, "pixels"),
    ]
    for data, kind, words in cases:
        with pytest.raises(GatewayError, match=words) as info:
            sniff_image(data, max_bytes=1 << 20, max_pixels=1000)
        assert _kind(info) is kind
    with pytest.raises(GatewayError, match="bytes") as info:
        sniff_image(photo, max_bytes=100, max_pixels=20_000)
    assert _kind(info) is ErrorKind.RESOURCE_EXHAUSTED


def test_search_filter_is_none_when_empty_and_refuses_too_many_terms() -> None:
    assert search_filter() is None and search_filter([], [], []) is None
    built = search_filter(["Soups"], ["garlic"])
    assert built is not None and built.categories == ("Soups",) and built.must_include == ("garlic",)
    with pytest.raises(GatewayError) as info:
        search_filter(must_exclude=["x"] * (MAX_FILTER_TERMS + 1))
    assert _kind(info) is ErrorKind.INVALID_ARGUMENT
