"""The embedder's one error: a refusal or failure with the gRPC status a caller can act on.

Raised the same way by the in-process embedder, the remote one and the gRPC client, so callers map one
type (the servicer aborts with its code; the gateway turns the code into its own status).
"""

from __future__ import annotations

import grpc


class EmbedderError(RuntimeError):
    """The embedder answered with an error status (or could not be reached)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
