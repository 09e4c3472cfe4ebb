"""How the gateway turns one photo into a query vector: in-process onnxruntime or the embedder service.

Both adapters split the work into the two stages the metrics show: ``prepare`` (decode; in-process only —
the remote embedder decodes on its side) and ``embed``. Both also satisfy the synchronous
:class:`gateway.search.QueryEmbedder` protocol, so :class:`gateway.search.RecipeSearcher` can use them as is.
Errors leave as :class:`GatewayError` with the status a caller can act on.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np

from embedder.batcher import MicroBatcher
from embedder.memory import DecodeBudgetBusy
from embedder.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageTooLargeError, preprocess
from embedder.runtime import DEFAULT_PROVIDERS
from gateway.errors import ErrorKind, GatewayError
from gateway.search import LocalQueryEmbedder, ModelUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedderStatus:
    """What the embedder holds: the model versions it can embed with and where it runs."""

    versions: list[str]
    description: str


class AsyncEmbedder(Protocol):
    """The gateway's view of an embedder (see the module docstring)."""

    async def prepare(self, image: bytes, model_version: str, executor: Executor) -> Any: ...

    async def embed_prepared(self, prepared: Any, model_version: str, timeout_s: float) -> np.ndarray: ...

    async def status(self, timeout_s: float) -> EmbedderStatus: ...

    def embed(self, image: bytes, model_version: str) -> np.ndarray: ...

    async def aclose(self) -> None: ...


class InProcessEmbedder:
    """onnxruntime in the gateway's own process (the embedded default), with micro-batching per model."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        providers: tuple[str, ...] = DEFAULT_PROVIDERS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_batch_size: int = 32,
        max_delay_s: float = 0.002,
    ) -> None:
        self.local = LocalQueryEmbedder(model_dir, providers=providers)
        for folder, reason in self.local.verify().items():  # raises when no model folder passes
            log.error("model folder %s refused: %s", folder, reason)
        self.max_pixels = max_pixels
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._batchers: dict[str, MicroBatcher[np.ndarray, np.ndarray]] = {}

    def _model(self, model_version: str) -> Any:
        try:
            return self.local.model(model_version)
        except ModelUnavailableError as exc:
            raise GatewayError(ErrorKind.FAILED_PRECONDITION, str(exc)) from None

    async def prepare(self, image: bytes, model_version: str, executor: Executor) -> np.ndarray:
        def decode() -> np.ndarray:
            size = self._model(model_version).image_size
            try:
                return preprocess(image, size=size, max_pixels=self.max_pixels)
            except ImageTooLargeError as exc:
                raise GatewayError(ErrorKind.RESOURCE_EXHAUSTED, f"image: {exc}") from None
            except DecodeBudgetBusy as exc:
                raise GatewayError(ErrorKind.OVERLOADED, f"image: {exc}") from None
            except ImageDecodeError as exc:
                raise GatewayError(ErrorKind.INVALID_ARGUMENT, f"image: {exc}") from None

        return await asyncio.get_running_loop().run_in_executor(executor, decode)

    async def embed_prepared(self, prepared: np.ndarray, model_version: str, timeout_s: float) -> np.ndarray:
        batcher = self._batchers.get(model_version)
        if batcher is None:
            model = self._model(model_version)

            def run(batch: list[np.ndarray]) -> list[np.ndarray]:
                return list(model.embed_arrays(np.stack(batch)))

            batcher = MicroBatcher(
                run,
                max_batch_size=self.max_batch_size,
                max_delay_s=self.max_delay_s,
                name=f"embed-{model_version}",
            )
            self._batchers[model_version] = batcher
        (vector,) = await batcher.submit([prepared])
        return vector

    async def status(self, timeout_s: float) -> EmbedderStatus:
        versions = sorted(await asyncio.to_thread(self.local.available))
        return EmbedderStatus(versions, f"in-process onnxruntime from {self.local.model_dir}")

    def embed(self, image: bytes, model_version: str) -> np.ndarray:
        try:
            return self.local.embed(image, model_version)
        except ModelUnavailableError as exc:
            raise GatewayError(ErrorKind.FAILED_PRECONDITION, str(exc)) from None
        except ImageDecodeError as exc:
            raise GatewayError(ErrorKind.INVALID_ARGUMENT, f"image: {exc}") from None

    async def aclose(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()


_REMOTE_KINDS = {
    grpc.StatusCode.INVALID_ARGUMENT: ErrorKind.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ErrorKind.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND: ErrorKind.FAILED_PRECONDITION,  # the collection's model is not served
    grpc.StatusCode.FAILED_PRECONDITION: ErrorKind.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE: ErrorKind.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ErrorKind.UNAVAILABLE,
    grpc.StatusCode.CANCELLED: ErrorKind.UNAVAILABLE,
}


class RemoteEmbedder:
    """The embedder service over gRPC through one reused :class:`embedder.client.EmbedderClient`.

    The client's own deadline and retry-with-backoff on UNAVAILABLE apply; on top of that every call is
    bounded by the caller's remaining time, so the gateway answers UNAVAILABLE within its deadline.
    """

    def __init__(
        self, address: str, *, timeout_s: float = 10.0, retries: int = 2, backoff_s: float = 0.1
    ) -> None:
        from embedder.client import EmbedderClient

        self.address = address
        self.client = EmbedderClient(address, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)

    def _error(self, exc: Exception) -> GatewayError:
        code = getattr(exc, "code", None)
        code = code() if callable(code) else code
        details = getattr(exc, "details", None)
        details = details() if callable(details) else details
        kind = (
            _REMOTE_KINDS.get(code, ErrorKind.INTERNAL)
            if isinstance(code, grpc.StatusCode)
            else ErrorKind.INTERNAL
        )
        if kind is ErrorKind.RESOURCE_EXHAUSTED and "busy" in str(details):
            kind = ErrorKind.OVERLOADED  # the embedder's decoding budget is full: retry
        if kind is ErrorKind.UNAVAILABLE:
            return GatewayError(kind, f"embedder at {self.address} is unavailable: {details or exc}")
        return GatewayError(kind, f"embedder: {details or exc}")

    async def prepare(self, image: bytes, model_version: str, executor: Executor) -> bytes:
        return image

    def embed(self, image: bytes, model_version: str) -> np.ndarray:
        try:
            result = self.client.embed([image], model_version=model_version)
        except GatewayError:
            raise
        except Exception as exc:
            raise self._error(exc) from None
        if result.model_version != model_version:
            raise GatewayError(
                ErrorKind.FAILED_PRECONDITION,
                f"embedder answered with model {result.model_version}, the collection needs {model_version}",
            )
        return np.asarray(result.vectors[0], dtype=np.float32)

    async def embed_prepared(self, prepared: bytes, model_version: str, timeout_s: float) -> np.ndarray:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.embed, prepared, model_version), timeout_s)
        except TimeoutError:
            raise GatewayError(
                ErrorKind.UNAVAILABLE, f"embedder at {self.address} did not answer within {timeout_s:.1f} s"
            ) from None

    async def status(self, timeout_s: float) -> EmbedderStatus:
        try:
            info = await asyncio.wait_for(asyncio.to_thread(self.client.model_info), timeout_s)
        except TimeoutError:
            raise GatewayError(
                ErrorKind.UNAVAILABLE, f"embedder at {self.address} did not answer within {timeout_s:.1f} s"
            ) from None
        except Exception as exc:
            raise self._error(exc) from None
        versions = sorted(m.version for m in info.models)
        return EmbedderStatus(versions, f"embedder service at {self.address}")

    async def aclose(self) -> None:
        self.client.close()
