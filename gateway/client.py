"""A synchronous Python client for ``recipelens.v1.RecipeSearch`` (one channel, a deadline per call)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recipelens.v1 import search_pb2, search_pb2_grpc

from embedder.background import Closeable
from protos.services import RECIPE_SEARCH_SERVICE


def search_filter(
    categories: Sequence[str] = (), must_include: Sequence[str] = (), must_exclude: Sequence[str] = ()
) -> search_pb2.SearchFilter:
    """Build the protobuf filter from plain lists."""
    return search_pb2.SearchFilter(
        categories=list(categories),
        must_include_ingredients=list(must_include),
        must_exclude_ingredients=list(must_exclude),
    )


class RecipeSearchClient(Closeable):
    """Talks to one gateway; thread-safe. Errors are ``grpc.RpcError`` with the gateway's status code."""

    def __init__(
        self,
        address: str,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        *,
        root_certificates: Path | None = None,
        max_message_bytes: int = 16 << 20,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates.read_bytes())
            self._channel = grpc.secure_channel(address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = search_pb2_grpc.RecipeSearchStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def search(
        self,
        image: bytes,
        top_k: int = 5,
        filter: search_pb2.SearchFilter | None = None,
        offset: int = 0,
        *,
        timeout_s: float | None = None,
        min_confidence: float = 0.0,
    ) -> search_pb2.SearchByImageResponse:
        """The top ``top_k`` recipes for a photo after ``offset``, none below ``min_confidence``."""
        request = search_pb2.SearchByImageRequest(
            image=image, top_k=top_k, filter=filter, offset=offset, min_confidence=min_confidence
        )
        response: search_pb2.SearchByImageResponse = self._stub.SearchByImage(
            request, timeout=timeout_s or self.timeout_s, metadata=self._metadata
        )
        return response

    def get_recipe(self, recipe_id: str, *, timeout_s: float | None = None) -> search_pb2.Recipe:
        recipe: search_pb2.Recipe = self._stub.GetRecipe(
            search_pb2.GetRecipeRequest(id=recipe_id),
            timeout=timeout_s or self.timeout_s,
            metadata=self._metadata,
        )
        return recipe

    def health(self, service: str = RECIPE_SEARCH_SERVICE) -> str:
        """``SERVING`` once the gateway's store and embedder answer and agree."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def close(self) -> None:
        self._channel.close()
