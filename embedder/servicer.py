"""``recipelens.v1.Embedder``: thin translation of requests to calls of the in-process embedder.

One request's path: checks (count) → the model of the asked version → images decoded and preprocessed in
the decode pool → the model's micro-batcher (concurrent callers share onnxruntime runs) → response. Every
refusal leaves as ``context.abort`` with the :class:`~embedder.errors.EmbedderError`'s status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NoReturn

import grpc
import numpy as np
from recipelens.v1 import embedder_pb2, embedder_pb2_grpc

from embedder.batcher import BatchStats
from embedder.errors import EmbedderError
from embedder.inprocess import InProcessEmbedder, ServedModel
from embedder.memory import DecodeBudgetBusy
from embedder.preprocess import ImageDecodeError
from embedder.runtime import select_providers
from embedder.settings import EmbedderSettings

log = logging.getLogger(__name__)

STREAM_MAX_IN_FLIGHT = 8  # requests of one EmbedStream being worked on at once


@dataclass(frozen=True)
class _Decoded:
    """A request's photo: its bytes and its array at the model's size (a ``DecodedPhoto``)."""

    data: bytes
    array: np.ndarray


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover


class EmbedderServicer(embedder_pb2_grpc.EmbedderServicer):
    """Embed, EmbedStream and ModelInfo over the models of one in-process embedder."""

    def __init__(
        self, settings: EmbedderSettings, decode_pool: ThreadPoolExecutor, embedder: InProcessEmbedder
    ) -> None:
        self.settings = settings
        self.providers = select_providers(settings.providers)
        self.embedder = embedder
        self._pool = decode_pool

    @property
    def ready(self) -> bool:
        return self.embedder.ready

    @property
    def default_version(self) -> str | None:
        return self.embedder.default_version

    def served(self) -> dict[str, ServedModel]:
        """Versions being served (newest first)."""
        return self.embedder.served()

    def batch_stats(self, version: str | None = None) -> BatchStats:
        """Batching counters of one model (default: the default model)."""
        return self.embedder.batch_stats(version)

    # -- the work ---------------------------------------------------------------------------------------

    async def _decode(self, images: Sequence[bytes], version: str) -> list[np.ndarray]:
        arrays: list[np.ndarray] = []
        for index, result in enumerate(await self.embedder.prepare_many(images, version, self._pool)):
            if isinstance(result, ImageDecodeError):
                raise EmbedderError(grpc.StatusCode.INVALID_ARGUMENT, f"image {index}: {result}")
            if isinstance(result, DecodeBudgetBusy):
                raise EmbedderError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"image {index}: {result}")
            if isinstance(result, BaseException):
                raise result
            arrays.append(result)
        return arrays

    async def embed(self, request: embedder_pb2.EmbedRequest) -> embedder_pb2.EmbedResponse:
        """Answer one EmbedRequest; raises :class:`EmbedderError` for a request the service refuses."""
        count = len(request.images)
        if count == 0:
            raise EmbedderError(grpc.StatusCode.INVALID_ARGUMENT, "the request holds no images")
        limit = self.settings.max_images_per_request
        if count > limit:
            raise EmbedderError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{count} images in one request exceed the limit of {limit} "
                "(RECIPELENS_EMBEDDER_MAX_IMAGES_PER_REQUEST); send smaller batches",
            )
        model = self.embedder.resolve(request.model_version).model
        arrays = await self._decode(request.images, model.version)
        if request.gallery and len(model.gallery_views) > 1:
            photos = [_Decoded(data, array) for data, array in zip(request.images, arrays, strict=True)]
            vectors = await self.embedder.embed_gallery(photos, model.version, executor=self._pool)
        else:
            vectors = await self.embedder.embed_prepared(arrays, model.version)
        return embedder_pb2.EmbedResponse(
            embeddings=[embedder_pb2.Embedding(values=v.tolist()) for v in vectors],
            model_version=model.version,
            dimension=model.dimension,
            request_id=request.request_id,
        )

    async def _counted(self, method: str, request: embedder_pb2.EmbedRequest) -> embedder_pb2.EmbedResponse:
        """:meth:`embed`, counted in the embedder's metrics (calls, images, errors by status, latency)."""
        metrics = self.embedder.metrics
        if metrics is None:
            return await self.embed(request)
        start = time.perf_counter()
        metrics.in_flight.inc()
        try:
            response = await self.embed(request)
        except EmbedderError as exc:
            metrics.observe_error(method, exc.code.name, time.perf_counter() - start)
            raise
        except asyncio.CancelledError:
            metrics.observe_error(method, grpc.StatusCode.CANCELLED.name)
            raise
        except Exception:
            metrics.observe_error(method, grpc.StatusCode.INTERNAL.name, time.perf_counter() - start)
            raise
        finally:
            metrics.in_flight.dec()
        metrics.observe_call(method, response.model_version, len(request.images), time.perf_counter() - start)
        return response

    # -- RPCs -------------------------------------------------------------------------------------------

    async def Embed(
        self, request: embedder_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.EmbedResponse:
        try:
            return await self._counted("Embed", request)
        except EmbedderError as exc:
            log.info("Embed refused (%s): %s", exc.code.name, exc.details)
            await _abort(context, exc.code, exc.details)
        except Exception as exc:
            log.exception("Embed failed")
            await _abort(context, grpc.StatusCode.INTERNAL, f"embedding failed: {exc}")

    async def EmbedStream(
        self,
        request_iterator: AsyncIterator[embedder_pb2.EmbedRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[embedder_pb2.EmbedResponse]:
        pending: asyncio.Queue[tuple[str, asyncio.Task[embedder_pb2.EmbedResponse]] | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_MAX_IN_FLIGHT)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    pending.put_nowait(
                        (request.request_id, asyncio.create_task(self._counted("EmbedStream", request)))
                    )
            finally:
                pending.put_nowait(None)

        reader = asyncio.create_task(read())
        index = 0
        try:
            while (item := await pending.get()) is not None:
                request_id, task = item
                try:
                    response = await task
                except EmbedderError as exc:
                    message = f"stream request {index} (request_id={request_id!r}): {exc.details}"
                    log.info("EmbedStream refused (%s): %s", exc.code.name, message)
                    await _abort(context, exc.code, message)
                except Exception as exc:
                    log.exception("EmbedStream failed")
                    await _abort(context, grpc.StatusCode.INTERNAL, f"stream request {index}: {exc}")
                slots.release()
                yield response
                index += 1
            await reader
        finally:
            reader.cancel()
            while not pending.empty():
                left = pending.get_nowait()
                if left is None:
                    continue
                if not left[1].done():
                    left[1].cancel()
                elif not left[1].cancelled():
                    left[1].exception()  # retrieved, so asyncio does not warn about it

    async def ModelInfo(
        self, request: embedder_pb2.ModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.ModelInfoResponse:
        try:
            if request.model_version:
                models = [self.embedder.resolve(request.model_version).model]
            else:
                self.embedder.resolve("")
                models = [s.model for s in self.embedder.served().values()]
        except EmbedderError as exc:
            await _abort(context, exc.code, exc.details)
        return embedder_pb2.ModelInfoResponse(
            models=[
                embedder_pb2.Model(
                    version=m.version,
                    name=m.manifest.name,
                    backbone=m.manifest.backbone,
                    dimension=m.dimension,
                    image_size=m.image_size,
                    created_at=m.manifest.created_at,
                    provider=m.provider,
                    gallery_sizes=list(m.gallery_views),
                )
                for m in models
            ],
            default_version=self.embedder.default_version or "",
            providers=self.providers,
        )
