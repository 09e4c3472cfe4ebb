"""RecipeSearch over gRPC on loopback: answers, filters, paging, statuses, hostile uploads, auth, health."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from recipelens.v1 import search_pb2

from gateway.client import RecipeSearchClient, search_filter
from gateway.server import RunningGateway, start_gateway
from tests.gateway.conftest import World, gateway_settings
from tests.support.imagegen import encode, synthetic_photo
from tests.support.tls import NEEDS_OPENSSL, self_signed


@pytest.fixture(scope="module")
def client(gateway: RunningGateway) -> RecipeSearchClient:
    c = RecipeSearchClient(gateway.grpc_address, timeout_s=10)
    yield c
    c.close()


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()


def test_search_ranks_the_photographed_recipe_first(
    client: RecipeSearchClient, world: World, query_photos: list[bytes]
) -> None:
    for i, photo in enumerate(query_photos):
        response = client.search(photo, top_k=5)
        assert response.model_version == world.version_a
        assert response.collection == world.collection_a
        assert [h.rank for h in response.hits] == [1, 2, 3, 4, 5]
        assert response.hits[0].recipe.id == f"r{i:03d}"
        scores = [h.score for h in response.hits]
        assert scores == sorted(scores, reverse=True)
        assert response.hits[0].recipe.image_url == f"/images/r{i:03d}.jpg"
        assert response.took_ms > 0


def test_filters_and_paging(client: RecipeSearchClient, query_photos: list[bytes]) -> None:
    photo = query_photos[1]
    soups = client.search(photo, top_k=10, filter=search_filter(categories=["soup"]))
    assert soups.hits and all(h.recipe.category == "soup" for h in soups.hits)
    with_garlic = client.search(photo, top_k=10, filter=search_filter(must_include=["garlic"]))
    assert with_garlic.hits
    assert all(any("garlic" in i for i in h.recipe.ingredients) for h in with_garlic.hits)
    no_garlic = client.search(photo, top_k=24, filter=search_filter(must_exclude=["garlic"]))
    assert no_garlic.hits and not any(
        any("garlic" in i for i in h.recipe.ingredients) for h in no_garlic.hits
    )
    first = client.search(photo, top_k=6)
    page = client.search(photo, top_k=3, offset=3)
    assert [h.rank for h in page.hits] == [4, 5, 6]
    assert [h.recipe.id for h in page.hits] == [h.recipe.id for h in first.hits[3:6]]


def test_get_recipe(client: RecipeSearchClient) -> None:
    recipe = client.get_recipe("r003")
    assert recipe.title == "Recipe 3" and recipe.category and recipe.ingredients
    assert _code(lambda: client.get_recipe("no-such-recipe")) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: client.get_recipe("")) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("top_k", [101, 1000])
def test_bad_top_k(client: RecipeSearchClient, query_photos: list[bytes], top_k: int) -> None:
    assert _code(lambda: client.search(query_photos[0], top_k=top_k)) == grpc.StatusCode.INVALID_ARGUMENT


def _hostile_uploads() -> dict[str, tuple[bytes, grpc.StatusCode | None]]:
    photo = synthetic_photo(1003)
    jpeg = encode(photo, "JPEG", quality=90)
    frames = [synthetic_photo(1003 + k) for k in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    rotated = io.BytesIO()
    photo.rotate(90, expand=True).save(rotated, format="JPEG", quality=90, exif=exif.tobytes())
    grey16 = np.asarray(photo.convert("L"), dtype=np.uint16) * 257
    big = io.BytesIO()
    Image.new("L", (20000, 20000)).save(big, format="PNG")
    return {
        "zero bytes": (b"", grpc.StatusCode.INVALID_ARGUMENT),
        "truncated JPEG": (jpeg[: len(jpeg) // 3], grpc.StatusCode.INVALID_ARGUMENT),
        "text file": (b"just some text, not a photo\n" * 20, grpc.StatusCode.INVALID_ARGUMENT),
        "20000x20000 PNG": (big.getvalue(), grpc.StatusCode.RESOURCE_EXHAUSTED),
        "11 MiB file": (jpeg + b"\0" * (11 << 20), grpc.StatusCode.RESOURCE_EXHAUSTED),
        "CMYK JPEG": (encode(photo.convert("CMYK"), "JPEG", quality=90), None),
        "16-bit PNG": (encode(Image.fromarray(grey16), "PNG"), None),
        "animated GIF": (gif.getvalue(), None),
        "EXIF-rotated photo": (rotated.getvalue(), None),
    }


HOSTILE = _hostile_uploads()


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_uploads(client: RecipeSearchClient, name: str) -> None:
    data, expected = HOSTILE[name]
    if expected is None:
        response = client.search(data, top_k=3)
        assert len(response.hits) == 3
        if name in ("CMYK JPEG", "EXIF-rotated photo"):
            assert response.hits[0].recipe.id == "r003"  # decoded the right way round, in the right colours
    else:
        with pytest.raises(grpc.RpcError) as info:
            client.search(data, top_k=3)
        assert info.value.code() == expected, info.value.details()
        assert info.value.details()
    assert client.health() == "SERVING"  # the server keeps serving


def test_health_and_reflection(gateway: RunningGateway) -> None:
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "recipelens.v1.RecipeSearch"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert "recipelens.v1.RecipeSearch" in names


def test_auth_on(world: World, query_photos: list[bytes]) -> None:
    with start_gateway(gateway_settings(world, api_keys="key-one,key-two")) as running:
        for key, expected in (
            (None, grpc.StatusCode.UNAUTHENTICATED),
            ("wrong", grpc.StatusCode.UNAUTHENTICATED),
        ):
            with RecipeSearchClient(running.grpc_address, api_key=key) as c:
                assert _code(lambda c=c: c.search(query_photos[0])) == expected
                assert _code(lambda c=c: c.get_recipe("r001")) == expected
                assert c.health() == "SERVING"  # health stays open
        with RecipeSearchClient(running.grpc_address, api_key="key-two") as c:
            assert c.search(query_photos[0]).hits[0].recipe.id == "r000"
        assert running.gateway.auth_enabled


def test_collection_model_missing_is_failed_precondition(
    world: World, tmp_path: Path, query_photos: list[bytes]
) -> None:
    only_b = tmp_path / "models"
    only_b.mkdir()
    (only_b / "tiny-b").symlink_to(world.models / "tiny-b", target_is_directory=True)
    with (
        start_gateway(gateway_settings(world, model_dir=only_b)) as running,
        RecipeSearchClient(running.grpc_address) as c,
    ):
        with pytest.raises(grpc.RpcError) as info:
            c.search(query_photos[0])
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert world.version_a in (info.value.details() or "")
        assert c.health() == "NOT_SERVING"


def test_empty_filter_message_is_no_filter(client: RecipeSearchClient, query_photos: list[bytes]) -> None:
    response = client.search(query_photos[2], top_k=3, filter=search_pb2.SearchFilter())
    assert response.hits[0].recipe.id == "r002"


@NEEDS_OPENSSL
def test_tls(world: World, tmp_path: Path, query_photos: list[bytes]) -> None:
    cert, key = self_signed(tmp_path)
    with start_gateway(gateway_settings(world, tls_cert=cert, tls_key=key)) as running:
        with RecipeSearchClient(running.grpc_address, root_certificates=cert) as c:
            assert c.search(query_photos[0]).hits[0].recipe.id == "r000"
        with RecipeSearchClient(running.grpc_address, timeout_s=2) as plain:
            assert _code(lambda: plain.search(query_photos[0])) == grpc.StatusCode.UNAVAILABLE
