"""The embedder gRPC service's lifecycle: bind, load the models, hot-reload them, stop gracefully.

Encoded photos in, unit vectors out (``recipelens.v1.Embedder``, see :mod:`embedder.servicer`). The standard
``grpc.health.v1`` service says NOT_SERVING until the models are loaded and warmed up; reflection lets
generic clients (grpcurl) discover the API.

Run it with ``recipelens-embedder`` (or ``python -m embedder``); settings come from
``RECIPELENS_EMBEDDER_*`` variables. :func:`start_server` runs one in a background thread (tests, tools).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import onnxruntime as ort
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from recipelens.v1 import embedder_pb2_grpc

from embedder.background import RunningService, serve_until_signalled
from embedder.cpus import decode_threads
from embedder.inprocess import InProcessEmbedder
from embedder.logs import configure_logging
from embedder.memory import configure_decoding, tune_allocator
from embedder.metrics import EmbedderMetrics, MetricsEndpoint
from embedder.providers import default_order_for
from embedder.repository import ModelRepository, ModelRepositoryError, RefreshReport
from embedder.runtime import select_providers
from embedder.servicer import EmbedderServicer
from embedder.settings import EmbedderSettings, settings_or_exit
from protos.services import EMBEDDER_SERVICE

log = logging.getLogger(__name__)


class ServerStartError(RuntimeError):
    """The server could not start (port taken, no usable model); the message says why."""


class EmbedderServer:
    """The gRPC server and its servicers: ``start`` binds, ``load_models`` makes it SERVING, ``stop``."""

    def __init__(self, settings: EmbedderSettings) -> None:
        self.settings = settings
        threads = decode_threads(settings.decode_threads)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        self.metrics = EmbedderMetrics()
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.embedder = InProcessEmbedder(
            metrics=self.metrics,
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_queue_delay_ms / 1000.0,
            max_pixels=settings.max_pixels,
        )
        self.servicer = EmbedderServicer(settings, self._pool, self.embedder)
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
        for service in (health.OVERALL_HEALTH, EMBEDDER_SERVICE):
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
        names = (EMBEDDER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
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
        if s.metrics_port is not None:
            try:
                self.metrics_endpoint = self.metrics.serve(s.host, s.metrics_port)
            except OSError as exc:
                await server.stop(0)
                raise ServerStartError(f"cannot serve metrics on {s.host}:{s.metrics_port}: {exc}") from None
        log.info("listening on %s:%d (health NOT_SERVING until the models are loaded)", s.host, port)
        return port

    async def load_models(self) -> None:
        """Load and warm up every model under ``model_dir``, then report SERVING."""
        s = self.settings
        fp32 = select_providers(default_order_for("fp32", s.providers))
        log.info(
            "providers: configured %s, installed %s → using %s%s",
            list(s.providers),
            ort.get_available_providers(),
            self.servicer.providers,
            f" (fp32 models: {fp32}, the default order for fp32)" if fp32 != self.servicer.providers else "",
        )
        try:
            repository = await asyncio.to_thread(
                ModelRepository, s.model_dir, default_model=s.default_model, **s.runtime_options()
            )
        except ModelRepositoryError as exc:
            raise ServerStartError(str(exc)) from None
        self.repository = repository
        await self.embedder.attach(repository)
        for model in repository.models():
            log.info(
                "serving model %s: name=%s backbone=%s dim=%d image_size=%d created_at=%s runs %s",
                model.version,
                model.manifest.name,
                model.manifest.backbone,
                model.dimension,
                model.image_size,
                model.manifest.created_at,
                model.runs_on,
            )
        default = self.embedder.default_version
        model = repository.get(default)
        log.info(
            "default model %s (%s); execution provider in use: %s; SERVING",
            default,
            model.numerics,
            model.provider,
        )
        await self._set_health(True)
        if s.reload_interval_s > 0:
            self._refresh_task = asyncio.create_task(self._refresh_loop(), name="model-refresh")

    async def refresh(self) -> RefreshReport:
        """Rescan the model folder now; serve added models, stop serving removed ones."""
        if self.repository is None:
            raise RuntimeError("models are not loaded yet")
        report = await asyncio.to_thread(self.repository.refresh)
        if report.changed:
            await self.embedder.sync()
            await self._set_health(self.embedder.ready)
            log.info(
                "models refreshed: added %s, removed %s; default %s",
                report.added or "none",
                report.removed or "none",
                self.embedder.default_version,
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
        await self.embedder.aclose()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(settings: EmbedderSettings) -> None:
    """Run the embedder until SIGTERM or SIGINT, then stop gracefully (models load while it answers)."""
    server = EmbedderServer(settings)
    await serve_until_signalled(server, server.start(), log, alongside=server.load_models())


class RunningServer(RunningService[EmbedderServer]):
    """An :class:`EmbedderServer` in a background thread with its own event loop (for tests and tools)."""

    thread_name = "embedder-server"

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


def start_server(settings: EmbedderSettings, *, load_models: bool = True) -> RunningServer:
    """Start a server in a background thread; with ``load_models`` return once it is SERVING."""
    running = RunningServer(EmbedderServer(settings))

    async def start() -> None:
        await running.server.start()
        if load_models:
            await running.server.load_models()

    return running.start_with(start())


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
    settings = settings_or_exit("recipelens-embedder", EmbedderSettings, vars(_parse_args(argv)))
    configure_logging(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except ServerStartError as exc:
        log.error("embedder not started: %s", exc)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass
