"""``recipelens.v1.RecipeSearch`` over grpc.aio, with the standard health service and reflection.

Every error leaves through ``context.abort`` with the status in :class:`gateway.errors.ErrorKind`. The API key
(``authorization: Bearer <key>`` metadata) is checked on RecipeSearch only: health and reflection stay open.
Health reports SERVING once the store and the embedder answer and agree on the model version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from recipelens.v1 import search_pb2, search_pb2_grpc

from gateway.checks import search_filter
from gateway.errors import ErrorKind, GatewayError
from gateway.images import public_image_url
from gateway.pipeline import SearchGateway
from gateway.search import RecipeHit
from protos.services import RECIPE_SEARCH_SERVICE

log = logging.getLogger(__name__)

# Room for the rest of the request beside the image (filters, field tags).
MESSAGE_OVERHEAD_BYTES = 64 * 1024
# gRPC itself refuses messages over this many times the upload limit (uncounted, in its own words); those
# in between reach the servicer, which refuses them with the configured limit and counts them in /metrics.
MESSAGE_CEILING_FACTOR = 4
Reply = TypeVar("Reply")
MATCHES = {"none": search_pb2.MATCH_NONE, "weak": search_pb2.MATCH_WEAK, "strong": search_pb2.MATCH_STRONG}


def recipe_message(hit: RecipeHit, images_root: Path | None) -> search_pb2.Recipe:
    payload = hit.payload
    return search_pb2.Recipe(
        id=hit.recipe_id,
        title=hit.title,
        ingredients=hit.ingredients,
        instructions=hit.instructions,
        image_url=public_image_url(hit.image, images_root),
        category=hit.category,
        cleaned_ingredients=[str(x) for x in payload.get("cleaned_ingredients") or []],
        source=str(payload.get("source", "")),
    )


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            value = item.value
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


class RecipeSearchServicer(search_pb2_grpc.RecipeSearchServicer):
    """Thin translation between protobuf messages and :class:`SearchGateway`."""

    def __init__(self, gateway: SearchGateway, images_root: Path | None = None) -> None:
        self.gateway = gateway
        self.images_root = images_root

    async def _fail(
        self, context: grpc.aio.ServicerContext, method: str, exc: GatewayError, start: float
    ) -> NoReturn:
        self.gateway.metrics.observe_request(
            "grpc", method, exc.kind.grpc_status.name, time.perf_counter() - start, exc.kind.name
        )
        if exc.kind is ErrorKind.INTERNAL:
            log.error("%s failed: %s", method, exc.message)
        else:
            log.info("%s refused (%s): %s", method, exc.kind.name, exc.message)
        await context.abort(exc.kind.grpc_status, exc.message)
        raise AssertionError("abort returned")  # pragma: no cover - abort always raises

    def _timeout(self, context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else max(remaining - 0.05, 0.001)

    async def _answer(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        work: Callable[[float | None], Awaitable[Reply]],
    ) -> Reply:
        """One call: the API key, then ``work(timeout_s)``; every failure leaves as a status, every
        outcome is counted."""
        start = time.perf_counter()
        try:
            self.gateway.authorize(_metadata(context, "authorization"))
            reply = await work(self._timeout(context))
        except GatewayError as exc:
            await self._fail(context, method, exc, start)
        except Exception as exc:
            log.exception("%s failed", method)
            internal = GatewayError(ErrorKind.INTERNAL, f"internal error: {exc}")
            await self._fail(context, method, internal, start)
        self.gateway.metrics.observe_request("grpc", method, "OK", time.perf_counter() - start, None)
        return reply

    async def SearchByImage(
        self, request: search_pb2.SearchByImageRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.SearchByImageResponse:
        async def work(timeout_s: float | None) -> search_pb2.SearchByImageResponse:
            f = request.filter
            result = await self.gateway.search(
                request.image,
                top_k=request.top_k or None,
                offset=request.offset,
                search_filter=search_filter(
                    f.categories, f.must_include_ingredients, f.must_exclude_ingredients
                ),
                timeout_s=timeout_s,
                min_confidence=request.min_confidence,
            )
            return search_pb2.SearchByImageResponse(
                hits=[
                    search_pb2.RecipeHit(
                        rank=h.rank,
                        score=h.score,
                        recipe=recipe_message(h, self.images_root),
                        matched_image_url=public_image_url(h.matched_image, self.images_root),
                        confidence=h.confidence,
                    )
                    for h in result.hits
                ],
                model_version=result.model_version,
                collection=result.collection,
                took_ms=result.took_ms,
                warnings=result.warnings,
                match=MATCHES.get(result.match or "", search_pb2.MATCH_UNSPECIFIED),
            )

        return await self._answer(context, "SearchByImage", work)

    async def GetRecipe(
        self, request: search_pb2.GetRecipeRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.Recipe:
        async def work(timeout_s: float | None) -> search_pb2.Recipe:
            hit = await self.gateway.get_recipe(request.id, timeout_s=timeout_s)
            return recipe_message(hit, self.images_root)

        return await self._answer(context, "GetRecipe", work)


class HealthReporter:
    """Keeps ``grpc.health.v1`` in step with :meth:`SearchGateway.readiness` (polled every ``period_s``)."""

    def __init__(
        self, gateway: SearchGateway, servicer: health.HealthServicer, period_s: float = 1.0
    ) -> None:
        self.gateway = gateway
        self.servicer = servicer
        self.period_s = period_s
        self.serving: bool | None = None
        self._task: asyncio.Task[None] | None = None

    async def check_once(self) -> bool:
        readiness = await self.gateway.readiness()
        if readiness.ready != self.serving:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if readiness.ready
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in (health.OVERALL_HEALTH, RECIPE_SEARCH_SERVICE):
                await self.servicer.set(name, status)
            log.info(
                "health: %s (%s)",
                "SERVING" if readiness.ready else "NOT_SERVING",
                "; ".join(f"{k}: {v}" for k, v in readiness.checks.items()),
            )
            self.serving = readiness.ready
        return readiness.ready

    async def _loop(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:
                log.exception("health check failed")
            await asyncio.sleep(self.period_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="gateway-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.servicer.enter_graceful_shutdown()


def server_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])


async def start_grpc_server(
    gateway: SearchGateway,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    images_root: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    health_period_s: float = 1.0,
) -> tuple[grpc.aio.Server, int, HealthReporter]:
    """Build, bind and start the server; returns it, the bound port and the health reporter."""
    limit = gateway.settings.max_upload_bytes * MESSAGE_CEILING_FACTOR + MESSAGE_OVERHEAD_BYTES
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", 16 << 20)]
    )
    search_pb2_grpc.add_RecipeSearchServicer_to_server(RecipeSearchServicer(gateway, images_root), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (health.OVERALL_HEALTH, RECIPE_SEARCH_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (RECIPE_SEARCH_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{host}:{port}"
    if tls_cert is not None and tls_key is not None:
        bound = server.add_secure_port(address, server_credentials(tls_cert, tls_key))
    else:
        bound = server.add_insecure_port(address)
    await server.start()
    reporter = HealthReporter(gateway, health_servicer, health_period_s)
    await reporter.check_once()
    reporter.start()
    log.info("gRPC listening on %s:%d (%s)", host, bound, "TLS" if tls_cert else "plaintext")
    return server, bound, reporter
