"""The HTTP face of the gateway (FastAPI): the legacy JSON search API, recipes, images, the page, probes.

``POST /api/v1/search`` answers in the legacy API's shape (the first, pre-gateway service's JSON) so its
clients work unchanged — on errors too, with ``success: false``, an ``errorMessage`` and the HTTP status of
:class:`gateway.errors.ErrorKind` (every other refusal, a malformed multipart body or an unknown path
included, takes the same shape). Uploads over the limit
are refused from ``Content-Length`` before the body is read, and a body that grows past the limit while
streaming is cut off (see :class:`UploadLimit`); both count in ``/metrics``.

Hardening: every response says ``X-Content-Type-Options: nosniff`` and the page carries a Content-Security-
Policy; ``/images/`` serves only regular files inside the images root whose bytes are a raster image, with
the type the bytes say. With API keys on, ``/metrics`` (unless it has a port of its own), ``/docs`` and the
OpenAPI document need a key — as ``Bearer`` or as the password of HTTP Basic, so a browser can ask for it —
and ``/readyz`` tells a caller without one only ready / not ready. Swagger UI's assets come from the
``fastapi-offline`` package, so ``/docs`` works without internet.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import anyio
import h11
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.errors import ErrorKind, GatewayError
from gateway.images import public_image_url
from gateway.metrics import GatewayMetrics
from gateway.pipeline import SearchGateway, search_filter
from gateway.search import RecipeHit
from indexer.catalog import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
SEARCH_PATH = "/api/v1/search"
# Multipart framing and the small form fields beside the image.
FORM_OVERHEAD_BYTES = 64 * 1024
DOCS_PATHS = ("/docs", "/openapi.json", "/docs-static/")
# The page loads only its own script, style and API; card images may come from the catalogue's own hosts.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: https:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'; object-src 'none'"
)
RETRY_AFTER_S = 1
# Served catalogue images: the first bytes say which raster type a file is (never its name or a link's).
RASTER_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"BM", "image/bmp"),
)
MAX_SERVED_IMAGE_BYTES = 64 << 20


class SecurityHeaders:
    """ASGI middleware: ``X-Content-Type-Options: nosniff`` on every response, whoever wrote it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Content-Type-Options"] = "nosniff"
            await send(message)

        await self.app(scope, receive, with_headers)


def presented_key(authorization: str | None) -> str | None:
    """The key in ``Bearer <key>`` or in the password of ``Basic`` (what a browser's login prompt sends)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


class KeyRequired:
    """ASGI middleware: with API keys on, the operator's paths (metrics, docs) need a key too."""

    def __init__(self, app: ASGIApp, gateway: SearchGateway, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.gateway = gateway
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not self.gateway.auth_enabled or not path.startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        key = presented_key(Headers(scope=scope).get("authorization"))
        try:
            self.gateway.authorize(None if key is None else f"Bearer {key}")
        except GatewayError as exc:
            response = error_response(exc.kind.http_status, exc.message)
            response.headers["WWW-Authenticate"] = 'Basic realm="recipelens", charset="UTF-8"'
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class UploadTooLarge(Exception):
    """The request body passed the upload limit while it was being received."""


class UploadLimit:
    """ASGI middleware: refuse search bodies over the limit before (Content-Length) or while reading them."""

    def __init__(self, app: ASGIApp, limit_bytes: int, metrics: GatewayMetrics) -> None:
        self.app = app
        self.limit_bytes = limit_bytes  # the configured upload limit, as callers are told
        self.limit = limit_bytes + FORM_OVERHEAD_BYTES  # the body may be this long (multipart framing)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SEARCH_PATH:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def refuse(size: int) -> None:
            await _too_large(send, size, self.limit_bytes)
            self.metrics.observe_request(
                "http", "search", "413", time.perf_counter() - start, ErrorKind.RESOURCE_EXHAUSTED.name
            )

        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await refuse(int(value))
                return
        received = 0
        exceeded = replaced = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    raise UploadTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # The body parser may turn our UploadTooLarge into its own error response: replace it with 413.
            nonlocal replaced
            if not exceeded:
                await send(message)
            elif not replaced:
                replaced = True
                await refuse(received)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except UploadTooLarge:
            if not replaced:
                replaced = True
                await refuse(received)


async def _too_large(send: Send, size: int, limit: int) -> None:
    response = legacy_error(
        GatewayError(
            ErrorKind.RESOURCE_EXHAUSTED, f"upload of {size}+ bytes exceeds the limit of {limit} bytes"
        )
    )
    await send(
        {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
    )
    await send({"type": "http.response.body", "body": response.body})


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_response(status: int, message: str, processing_s: float = 0.0) -> JSONResponse:
    """The legacy API's shape with ``success: false``; 503s say when to retry."""
    body = {
        "recipes": [],
        "totalResults": 0,
        "processingTime": round(processing_s, 4),
        "timestamp": _now(),
        "success": False,
        "errorMessage": message,
    }
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


def legacy_error(exc: GatewayError, processing_s: float = 0.0) -> JSONResponse:
    """A :class:`GatewayError` in the legacy API's shape, with its kind's HTTP status."""
    return error_response(exc.kind.http_status, exc.message, processing_s)


FILTER_HELP = {
    "categories": "any of these categories (case-insensitive); repeat the field or separate with commas",
    "must_include_ingredients": "every one of these ingredients (chilli also matches chillies)",
    "must_exclude_ingredients": "none of these ingredients (chilli also excludes chillies)",
}


def form_terms(values: list[str] | None) -> list[str]:
    """Filter terms from repeated form fields, each of which may also list several separated by commas."""
    return [term.strip() for value in values or () for term in value.split(",") if term.strip()]


def recipe_json(hit: RecipeHit, images_root: Path | None) -> dict[str, Any]:
    return {
        "id": hit.recipe_id,
        "rank": hit.rank,
        "title": hit.title,
        "imagePath": public_image_url(hit.image, images_root),
        "ingredients": hit.ingredients,
        "instructions": hit.instructions,
        "category": hit.category,
        "similarity": round(hit.score, 6),
    }


def create_app(
    gateway: SearchGateway, *, images_root: Path | None = None, metrics_route: bool = True
) -> FastAPI:
    """The FastAPI app around one :class:`SearchGateway`; ``metrics_route=False`` when metrics have a port."""
    app = FastAPIOffline(
        title="recipelens gateway",
        version="1",
        description="Photo → recipes. The same search is offered over gRPC (`recipelens.v1.RecipeSearch`).",
        redoc_url=None,
        static_url="/docs-static",
    )
    metrics = gateway.metrics

    def finish(method: str, response: Response, start: float, kind: str | None = None) -> Response:
        metrics.observe_request("http", method, str(response.status_code), time.perf_counter() - start, kind)
        return response

    def fail(method: str, exc: GatewayError, start: float) -> Response:
        log.info("%s refused (%s): %s", method, exc.kind.name, exc.message)
        return finish(method, legacy_error(exc, time.perf_counter() - start), start, exc.kind.name)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return fail(request.url.path, GatewayError(ErrorKind.INVALID_ARGUMENT, problems), time.perf_counter())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Starlette's own refusals (malformed multipart, too many fields, unknown path, wrong method).
        start = time.perf_counter()
        log.info("%s %s refused (%d): %s", request.method, request.url.path, exc.status_code, exc.detail)
        response = error_response(exc.status_code, f"{exc.detail}")
        if exc.headers:
            response.headers.update(exc.headers)
        method = "search" if request.url.path == SEARCH_PATH else "other"
        return finish(
            method, response, start, None if exc.status_code < 400 else "HTTP_" + str(exc.status_code)
        )

    @app.post(SEARCH_PATH, summary="Search recipes by photo (legacy API shape)")
    async def search(
        request: Request,
        *,
        image: Annotated[UploadFile, File(description="a photo (JPEG, PNG, WebP, GIF, BMP, TIFF)")],
        top_k: Annotated[int, Form(description="how many recipes, 1..100")] = gateway.settings.default_top_k,
        offset: Annotated[int, Form(description="skip this many recipes (paging)")] = 0,
        categories: Annotated[list[str] | None, Form(description=FILTER_HELP["categories"])] = None,
        must_include_ingredients: Annotated[
            list[str] | None, Form(description=FILTER_HELP["must_include_ingredients"])
        ] = None,
        must_exclude_ingredients: Annotated[
            list[str] | None, Form(description=FILTER_HELP["must_exclude_ingredients"])
        ] = None,
        min_confidence: Annotated[
            float, Form(description="leave out hits below this confidence, 0..1")
        ] = 0.0,
    ) -> Response:
        start = time.perf_counter()
        try:
            gateway.authorize(request.headers.get("authorization"))
            flt = search_filter(
                form_terms(categories),
                form_terms(must_include_ingredients),
                form_terms(must_exclude_ingredients),
            )
            data = await image.read(gateway.settings.max_upload_bytes + 1)
            result = await gateway.search(
                data, top_k=top_k, offset=offset, search_filter=flt, min_confidence=min_confidence
            )
        except GatewayError as exc:
            return fail("search", exc, start)
        finally:
            await image.close()
        body = {
            "recipes": [
                {
                    **recipe_json(h, images_root),
                    "matchedImage": public_image_url(h.matched_image, images_root),
                    "confidence": None if h.confidence is None else round(h.confidence, 4),
                }
                for h in result.hits
            ],
            "totalResults": len(result.hits),
            "processingTime": round(time.perf_counter() - start, 4),
            "timestamp": _now(),
            "success": True,
            "errorMessage": None,
            "modelVersion": result.model_version,
            "warnings": result.warnings,
            "match": result.match,
        }
        return finish("search", JSONResponse(body), start)

    @app.get("/api/v1/recipes/{recipe_id}", summary="One recipe of the live collection")
    async def get_recipe(request: Request, recipe_id: str) -> Response:
        start = time.perf_counter()
        try:
            gateway.authorize(request.headers.get("authorization"))
            hit = await gateway.get_recipe(recipe_id)
        except GatewayError as exc:
            return fail("recipe", exc, start)
        return finish(
            "recipe", JSONResponse({"success": True, "recipe": recipe_json(hit, images_root)}), start
        )

    @app.get("/images/{path:path}", summary="A catalogue image")
    async def catalogue_image(path: str) -> Response:
        target = safe_join(images_root, path)
        found = None if target is None else await anyio.to_thread.run_sync(read_raster, target)
        if found is None:
            return error_response(404, "no such image")
        data, media_type = found
        return Response(data, media_type=media_type, headers={"Cache-Control": "public, max-age=300"})

    @app.get("/healthz", summary="Alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Store and embedder reachable, model versions agree")
    async def readyz(request: Request) -> Response:
        readiness = await gateway.readiness()
        body: dict[str, Any] = {"ready": readiness.ready}
        try:  # the checks name paths and addresses: with keys on, only for a caller with a key
            gateway.authorize(request.headers.get("authorization"))
            body["checks"] = readiness.checks
        except GatewayError:
            pass
        return JSONResponse(body, status_code=200 if readiness.ready else 503)

    if metrics_route:

        @app.get("/metrics", summary="Prometheus metrics (with API keys on: needs a key)")
        async def prometheus() -> Response:
            return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(UploadLimit, limit_bytes=gateway.settings.max_upload_bytes, metrics=metrics)
    app.add_middleware(KeyRequired, gateway=gateway, prefixes=(*DOCS_PATHS, "/metrics"))
    app.add_middleware(SecurityHeaders)
    return app


def safe_join(root: Path | None, relative: str) -> Path | None:
    """``root / relative`` resolved, if it has an image name and lies inside ``root`` (no ``..``, no escape).

    Only image names are served, so pointing ``images_root`` at a catalogue folder never exposes its CSV;
    :func:`read_raster` then checks what the file really is.
    """
    if root is None or not relative or "\x00" in relative:
        return None
    if Path(relative).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    base = root.resolve()
    try:
        target = (base / relative).resolve()
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(base) or not target.is_file():
        return None
    return target


def raster_type(head: bytes) -> str | None:
    """The media type of a raster image from its first bytes; None for anything else (HTML, SVG, text…)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for signature, media_type in RASTER_SIGNATURES:
        if head.startswith(signature):
            return media_type
    return None


def read_raster(target: Path) -> tuple[bytes, str] | None:
    """The bytes and type of ``target`` (already resolved) if it is a regular file holding a raster image.

    The file is opened once without following links and checked through that descriptor, so what is
    checked is what is served even if the path is swapped meanwhile.
    """
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SERVED_IMAGE_BYTES:
            return None
        data = file.read(MAX_SERVED_IMAGE_BYTES + 1)
    media_type = raster_type(data[:16])
    if media_type is None:
        log.warning("images: %s is not a raster image; not served", target)
        return None
    return data, media_type


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 connection with read deadlines: idle or slow senders are closed, not kept forever.

    A request's headers must arrive within ``header_timeout_s`` of the connection opening (or of the
    request's first byte on a kept-alive connection), its body within ``body_timeout_s`` of the headers.
    Between requests uvicorn's own keep-alive timeout applies. Subclass per server with :meth:`with_timeouts`.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    _read_timer: asyncio.TimerHandle | None = None
    _phase: str = ""

    @classmethod
    def with_timeouts(cls, header_timeout_s: float, body_timeout_s: float) -> type[TimedH11Protocol]:
        return type(
            "TimedH11Protocol",
            (cls,),
            {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s},
        )

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._read_timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer, self._phase = None, ""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers", self.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            return
        cycle = self.cycle
        between = cycle is None or cycle.response_complete
        if between and self.conn.their_state is h11.IDLE:
            if self._phase != "headers" and data:
                self._arm("headers", self.header_timeout_s)  # a new request's first bytes
        elif cycle is not None and cycle.more_body and not cycle.response_complete:
            if self._phase != "body":
                self._arm("body", self.body_timeout_s)
        else:
            self._disarm()  # the whole request is in: the handler takes its own time

    def on_response_complete(self) -> None:
        self._disarm()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _timed_out(self) -> None:
        phase, self._read_timer = self._phase, None
        if self.transport.is_closing():
            return
        log.info(
            "HTTP connection from %s closed: its request %s did not arrive within %.0f s",
            self.client[0] if self.client else "?",
            phase,
            self.header_timeout_s if phase == "headers" else self.body_timeout_s,
        )
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()
