"""The HTTP face of the gateway (FastAPI): the legacy JSON search API, recipes, images, the page, probes.

``POST /api/v1/search`` answers in the legacy API's shape (the first, pre-gateway service's JSON) so its
clients work unchanged — on errors too, with ``success: false``, an ``errorMessage`` and the HTTP status of
:class:`gateway.errors.ErrorKind`. Uploads over the limit are refused from ``Content-Length`` before the body
is read, and a body that grows past the limit while streaming is cut off (see :class:`UploadLimit`).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ErrorKind, GatewayError
from gateway.pipeline import SearchGateway, public_image_url, search_filter
from gateway.search import RecipeHit
from indexer.catalog import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
SEARCH_PATH = "/api/v1/search"
# Multipart framing and the small form fields beside the image.
FORM_OVERHEAD_BYTES = 64 * 1024


class UploadTooLarge(Exception):
    """The request body passed the upload limit while it was being received."""


class UploadLimit:
    """ASGI middleware: refuse search bodies over the limit before (Content-Length) or while reading them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SEARCH_PATH:
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _too_large(send, int(value), self.limit)
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
                await _too_large(send, received, self.limit)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except UploadTooLarge:
            if not replaced:
                replaced = True
                await _too_large(send, received, self.limit)


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


def legacy_error(exc: GatewayError, processing_s: float = 0.0) -> JSONResponse:
    """The legacy API's shape with ``success: false``."""
    body = {
        "recipes": [],
        "totalResults": 0,
        "processingTime": round(processing_s, 4),
        "timestamp": _now(),
        "success": False,
        "errorMessage": exc.message,
    }
    return JSONResponse(body, status_code=exc.kind.http_status)


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


def create_app(gateway: SearchGateway, *, images_root: Path | None = None) -> FastAPI:
    """The FastAPI app around one :class:`SearchGateway`."""
    app = FastAPI(
        title="recipelens gateway",
        version="1",
        description="Photo → recipes. The same search is offered over gRPC (`recipelens.v1.RecipeSearch`).",
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

    @app.post(SEARCH_PATH, summary="Search recipes by photo (legacy API shape)")
    async def search(
        request: Request,
        *,
        image: Annotated[UploadFile, File(description="a photo (JPEG, PNG, WebP, GIF, BMP, TIFF)")],
        top_k: Annotated[int, Form(description="how many recipes, 1..100")] = gateway.default_top_k,
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
            data = await image.read(gateway.max_upload_bytes + 1)
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
        if target is None:
            return JSONResponse({"success": False, "errorMessage": "no such image"}, status_code=404)
        return FileResponse(target)

    @app.get("/healthz", summary="Alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Store and embedder reachable, model versions agree")
    async def readyz() -> Response:
        readiness = await gateway.readiness()
        body = {"ready": readiness.ready, "checks": readiness.checks}
        return JSONResponse(body, status_code=200 if readiness.ready else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(UploadLimit, limit=gateway.max_upload_bytes + FORM_OVERHEAD_BYTES)
    return app


def safe_join(root: Path | None, relative: str) -> Path | None:
    """``root / relative`` when it is an existing image file inside ``root`` (no ``..``, no symlink escape).

    Only image files are served, so pointing ``images_root`` at a catalogue folder never exposes its CSV.
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
