"""Memory under max-size uploads: the decoding budget bounds what is in flight, memory goes back afterwards,
refusals are clear, and the memory-saving decode gives exactly the tensors of the whole-image one.

The bound is measured on separate service processes (see :mod:`tests.reliability.memory`); the full per-kind
figure of the README is ``python -m tests.reliability.memory``.
"""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

import embedder.preprocess as preprocessing
from embedder.memory import DecodeBudget, DecodeBudgetBusy, configure_decoding, decode_budget
from gateway.client import RecipeSearchClient
from gateway.server import start_gateway
from gateway.settings import GatewaySettings
from tests.reliability.bigimages import big_upload
from tests.reliability.memory import (
    PEAK_LIMIT_MB,
    SETTLED_LIMIT_MB,
    embedder_figure,
    gateway_figure,
    max_size_uploads,
    mixed_burst,
)
from tests.reliability.stack import World
from tests.support.imagegen import encode, synthetic_photo
from tests.support.load import SEARCH_PATH, multipart_body

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def uploads() -> dict[str, bytes]:
    return max_size_uploads()


def test_gateway_memory_is_bounded_under_32_max_size_uploads(
    world: World, uploads: dict[str, bytes], tmp_path: Path
) -> None:
    figure = gateway_figure(world, mixed_burst(uploads), tmp_path)
    print("\n" + figure.table())
    (burst,) = figure.bursts
    assert burst.outcomes == {"OK": 32}, burst.outcomes  # everyone waited for the budget and was answered
    assert burst.peak_mb <= PEAK_LIMIT_MB, figure.table()
    assert figure.settled_mb <= SETTLED_LIMIT_MB, figure.table()


def test_embedder_memory_is_bounded_under_embed_and_embed_stream(
    world: World, uploads: dict[str, bytes], tmp_path: Path
) -> None:
    figure = embedder_figure(world, uploads, tmp_path, embed_images=32, stream_requests=8)
    print("\n" + figure.table())
    (burst,) = figure.bursts
    assert burst.outcomes == {"OK": 64}, burst.outcomes
    assert burst.peak_mb <= PEAK_LIMIT_MB, figure.table()
    assert figure.settled_mb <= SETTLED_LIMIT_MB, figure.table()


def test_a_full_budget_refuses_with_retry_after_and_an_oversized_decode_with_413(
    world: World, uploads: dict[str, bytes]
) -> None:
    settings = GatewaySettings(
        grpc_port=0,
        http_port=0,
        model_dir=world.model_dir,
        store_path=world.store_path,
        decode_budget_mb=100,  # one 40 MP 1-bit PNG (70 MiB) at a time
        decode_wait_s=0,  # and nobody waits
        embed_timeout_s=60,
    )
    bitmap = uploads["png-1bit"]
    own = decode_budget.limit_bytes, decode_budget.wait_s  # the gateway sizes this process' budget
    try:
        with start_gateway(settings) as running:
            port = running.server.http_port

            def http_search(image: bytes) -> tuple[int, str | None, dict[str, object]]:
                body, content_type = multipart_body(image)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                conn.request("POST", SEARCH_PATH, body=body, headers={"Content-Type": content_type})
                answer = conn.getresponse()
                result = answer.status, answer.getheader("Retry-After"), json.loads(answer.read())
                conn.close()
                return result

            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(http_search, [bitmap] * 8))
            statuses = sorted(status for status, _, _ in answers)
            assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
            for status, retry_after, body in answers:
                if status == 503:
                    assert retry_after == "1" and "busy" in str(body["errorMessage"]), body

            with (
                RecipeSearchClient(running.grpc_address, timeout_s=120) as client,
                ThreadPoolExecutor(8) as pool,
            ):

                def grpc_search(image: bytes) -> str:
                    try:
                        client.search(image)
                    except grpc.RpcError as exc:
                        return f"{exc.code().name}: {exc.details()}"
                    return "OK"

                codes = list(pool.map(grpc_search, [bitmap] * 8))
            assert "OK" in codes and any(
                c.startswith("RESOURCE_EXHAUSTED: ") and "busy" in c for c in codes
            ), codes

            webp = big_upload("webp")  # 40 MP WebP: its decoder would hold ~640 MiB, over the whole budget
            status, _, body = http_search(webp)
            assert status == 413 and "decoding budget of 100 MiB" in str(body["errorMessage"]), body
    finally:
        configure_decoding(*own)


def test_budget_admits_in_order_and_a_decode_bigger_than_it_runs_alone() -> None:
    budget = DecodeBudget(limit_bytes=100, wait_s=0.2)
    with budget.reserve(60):
        with pytest.raises(DecodeBudgetBusy, match="busy"), budget.reserve(60):
            pass
        with budget.reserve(40):
            assert budget.in_flight_bytes == 100
    with budget.reserve(500):  # alone: admitted
        assert budget.in_flight_bytes == 500
    assert budget.in_flight_bytes == 0 and budget.peak_bytes == 500 and budget.refused == 1


def _odd_sized(mode: str, size: tuple[int, int]) -> bytes:
    """A picture in ``mode`` whose sides are not multiples of the reduction factor (partial edge blocks)."""
    rgb = synthetic_photo(11, (size[0] // 4, size[1] // 4)).resize(size, Image.Resampling.BICUBIC)
    if mode == "I;16":
        grey = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257 + 3
        return encode(Image.fromarray(grey), "PNG")
    if mode == "RGBA":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(size))
        return encode(rgba, "PNG")
    if mode == "PT":
        palette = rgb.quantize(32)
        palette.info["transparency"] = 3
        return encode(palette, "PNG", transparency=3)
    if mode == "F":
        return encode(Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.float32) / 7.0), "TIFF")
    if mode == "I":
        return encode(Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.int32) * 1000), "TIFF")
    return encode(rgb.convert(mode), "PNG" if mode in ("1", "L", "P") else "TIFF")


@pytest.mark.parametrize("mode", ["1", "L", "P", "PT", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_strip_by_strip_reduction_gives_the_whole_image_tensor(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _odd_sized(mode, (2011, 1499))
    monkeypatch.setattr(preprocessing, "STRIP_PIXELS", 10**12)  # one strip: the whole image at once
    whole = preprocessing.decode(data).resize((224, 224), Image.Resampling.BILINEAR, reducing_gap=3.0)
    monkeypatch.setattr(preprocessing, "STRIP_PIXELS", 40_000)  # ~20 strips, each a multiple of the factor
    stripped = preprocessing.preprocess(data)
    np.testing.assert_array_equal(stripped, np.asarray(whole))
