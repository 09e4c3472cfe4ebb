"""``recipelens-gateway``: gRPC and HTTP in one process, one event loop, stopped gracefully on SIGTERM.

The embedder is either the service at ``embedder_address`` or, when that is unset, onnxruntime in this
process from ``model_dir`` (the embedded default). The store is Qdrant Edge at ``store.path`` or the Qdrant
server at ``store.qdrant_url``. :func:`start_gateway` runs it in a background thread (tests, tools).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
import uvicorn
from prometheus_client import start_http_server

from embedder.background import RunningService, serve_until_signalled
from embedder.embedding import Embedder
from embedder.factory import open_embedder
from embedder.logs import configure_logging
from embedder.manifest import ModelIntegrityError
from embedder.memory import configure_decoding, tune_allocator
from embedder.settings import settings_or_exit
from gateway.grpc_service import HealthReporter, start_grpc_server
from gateway.http_app import create_app
from gateway.http_edges import TimedH11Protocol
from gateway.images import check_images_root, images_report
from gateway.metrics import GatewayMetrics
from gateway.pipeline import SearchGateway
from gateway.settings import GatewaySettings
from indexer.store import open_store
from indexer.store.base import RecipeStore

log = logging.getLogger(__name__)


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway stops HTTP and gRPC together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_embedder(settings: GatewaySettings) -> Embedder:
    """The embedder service at ``embedder_address``, or onnxruntime here over ``model_dir``."""
    return open_embedder(
        settings.embedder_address,
        settings.model_dir,
        timeout_s=settings.embed_timeout_s,
        retries=settings.embed_retries,
        **settings.runtime_options(),
        max_batch_size=settings.max_batch_size,
        max_delay_s=settings.max_queue_delay_ms / 1000.0,
        max_pixels=settings.max_pixels,
        watch_model_dir=True,
    )


def build_store(settings: GatewaySettings) -> RecipeStore:
    return open_store(settings.store)


def build_gateway(
    settings: GatewaySettings, *, store: RecipeStore | None = None, embedder: Embedder | None = None
) -> SearchGateway:
    return SearchGateway(
        store if store is not None else build_store(settings),
        embedder if embedder is not None else build_embedder(settings),
        settings,
        metrics=GatewayMetrics(),
    )


class GatewayServer:
    """Both front ends around one :class:`SearchGateway`, on the running event loop."""

    def __init__(self, settings: GatewaySettings, *, store: RecipeStore | None = None) -> None:
        self.settings = settings
        self._given_store = store
        self.gateway: SearchGateway | None = None
        self.grpc_server: grpc.aio.Server | None = None
        self.health: HealthReporter | None = None
        self.http_server: _EmbeddedUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._http_socket: socket.socket | None = None
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self.metrics_port: int | None = None
        self._metrics_server: WSGIServer | None = None

    async def start(self, health_period_s: float = 1.0) -> None:
        s = self.settings
        log.info("starting gateway: %s", s.summary())
        tune_allocator()
        configure_decoding(s.decode_budget_mb << 20, s.decode_wait_s)
        images_root = check_images_root(s.images_root)
        self.gateway = build_gateway(s, store=self._given_store)
        try:
            report = await asyncio.to_thread(images_report, self.gateway.store, s.alias, images_root)
            (log.info if report.ok else log.warning)("%s", report.line(s.images_root))
        except Exception as exc:  # the store may be down at start: searches will say so
            log.warning("images_root %s: could not check the live collection: %s", s.images_root, exc)
        self.grpc_server, self.grpc_port, self.health = await start_grpc_server(
            self.gateway,
            host=s.grpc_host,
            port=s.grpc_port,
            images_root=s.images_root,
            tls_cert=s.tls_cert,
            tls_key=s.tls_key,
            health_period_s=health_period_s,
        )
        sock = socket.socket(socket.AF_INET6 if ":" in s.http_host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((s.http_host, s.http_port))
        self.http_port = sock.getsockname()[1]
        self._http_socket = sock
        app = create_app(self.gateway, images_root=s.images_root, metrics_route=s.metrics_port is None)
        if s.metrics_port is not None:
            self._metrics_server, _ = start_http_server(
                s.metrics_port, addr=s.metrics_host, registry=self.gateway.metrics.registry
            )
            self.metrics_port = self._metrics_server.server_port
            log.info("metrics on http://%s:%d/metrics", s.metrics_host, self.metrics_port)
        tls = {"ssl_certfile": s.tls_cert, "ssl_keyfile": s.tls_key} if s.tls_cert else {}
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=5,
            http=TimedH11Protocol.with_timeouts(s.http_header_timeout_s, s.http_body_timeout_s),
            **tls,  # type: ignore[arg-type]
        )
        self.http_server = _EmbeddedUvicorn(config)
        self._http_task = asyncio.create_task(self.http_server.serve(sockets=[sock]), name="gateway-http")
        while not self.http_server.started:
            if self._http_task.done():
                self._http_task.result()
                raise RuntimeError("HTTP server stopped during start")
            await asyncio.sleep(0.01)
        log.info(
            "gateway ready: page %s://%s:%d/ · gRPC %s:%d · alias %r",
            "https" if s.tls_cert else "http",
            s.http_host,
            self.http_port,
            s.grpc_host,
            self.grpc_port,
            s.alias,
        )

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.grace_period_s if grace is None else grace
        log.info("stopping gateway (grace %.1f s)", grace)
        if self.health is not None:
            await self._bounded_stage(self.health.stop(), grace + 2, "health reporter")
        if self.http_server is not None and self._http_task is not None:
            self.http_server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http_task, grace + 1)
        if self._http_socket is not None:
            self._http_socket.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self.grpc_server is not None:
            await self._bounded_stage(self.grpc_server.stop(grace), grace + 5, "gRPC server")
        if self.gateway is not None:
            await self._bounded_stage(self.gateway.aclose(), grace + 15, "search path (embedder, executor)")
            if self._given_store is None:
                self.gateway.store.close()
        log.info("gateway stopped")

    @staticmethod
    async def _bounded_stage(work: Coroutine[Any, Any, Any], timeout_s: float, what: str) -> None:
        """One step of a stop, never waited on for good: past ``timeout_s`` the stop goes on without it."""
        try:
            await asyncio.wait_for(work, timeout_s)
        except TimeoutError:
            log.error("stopping the %s took over %.0f s; going on without it", what, timeout_s)


async def serve(settings: GatewaySettings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    server = GatewayServer(settings)
    await serve_until_signalled(server, server.start(), log)


class RunningGateway(RunningService[GatewayServer]):
    """A :class:`GatewayServer` in a background thread with its own event loop (tests, benchmarks)."""

    thread_name = "gateway-server"

    @property
    def gateway(self) -> SearchGateway:
        assert self.server.gateway is not None
        return self.server.gateway

    @property
    def grpc_address(self) -> str:
        return f"{self.server.settings.grpc_host}:{self.server.grpc_port}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.server.settings.tls_cert else "http"
        return f"{scheme}://{self.server.settings.http_host}:{self.server.http_port}"

    def stop(self, grace: float | None = 1.0) -> None:
        super().stop(grace)


def start_gateway(
    settings: GatewaySettings, *, store: RecipeStore | None = None, health_period_s: float = 1.0
) -> RunningGateway:
    """Start a gateway in a background thread; returns once both ports answer."""
    running = RunningGateway(GatewayServer(settings, store=store))
    return running.start_with(running.server.start(health_period_s))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="recipelens-gateway",
        description="Serve photo → recipe search over gRPC and HTTP (settings: RECIPELENS_GATEWAY_*).",
    )
    parser.add_argument(
        "--embedder", dest="embedder_address", help="HOST:PORT of the embedder (default: in-process)"
    )
    parser.add_argument("--model-dir", type=Path, help="model repository for the in-process embedder")
    parser.add_argument("--store-path", type=Path, help="Qdrant Edge folder")
    parser.add_argument("--qdrant-url", help="a Qdrant server instead of Qdrant Edge")
    parser.add_argument(
        "--images-root",
        type=Path,
        help="the catalogue folder the index was built from (the --catalog of recipelens-index build); "
        "its photos are served under /images/",
    )
    parser.add_argument("--grpc-port", type=int)
    parser.add_argument("--http-port", type=int)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``recipelens-gateway``."""
    settings = settings_or_exit("recipelens-gateway", GatewaySettings, vars(_parse_args(argv)))
    configure_logging(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except OSError as exc:
        print(f"recipelens-gateway: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except ModelIntegrityError as exc:
        print(f"recipelens-gateway: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
