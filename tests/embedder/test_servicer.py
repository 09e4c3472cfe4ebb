"""The servicer's request logic without a port: refusals carry the status the RPC aborts with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from recipelens.v1 import embedder_pb2

from embedder.errors import EmbedderError
from embedder.inprocess import InProcessEmbedder
from embedder.repository import ModelRepository
from embedder.runtime import EmbeddingModel
from embedder.servicer import EmbedderServicer
from tests.embedder.conftest import settings_for


@pytest.fixture
async def servicer(two_models: tuple[Path, str, str]) -> AsyncIterator[EmbedderServicer]:
    root, _, _ = two_models
    settings = settings_for(root, max_images_per_request=4)
    with ThreadPoolExecutor(2) as pool:
        embedder = InProcessEmbedder(max_batch_size=4)
        servicer = EmbedderServicer(settings, pool, embedder)
        with pytest.raises(EmbedderError) as info:  # before the models are loaded
            await servicer.embed(embedder_pb2.EmbedRequest(images=[b"x"]))
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and not servicer.ready
        await embedder.attach(ModelRepository(root, providers=["CPUExecutionProvider"]))
        yield servicer
        await embedder.aclose()


async def _refused(servicer: EmbedderServicer, request: embedder_pb2.EmbedRequest) -> EmbedderError:
    with pytest.raises(EmbedderError) as info:
        await servicer.embed(request)
    return info.value


async def test_embed_answers_with_the_default_or_the_asked_version(
    servicer: EmbedderServicer, two_models: tuple[Path, str, str], photo_bytes: list[bytes]
) -> None:
    root, old, new = two_models
    response = await servicer.embed(embedder_pb2.EmbedRequest(images=photo_bytes[:3], request_id="q"))
    assert (response.model_version, response.dimension, response.request_id) == (new, 64, "q")
    asked = await servicer.embed(embedder_pb2.EmbedRequest(images=photo_bytes[:2], model_version=old))
    expected = EmbeddingModel(root / "m-seed0").embed_images(photo_bytes[:2])
    np.testing.assert_allclose([e.values for e in asked.embeddings], expected, atol=1e-5)
    assert servicer.default_version == new and list(servicer.served()) == [new, old]


async def test_refusals(servicer: EmbedderServicer, photo_bytes: list[bytes]) -> None:
    empty = await _refused(servicer, embedder_pb2.EmbedRequest())
    assert empty.code == grpc.StatusCode.INVALID_ARGUMENT and "no images" in empty.details
    many = await _refused(servicer, embedder_pb2.EmbedRequest(images=photo_bytes[:5]))
    assert many.code == grpc.StatusCode.INVALID_ARGUMENT and "limit of 4" in many.details
    bad = await _refused(servicer, embedder_pb2.EmbedRequest(images=[photo_bytes[0], b"junk"]))
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT and bad.details.startswith("image 1:")
    unknown = await _refused(servicer, embedder_pb2.EmbedRequest(images=photo_bytes[:1], model_version="f00"))
    assert unknown.code == grpc.StatusCode.NOT_FOUND and "'f00'" in unknown.details
