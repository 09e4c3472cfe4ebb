"""The embedder gRPC service: encoded photos in, unit vectors out (``recipelens.v1.Embedder``).

One request's path: images → decoded and preprocessed in a thread pool
(:func:`embedder.preprocess.preprocess`) → queued in the model's :class:`~embedder.batcher.MicroBatcher`,
so concurrent callers share onnxruntime runs → vectors → response. The standard ``grpc.health.v1``
service says NOT_SERVING until the models are loaded and warmed up; reflection lets generic clients
(grpcurl) discover the API.

Run it with ``recipelens-embedder`` (or ``python -m embedder``); settings come from
``RECIPELENS_EMBEDDER_*`` variables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import sys
from collections.abc import AsyncIterator, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, TypeVar

import grpc
import numpy as np
import onnxruntime as ort
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError
from recipelens.v1 import embedder_pb2, embedder_pb2_grpc

from embedder.background import BackgroundLoop, stop_on_signals
from embedder.batcher import BatcherClosedError, BatchStats, MicroBatcher
from embedder.logs import configure_logging
from embedder.memory import DecodeBudgetBusy, configure_decoding, tune_allocator
from embedder.preprocess import ImageDecodeError, preprocess
from embedder.repository import ModelRepository, ModelRepositoryError, RefreshReport
from embedder.runtime import EmbeddingModel, select_providers
from embedder.settings import EmbedderSettings

log = logging.getLogger(__name__)

SERVICE_NAME: str = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name
STREAM_MAX_IN_FLIGHT = 8  # requests of one EmbedStream being worked on at once
T = TypeVar("T")


class ServerStartError(RuntimeError):
    """The server could not start (port taken, no usable model); the message says why."""


class RequestError(Exception):
    """A request the service refuses, with the gRPC status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover


@dataclass
class ServedModel:
    """A loaded model and the batcher that feeds it."""

    model: EmbeddingModel
    batcher: MicroBatcher[np.ndarray, np.ndarray]


def _run_model(model: EmbeddingModel, arrays: list[np.ndarray]) -> list[np.ndarray]:
    return list(model.embed_arrays(np.stack(arrays)))


class EmbedderServicer(embedder_pb2_grpc.EmbedderServicer):
    """``recipelens.v1.Embedder``: Embed, EmbedStream and ModelInfo over the models of a repository."""

    def __init__(self, settings: EmbedderSettings, decode_pool: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.providers = select_providers(settings.providers)
        self._pool = decode_pool
        self._served: dict[str, ServedModel] = {}
        self._default: str | None = None

    # -- model snapshot ---------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return bool(self._served)

    @property
    def default_version(self) -> str | None:
        return self._default

    def served(self) -> dict[str, ServedModel]:
        """Versions being served (newest first)."""
        return dict(self._served)

    def batch_stats(self, version: str | None = None) -> BatchStats:
        """Batching counters of one model (default: the default model)."""
        return self._resolve(version or "").batcher.stats

    async def sync(self, repository: ModelRepository) -> None:
        """Serve exactly the repository's models: a batcher for each new one, close those of removed ones."""
        served: dict[str, ServedModel] = {}
        for model in repository.models():
            current = self._served.get(model.version)
            if current is not None and current.model is model:
                served[model.version] = current
                continue
            batcher: MicroBatcher[np.ndarray, np.ndarray] = MicroBatcher(
                functools.partial(_run_model, model),
                max_batch_size=self.settings.max_batch_size,
                max_delay_s=self.settings.max_queue_delay_ms / 1000.0,
                name=f"embed[{model.version}]",
            )
            served[model.version] = ServedModel(model, batcher)
        gone = [s for version, s in self._served.items() if served.get(version) is not s]
        self._served = served
        self._default = next(iter(served), None)
        for old in gone:
            await old.batcher.close()

    async def close(self) -> None:
        served, self._served, self._default = self._served, {}, None
        for s in served.values():
            await s.batcher.close()

    def _resolve(self, version: str) -> ServedModel:
        if not self._served:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "no model is loaded yet; retry shortly")
        key = version or self._default or ""
        served = self._served.get(key)
        if served is None:
            available = ", ".join(self._served)
            raise RequestError(
                grpc.StatusCode.NOT_FOUND, f"unknown model version {version!r} (available: {available})"
            )
        return served

    # -- the work ---------------------------------------------------------------------------------------

    async def _decode(self, images: Sequence[bytes], size: int) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        work = functools.partial(preprocess, size=size, max_pixels=self.settings.max_pixels)
        results = await asyncio.gather(
            *(loop.run_in_executor(self._pool, work, data) for data in images), return_exceptions=True
        )
        arrays: list[np.ndarray] = []
        for index, result in enumerate(results):
            if isinstance(result, ImageDecodeError):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"image {index}: {result}")
            if isinstance(result, DecodeBudgetBusy):
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"image {index}: {result}")
            if isinstance(result, BaseException):
                raise result
            arrays.append(result)
        return arrays

    async def embed(self, request: embedder_pb2.EmbedRequest) -> embedder_pb2.EmbedResponse:
        """Answer one EmbedRequest; raises :class:`RequestError` for a request the service refuses."""
        count = len(request.images)
        if count == 0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "the request holds no images")
        limit = self.settings.max_images_per_request
        if count > limit:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{count} images in one request exceed the limit of {limit} "
                "(RECIPELENS_EMBEDDER_MAX_IMAGES_PER_REQUEST); send smaller batches",
            )
        served = self._resolve(request.model_version)
        model = served.model
        arrays = await self._decode(request.images, model.image_size)
        try:
            vectors = await served.batcher.submit(arrays)
        except BatcherClosedError:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE, f"model {model.version} was unloaded during the request; retry"
            ) from None
        return embedder_pb2.EmbedResponse(
            embeddings=[embedder_pb2.Embedding(values=v.tolist()) for v in vectors],
            model_version=model.version,
            dimension=model.dimension,
            request_id=request.request_id,
        )

    # -- RPCs -------------------------------------------------------------------------------------------

    async def Embed(
        self, request: embedder_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.EmbedResponse:
        try:
            return await self.embed(request)
        except RequestError as exc:
            log.info("Embed refused (%s): %s", exc.code.name, exc.message)
            await _abort(context, exc.code, exc.message)
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
                    pending.put_nowait((request.request_id, asyncio.create_task(self.embed(request))))
            finally:
                pending.put_nowait(None)

        reader = asyncio.create_task(read())
        index = 0
        try:
            while (item := await pending.get()) is not None:
                request_id, task = item
                try:
                    response = await task
                except RequestError as exc:
                    message = f"stream request {index} (request_id={request_id!r}): {exc.message}"
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
                models = [self._resolve(request.model_version).model]
            else:
                self._resolve("")
                models = [s.model for s in self._served.values()]
        except RequestError as exc:
            await _abort(context, exc.code, exc.message)
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
                )
                for m in models
            ],
            default_version=self._default or "",
            providers=self.providers,
        )


class EmbedderServer:
    """The gRPC server and its servicers: ``start`` binds, ``load_models`` makes it SERVING, ``stop``."""

    def __init__(self, settings: EmbedderSettings) -> None:
        self.settings = settings
        threads = settings.decode_threads or min(8, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        self.servicer = EmbedderServicer(settings, self._pool)
        self.health = health.aio.HealthServicer()
        self.repository: ModelRepository | None = None
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._stopped = False

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in (health.OVERALL_HEALTH, SERVICE_NAME):
            await self.health.set(service, status)

    async def start(self) -> int:
        """Bind and start answering (health NOT_SERVING until :meth:`load_models`); return the port."""
        s = self.settings
        log.info("embedder settings: %s", s.summary())
        tune_allocator()
        configure_decoding(s.decode_budget_mb << 20, s.decode_wait_s)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a taken port is an error, not a silent second listener
                # clients reconnect (and re-resolve DNS) now and then, so new replicas get traffic
                ("grpc.max_connection_age_ms", s.max_connection_age_ms),
                ("grpc.max_connection_age_grace_ms", s.max_connection_age_grace_ms),
            ]
        )
        embedder_pb2_grpc.add_EmbedderServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        await self._set_health(False)
        try:
            port = server.add_insecure_port(f"{s.host}:{s.port}")
        except RuntimeError as exc:
            raise ServerStartError(f"cannot listen on {s.host}:{s.port}: {exc}") from None
        if port == 0:
            raise ServerStartError(f"cannot listen on {s.host}:{s.port}")
        await server.start()
        self._server, self.port = server, port
        log.info("listening on %s:%d (health NOT_SERVING until the models are loaded)", s.host, port)
        return port

    async def load_models(self) -> None:
        """Load and warm up every model under ``model_dir``, then report SERVING."""
        s = self.settings
        log.info(
            "providers: configured %s, installed %s → using %s",
            list(s.providers),
            ort.get_available_providers(),
            self.servicer.providers,
        )
        try:
            repository = await asyncio.to_thread(
                ModelRepository,
                s.model_dir,
                providers=s.providers,
                intra_op_threads=s.intra_op_threads,
                spinning=s.spinning,
            )
        except ModelRepositoryError as exc:
            raise ServerStartError(str(exc)) from None
        self.repository = repository
        await self.servicer.sync(repository)
        for model in repository.models():
            log.info(
                "serving model %s: name=%s backbone=%s dim=%d image_size=%d created_at=%s provider=%s",
                model.version,
                model.manifest.name,
                model.manifest.backbone,
                model.dimension,
                model.image_size,
                model.manifest.created_at,
                model.provider,
            )
        default = self.servicer.default_version
        provider = repository.get(default).provider
        log.info("default model %s; execution provider in use: %s; SERVING", default, provider)
        await self._set_health(True)
        if s.reload_interval_s > 0:
            self._refresh_task = asyncio.create_task(self._refresh_loop(), name="model-refresh")

    async def refresh(self) -> RefreshReport:
        """Rescan the model folder now; serve added models, stop serving removed ones."""
        if self.repository is None:
            raise RuntimeError("models are not loaded yet")
        report = await asyncio.to_thread(self.repository.refresh)
        if report.changed:
            await self.servicer.sync(self.repository)
            await self._set_health(self.servicer.ready)
            log.info(
                "models refreshed: added %s, removed %s; default %s",
                report.added or "none",
                report.removed or "none",
                self.servicer.default_version,
            )
        return report

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("model refresh failed; serving the models loaded before")

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, then let in-flight calls finish for ``grace`` seconds, then stop."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.grace_period_s if grace is None else grace
        log.info("stopping (grace %.1fs)", grace)
        await self.health.enter_graceful_shutdown()
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
        if self._server is not None:
            await self._server.stop(grace)
        await self.servicer.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(settings: EmbedderSettings) -> None:
    """Run the embedder until SIGTERM or SIGINT, then stop gracefully."""
    stop = stop_on_signals()
    server = EmbedderServer(settings)
    try:
        await server.start()
        loading = asyncio.create_task(server.load_models())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            loading.result()  # raises ServerStartError when no model could be loaded
            await stopping
        else:
            loading.cancel()
        log.info("stop signal received")
    finally:
        await server.stop(settings.grace_period_s)


class RunningServer:
    """An :class:`EmbedderServer` in a background thread with its own event loop (for tests and tools)."""

    def __init__(self, server: EmbedderServer) -> None:
        self.server = server
        self._background = BackgroundLoop("embedder-server")

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return self._background.call(coro, timeout)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def servicer(self) -> EmbedderServicer:
        return self.server.servicer

    def load_models(self) -> None:
        self.call(self.server.load_models())

    def refresh(self) -> RefreshReport:
        return self.call(self.server.refresh())

    def stop(self, grace: float | None = None) -> None:
        """Stop the server (graceful for ``grace`` seconds) and its loop; safe to call twice."""
        if self._background.closed:
            return
        try:
            self.call(self.server.stop(grace))
        finally:
            self._background.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_server(settings: EmbedderSettings, *, load_models: bool = True) -> RunningServer:
    """Start a server in a background thread; with ``load_models`` return once it is SERVING."""
    running = RunningServer(EmbedderServer(settings))
    try:
        running.call(running.server.start())
        if load_models:
            running.load_models()
    except BaseException:
        running.stop(grace=0)
        raise
    return running


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="recipelens-embedder",
        description="Serve ONNX embedding models over gRPC (settings: RECIPELENS_EMBEDDER_* variables).",
    )
    parser.add_argument("--model-dir", type=Path, help="a model folder or a folder of model folders")
    parser.add_argument("--host", help="address to listen on")
    parser.add_argument("--port", type=int, help="port to listen on (0 picks a free one)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``recipelens-embedder``."""
    args = _parse_args(argv)
    overrides = {
        key: value
        for key, value in (("model_dir", args.model_dir), ("host", args.host), ("port", args.port))
        if value is not None
    }
    try:
        settings = EmbedderSettings(**overrides)
    except ValidationError as exc:
        print(f"recipelens-embedder: invalid settings:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except ServerStartError as exc:
        log.error("embedder not started: %s", exc)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass
