"""The one search path without a port: SearchGateway over Qdrant Edge and the in-process embedder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from embedder.factory import open_embedder
from gateway.errors import ErrorKind, GatewayError
from gateway.pipeline import SearchGateway, bearer_token, key_matches, sniff_image
from gateway.settings import GatewaySettings
from indexer.store.edge import EdgeStore
from tests.gateway.conftest import World, gateway_settings
from tests.support.imagegen import encode, synthetic_photo


async def _gateway(world: World, **overrides: object) -> SearchGateway:
    settings = gateway_settings(world, **overrides)
    embedder = open_embedder(None, settings.model_dir, watch_model_dir=True)
    return SearchGateway(EdgeStore(world.store_path), embedder, settings, workers=2)


@pytest.fixture
async def gateway(world: World) -> AsyncIterator[SearchGateway]:
    gw = await _gateway(world)
    yield gw
    await gw.aclose()
    gw.store.close()


def _kind(exc: pytest.ExceptionInfo[GatewayError]) -> ErrorKind:
    return exc.value.kind


async def test_search_answers_with_the_collection_model(
    gateway: SearchGateway, world: World, query_photos: list[bytes]
) -> None:
    result = await gateway.search(query_photos[3], top_k=3)
    assert result.hits[0].recipe_id == "r003" and [h.rank for h in result.hits] == [1, 2, 3]
    assert result.model_version == world.version_a and result.collection == world.collection_a
    paged = await gateway.search(query_photos[3], top_k=2, offset=1)
    assert [h.recipe_id for h in paged.hits] == [h.recipe_id for h in result.hits[1:3]]
    assert [h.rank for h in paged.hits] == [2, 3]
    assert len((await gateway.search(query_photos[3])).hits) == gateway.default_top_k  # None: the default


@pytest.mark.parametrize(("top_k", "offset"), [(0, 0), (101, 0), (5, -1), (5, 10_001)])
async def test_paging_is_checked_before_anything_else(
    gateway: SearchGateway, top_k: int, offset: int
) -> None:
    with pytest.raises(GatewayError) as info:
        await gateway.search(b"not even a photo", top_k=top_k, offset=offset)
    assert _kind(info) is ErrorKind.INVALID_ARGUMENT
    assert ("top_k" if offset in (0, -1) and top_k != 5 else "offset") in str(info.value)


async def test_missing_alias_fails_search_readiness_and_wait(world: World, query_photos: list[bytes]) -> None:
    gw = await _gateway(world, alias="absent")
    try:
        with pytest.raises(GatewayError) as info:
            await gw.search(query_photos[0])
        assert _kind(info) is ErrorKind.FAILED_PRECONDITION and "'absent'" in str(info.value)
        readiness = await gw.readiness()
        assert not readiness.ready and "absent" in readiness.checks["store"]
        assert readiness.checks["embedder"].startswith("ok")
        with pytest.raises(TimeoutError, match="absent"):
            await gw.wait_ready(0.3, period_s=0.05)
    finally:
        await gw.aclose()
        gw.store.close()


async def test_embedder_without_the_collection_model(
    world: World, tmp_path: Path, query_photos: list[bytes]
) -> None:
    only_b = tmp_path / "models"
    only_b.mkdir()
    (only_b / "tiny-b").symlink_to(world.models / "tiny-b", target_is_directory=True)
    gw = await _gateway(world, model_dir=only_b)
    try:
        with pytest.raises(GatewayError) as info:
            await gw.search(query_photos[0])
        assert _kind(info) is ErrorKind.FAILED_PRECONDITION and world.version_a in str(info.value)
        readiness = await gw.readiness()
        assert not readiness.ready and world.version_a in readiness.checks["versions"]
    finally:
        await gw.aclose()
        gw.store.close()


async def test_get_recipe(gateway: SearchGateway) -> None:
    assert (await gateway.get_recipe(" r004 ")).title == "Recipe 4"
    with pytest.raises(GatewayError) as info:
        await gateway.get_recipe("r999")
    assert _kind(info) is ErrorKind.NOT_FOUND
    with pytest.raises(GatewayError) as info:
        await gateway.get_recipe("x" * 257)
    assert _kind(info) is ErrorKind.INVALID_ARGUMENT


def test_authorize_takes_only_a_configured_bearer_key(world: World) -> None:
    settings = GatewaySettings(api_keys=[SecretStr("key-one"), SecretStr("key-two")])
    gw = SearchGateway(EdgeStore(world.store_path), open_embedder(None, world.models), settings, workers=1)
    try:
        assert gw.auth_enabled
        for header in (None, "", "Bearer", "Basic key-one", "Bearer wrong"):
            with pytest.raises(GatewayError) as info:
                gw.authorize(header)
            assert _kind(info) is ErrorKind.UNAUTHENTICATED
        gw.authorize("Bearer key-two")
        gw.authorize("bearer  key-one ")
    finally:
        gw.store.close()
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
