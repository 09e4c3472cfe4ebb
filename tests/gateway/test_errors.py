"""One error type: what the embedder and the store raise, as a GatewayError with gRPC and HTTP codes."""

from __future__ import annotations

import grpc

from embedder.errors import EmbedderError
from embedder.preprocess import ImageDecodeError
from embedder.repository import UnknownModelError
from gateway.errors import ErrorKind, GatewayError, embedder_failure, store_failure
from indexer.store.base import ModelVersionMismatch


def test_each_kind_has_its_grpc_and_http_status() -> None:
    assert ErrorKind.INVALID_ARGUMENT.grpc_status == grpc.StatusCode.INVALID_ARGUMENT
    assert {k.http_status for k in ErrorKind} == {400, 401, 404, 409, 413, 503, 500}
    assert str(GatewayError(ErrorKind.NOT_FOUND, "no recipe")) == "no recipe"


def test_embedder_failures() -> None:
    unknown = embedder_failure(UnknownModelError("abc", ["def"]), "abc")
    assert unknown.kind is ErrorKind.FAILED_PRECONDITION and "abc" in unknown.message
    decode = embedder_failure(ImageDecodeError("truncated"))
    assert decode.kind is ErrorKind.INVALID_ARGUMENT and decode.message == "image: truncated"
    for code, kind in (
        (grpc.StatusCode.UNAVAILABLE, ErrorKind.UNAVAILABLE),
        (grpc.StatusCode.DEADLINE_EXCEEDED, ErrorKind.UNAVAILABLE),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorKind.RESOURCE_EXHAUSTED),
        (grpc.StatusCode.NOT_FOUND, ErrorKind.FAILED_PRECONDITION),
        (grpc.StatusCode.DATA_LOSS, ErrorKind.INTERNAL),
    ):
        mapped = embedder_failure(EmbedderError(code, "details"))
        assert mapped.kind is kind and "embedder" in mapped.message and "details" in mapped.message
    assert embedder_failure(RuntimeError("boom")).kind is ErrorKind.INTERNAL
    same = GatewayError(ErrorKind.UNAVAILABLE, "late")
    assert embedder_failure(same) is same and store_failure(same, "search") is same


def test_store_failures() -> None:
    mismatch = store_failure(ModelVersionMismatch("c", "a", "b"), "search")
    assert mismatch.kind is ErrorKind.FAILED_PRECONDITION
    down = store_failure(ConnectionError("refused"), "search")
    assert down.kind is ErrorKind.UNAVAILABLE and "store unavailable during search" in down.message
