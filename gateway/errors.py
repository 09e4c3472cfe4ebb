"""One error type for everything a caller can get wrong or wait out, mapped to gRPC and HTTP statuses.

The search path raises only :class:`GatewayError`; what the embedder and the store raise is translated here,
once (:func:`embedder_failure`, :func:`store_failure`), and the front ends only read ``kind``.
"""

from __future__ import annotations

import logging
from enum import Enum

import grpc

from embedder.errors import EmbedderError
from embedder.memory import DecodeBudgetBusy
from embedder.preprocess import ImageDecodeError, ImageTooLargeError
from indexer.store.base import InvalidFilter, ModelVersionMismatch

log = logging.getLogger(__name__)


class ErrorKind(Enum):
    """What went wrong, as a caller can act on it: (gRPC status, HTTP status)."""

    INVALID_ARGUMENT = (grpc.StatusCode.INVALID_ARGUMENT, 400)
    UNAUTHENTICATED = (grpc.StatusCode.UNAUTHENTICATED, 401)
    NOT_FOUND = (grpc.StatusCode.NOT_FOUND, 404)
    FAILED_PRECONDITION = (grpc.StatusCode.FAILED_PRECONDITION, 409)
    RESOURCE_EXHAUSTED = (grpc.StatusCode.RESOURCE_EXHAUSTED, 413)
    OVERLOADED = (grpc.StatusCode.RESOURCE_EXHAUSTED, 503)  # busy right now: retry (HTTP Retry-After)
    UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, 503)
    INTERNAL = (grpc.StatusCode.INTERNAL, 500)

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]


class GatewayError(Exception):
    """A request the gateway cannot answer; ``kind`` says which status, the message what to do."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message


# The embedder's statuses as the gateway's caller sees them.
_EMBEDDER_KINDS = {
    grpc.StatusCode.INVALID_ARGUMENT: ErrorKind.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ErrorKind.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND: ErrorKind.FAILED_PRECONDITION,  # the collection's model is not served
    grpc.StatusCode.FAILED_PRECONDITION: ErrorKind.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE: ErrorKind.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ErrorKind.UNAVAILABLE,
    grpc.StatusCode.CANCELLED: ErrorKind.UNAVAILABLE,
}

# Decoding failures of the in-process embedder, most specific first.
_DECODE_KINDS: tuple[tuple[type[Exception], ErrorKind], ...] = (
    (ImageTooLargeError, ErrorKind.RESOURCE_EXHAUSTED),  # over the pixel limit or the whole decoding budget
    (ImageDecodeError, ErrorKind.INVALID_ARGUMENT),
    (DecodeBudgetBusy, ErrorKind.OVERLOADED),  # the budget is full right now: retry
)


def embedder_failure(exc: Exception, model_version: str = "") -> GatewayError:
    """What the embedder raised (in-process or remote), as the gateway's error."""
    if isinstance(exc, GatewayError):
        return exc
    for decode_error, decode_kind in _DECODE_KINDS:  # in-process decoding
        if isinstance(exc, decode_error):
            return GatewayError(decode_kind, f"image: {exc}")
    if not isinstance(exc, EmbedderError):
        return GatewayError(ErrorKind.INTERNAL, f"embedder: {type(exc).__name__}: {exc}")
    kind = _EMBEDDER_KINDS.get(exc.code, ErrorKind.INTERNAL)
    if kind is ErrorKind.RESOURCE_EXHAUSTED and "busy" in exc.details:
        kind = ErrorKind.OVERLOADED  # the embedder's decoding budget is full: retry
    if exc.code == grpc.StatusCode.NOT_FOUND and model_version:
        return GatewayError(
            kind, f"model version {model_version} (which filled the collection) is not served: {exc.details}"
        )
    if kind is ErrorKind.UNAVAILABLE:
        return GatewayError(kind, f"embedder unavailable: {exc.details}")
    return GatewayError(kind, f"embedder: {exc.details}")


def store_failure(exc: Exception, what: str) -> GatewayError:
    """What the store raised during ``what``, as the gateway's error."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, ModelVersionMismatch):
        return GatewayError(ErrorKind.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, InvalidFilter):
        return GatewayError(ErrorKind.INVALID_ARGUMENT, str(exc))
    log.warning("store failed during %s: %s: %s", what, type(exc).__name__, exc)
    return GatewayError(
        ErrorKind.UNAVAILABLE, f"store unavailable during {what}: {type(exc).__name__}: {exc}"
    )
