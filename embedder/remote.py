"""The embedder service over gRPC behind the :class:`~embedder.embedding.Embedder` interface.

One reused :class:`embedder.client.EmbedderClient`: its deadline and retry-with-backoff on UNAVAILABLE apply,
and every call is also bounded by the caller's remaining time, so a caller answers within its deadline.
Imports no onnxruntime.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor

import grpc
import numpy as np

from embedder.client import EmbedderClient
from embedder.embedding import DecodedPhoto, Embedder, EmbedderStatus, ModelSummary
from embedder.errors import EmbedderError


class RemoteEmbedder(Embedder):
    """Photos travel as encoded bytes; the service decodes, batches and embeds them."""

    def __init__(
        self, address: str, *, timeout_s: float = 10.0, retries: int = 2, backoff_s: float = 0.1
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.client = EmbedderClient(address, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)

    def _late(self, timeout_s: float | None) -> EmbedderError:
        return EmbedderError(
            grpc.StatusCode.UNAVAILABLE,
            f"embedder at {self.address} did not answer within {timeout_s or self.timeout_s:.1f} s",
        )

    async def prepare(self, image: bytes, model_version: str, executor: Executor | None = None) -> bytes:
        return image

    def prepared(self, photo: DecodedPhoto) -> bytes:
        return photo.data

    async def embed_prepared(
        self, prepared: Sequence[bytes], model_version: str, timeout_s: float | None = None
    ) -> np.ndarray:
        return await self._embed(prepared, model_version, timeout_s, gallery=False)

    async def embed_gallery(
        self,
        photos: Sequence[DecodedPhoto],
        model_version: str,
        timeout_s: float | None = None,
        executor: Executor | None = None,
    ) -> np.ndarray:
        """The service embeds the bytes at each gallery size and combines them (``gallery`` requests)."""
        return await self._embed([p.data for p in photos], model_version, timeout_s, gallery=True)

    async def _embed(
        self, images: Sequence[bytes], model_version: str, timeout_s: float | None, *, gallery: bool
    ) -> np.ndarray:
        try:
            result = await asyncio.wait_for(
                asyncio.to_thread(self.client.embed, list(images), model_version, gallery=gallery), timeout_s
            )
        except TimeoutError:
            raise self._late(timeout_s) from None
        if result.model_version != model_version:
            raise EmbedderError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"embedder answered with model {result.model_version}, the caller needs {model_version}",
            )
        return np.asarray(result.vectors, dtype=np.float32)

    def stream(
        self, batches: Iterable[Sequence[bytes]], model_version: str, max_in_flight: int
    ) -> Iterator[np.ndarray]:
        """Bulk embedding (the indexer) over one EmbedStream with ``max_in_flight`` batches ahead."""
        for result in self.client.embed_stream(batches, model_version, max_in_flight=max_in_flight):
            if result.model_version != model_version:
                raise EmbedderError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"embedder answered with model {result.model_version}, the caller needs {model_version}",
                )
            yield result.vectors

    async def status(self, timeout_s: float = 10.0) -> EmbedderStatus:
        try:
            info = await asyncio.wait_for(asyncio.to_thread(self.client.model_info), timeout_s)
        except TimeoutError:
            raise self._late(timeout_s) from None
        models = [
            ModelSummary(m.version, m.dimension, m.image_size, tuple(m.gallery_sizes)) for m in info.models
        ]
        runs = ", ".join(f"{m.version} {m.name} on {m.provider}" for m in info.models)
        description = f"embedder service at {self.address} ({runs or 'no model'})"
        return EmbedderStatus(models, info.default_version or None, description)

    async def wait_ready(self, timeout_s: float) -> None:
        await asyncio.to_thread(self.client.wait_ready, timeout_s)

    async def aclose(self) -> None:
        # In a thread: closing the channel waits for calls still retrying; the loop must not stall meanwhile.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(self.client.close), 5.0)
