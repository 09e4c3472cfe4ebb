"""One error type for everything a caller can get wrong or wait out, mapped to gRPC and HTTP statuses."""

from __future__ import annotations

from enum import Enum

import grpc


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
