"""A synchronous client for the embedder service (``recipelens.v1.Embedder``).

One channel per client, reused by every call. Unary calls are retried with exponential backoff on
UNAVAILABLE only (server restarting, not up yet) within the client's deadline; every other failure raises
:class:`EmbedderError` carrying the gRPC status code. Imports only grpc, numpy and the generated code, so
the gateway and the indexer can use it without onnxruntime.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recipelens.v1 import embedder_pb2, embedder_pb2_grpc

from embedder.background import Closeable
from embedder.errors import EmbedderError
from protos.services import EMBEDDER_SERVICE

__all__ = ["EmbedResult", "EmbedderClient", "EmbedderError"]

DEFAULT_MAX_MESSAGE_BYTES = 16 << 20  # the server's default limit (EmbedderSettings.max_message_bytes)
DEFAULT_MAX_IMAGES_PER_REQUEST = 64  # the server's default (EmbedderSettings.max_images_per_request)

Reply = TypeVar("Reply")


@dataclass(frozen=True)
class EmbedResult:
    """``vectors``: ``(N, D)`` float32 unit vectors, one per image, from model ``model_version``."""

    vectors: np.ndarray
    model_version: str

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])


def _vectors(response: embedder_pb2.EmbedResponse) -> np.ndarray:
    return np.array([e.values for e in response.embeddings], dtype=np.float32).reshape(
        len(response.embeddings), response.dimension
    )


class EmbedderClient(Closeable):
    """Talks to one embedder server; thread-safe; use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_images_per_request: int = DEFAULT_MAX_IMAGES_PER_REQUEST,
    ) -> None:
        if max_images_per_request < 1:
            raise ValueError("max_images_per_request must be at least 1")
        self.address = address
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_images_per_request = max_images_per_request
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
                # reconnect quickly after a server restart instead of grpc's default 1 s → 120 s backoff
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
                # spread calls over every address a dns:/// name resolves to (embedder replicas)
                ("grpc.lb_policy_name", "round_robin"),
            ],
        )
        self._stub = embedder_pb2_grpc.EmbedderStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # -- plumbing -------------------------------------------------------------------------------------

    def _call(self, method: Callable[..., Reply], request: Any, what: str) -> Reply:
        """One unary call, retried on UNAVAILABLE with exponential backoff until the deadline."""
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return method(request, timeout=max(remaining, 0.001))
            except grpc.RpcError as exc:
                code: grpc.StatusCode = exc.code()
                details: str = exc.details() or ""
                remaining = deadline - time.monotonic()
                pause = self.backoff_s * (2**attempt)
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries and pause < remaining:
                    time.sleep(pause)
                    attempt += 1
                    continue
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                raise EmbedderError(code, f"{what} to {self.address}: {details}{tries}") from None

    def _chunks(self, images: Sequence[bytes]) -> list[Sequence[bytes]]:
        n = self.max_images_per_request
        return [images[i : i + n] for i in range(0, len(images), n)]

    # -- API ------------------------------------------------------------------------------------------

    def embed(
        self, images: Sequence[bytes], model_version: str | None = None, *, gallery: bool = False
    ) -> EmbedResult:
        """One vector per image; large lists go in several requests, all to the same model version.

        ``gallery``: catalogue photos, embedded at each of the model's gallery sizes and combined.
        """
        images = list(images)
        if not images:
            raise ValueError("embed() needs at least one image")
        version = model_version or ""
        parts: list[np.ndarray] = []
        for start in range(0, len(images), self.max_images_per_request):
            chunk = images[start : start + self.max_images_per_request]
            request = embedder_pb2.EmbedRequest(images=chunk, model_version=version, gallery=gallery)
            try:
                response = self._call(self._stub.Embed, request, "Embed")
            except EmbedderError as exc:
                if start == 0:
                    raise
                where = f"images {start}..{start + len(chunk) - 1} (indexes below are within them): "
                raise EmbedderError(exc.code, where + exc.details) from None
            version = response.model_version  # later chunks must use the same model
            parts.append(_vectors(response))
        return EmbedResult(np.concatenate(parts), version)

    def embed_stream(
        self,
        batches: Iterable[Sequence[bytes]],
        model_version: str | None = None,
        *,
        max_in_flight: int = 4,
        timeout_s: float | None = None,
    ) -> Iterator[EmbedResult]:
        """One result per batch, in order, over one EmbedStream; up to ``max_in_flight`` requests ahead.

        ``batches`` is read lazily in the caller's thread. Without ``model_version`` the server's default at
        the start is pinned for the whole stream. ``timeout_s`` bounds the whole stream (default: none).
        """
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        version = model_version or self.model_info().default_version
        outbox: queue.Queue[embedder_pb2.EmbedRequest | None] = queue.Queue()

        def requests() -> Iterator[embedder_pb2.EmbedRequest]:
            while (request := outbox.get()) is not None:
                yield request

        call = self._stub.EmbedStream(requests(), timeout=timeout_s)
        source = iter(batches)
        expected: deque[tuple[int, int]] = deque()  # (batch index, number of requests) in send order
        sent = received = next_index = 0
        exhausted = finished = False
        try:
            while True:
                while not exhausted and sent - received < max_in_flight:
                    batch = next(source, None)
                    if batch is None:
                        exhausted = True
                        outbox.put(None)
                        break
                    index = next_index
                    next_index += 1
                    images = list(batch)
                    if not images:
                        raise ValueError(f"batch {index} holds no images")
                    chunks = self._chunks(images)
                    expected.append((index, len(chunks)))
                    for number, chunk in enumerate(chunks):
                        outbox.put(
                            embedder_pb2.EmbedRequest(
                                images=chunk, model_version=version, request_id=f"{index}.{number}"
                            )
                        )
                        sent += 1
                if not expected:
                    finished = True
                    return
                index, count = expected.popleft()
                parts: list[np.ndarray] = []
                served_by = version
                for _ in range(count):
                    response = next(call, None)
                    if response is None:
                        message = f"EmbedStream to {self.address} ended before batch {index}"
                        raise EmbedderError(grpc.StatusCode.INTERNAL, message)
                    received += 1
                    served_by = response.model_version
                    parts.append(_vectors(response))
                yield EmbedResult(np.concatenate(parts), served_by)
        except grpc.RpcError as exc:
            raise EmbedderError(exc.code(), f"EmbedStream to {self.address}: {exc.details() or ''}") from None
        finally:
            if not finished:
                call.cancel()
            outbox.put(None)

    def model_info(self, model_version: str | None = None) -> embedder_pb2.ModelInfoResponse:
        """The server's models, its default version and its execution providers."""
        request = embedder_pb2.ModelInfoRequest(model_version=model_version or "")
        return self._call(self._stub.ModelInfo, request, "ModelInfo")

    def health(self) -> str:
        """The embedder service's health status name (``SERVING``, ``NOT_SERVING``, ...)."""
        request = health_pb2.HealthCheckRequest(service=EMBEDDER_SERVICE)
        response = self._call(self._health.Check, request, "Health.Check")
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Poll the health service until the embedder is SERVING; ``TimeoutError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        request = health_pb2.HealthCheckRequest(service=EMBEDDER_SERVICE)
        last = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            try:
                response = self._health.Check(request, timeout=min(1.0, max(remaining, 0.01)))
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"embedder at {self.address} is not SERVING after {timeout_s:.1f}s (last answer: {last})"
                )
            time.sleep(min(0.1, remaining))

    def close(self) -> None:
        self._channel.close()
