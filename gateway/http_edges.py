"""The HTTP edges of the gateway: what every request passes before (and after) the app's routes.

* :class:`TimedH11Protocol` — uvicorn's connection with read deadlines for headers and body;
* :class:`SecurityHeaders` — ``X-Content-Type-Options: nosniff`` on every response;
* :class:`KeyRequired` — with API keys on, the operator's paths (metrics, docs) need a key, as ``Bearer`` or
  as the password of HTTP Basic (so a browser can ask for it);
* :class:`UploadLimit` — search uploads over the limit are refused from ``Content-Length`` before the body
  is read, and a body that grows past the limit while streaming is cut off; both count in ``/metrics``;
* the error shape every refusal takes (:func:`error_response`, :func:`legacy_error`): the legacy JSON API's,
  with ``success: false``, an ``errorMessage`` and the HTTP status of :class:`gateway.errors.ErrorKind`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import h11
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.errors import ErrorKind, GatewayError
from gateway.metrics import GatewayMetrics

if TYPE_CHECKING:
    from gateway.pipeline import SearchGateway

log = logging.getLogger(__name__)

SEARCH_PATH = "/api/v1/search"
# Multipart framing and the small form fields beside the image.
FORM_OVERHEAD_BYTES = 64 * 1024
RETRY_AFTER_S = 1


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


def legacy_timestamp() -> str:
    """Now, as the legacy API's ``timestamp`` says it: UTC, milliseconds, ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_response(status: int, message: str, processing_s: float = 0.0) -> JSONResponse:
    """The legacy API's shape with ``success: false``; 503s say when to retry."""
    body = {
        "recipes": [],
        "totalResults": 0,
        "processingTime": round(processing_s, 4),
        "timestamp": legacy_timestamp(),
        "success": False,
        "errorMessage": message,
    }
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


def legacy_error(exc: GatewayError, processing_s: float = 0.0) -> JSONResponse:
    """A :class:`GatewayError` in the legacy API's shape, with its kind's HTTP status."""
    return error_response(exc.kind.http_status, exc.message, processing_s)


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
