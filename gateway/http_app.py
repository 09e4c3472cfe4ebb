"""The HTTP face of the gateway (FastAPI): the legacy JSON search API, recipes, images, the page, probes.

``POST /api/v1/search`` answers in the legacy API's shape (the first, pre-gateway service's JSON) so its
clients work unchanged — on errors too, with ``success: false``, an ``errorMessage`` and the HTTP status of
:class:`gateway.errors.ErrorKind` (every other refusal, a malformed multipart body or an unknown path
included, takes the same shape). What every request passes before these routes — upload limit, API keys
on the operator's paths, ``nosniff``, read deadlines — and the error shape are in :mod:`gateway.http_edges`;
which files ``/images/`` may serve is decided in :mod:`gateway.images`.

The page carries a Content-Security-Policy; ``/readyz`` tells a caller without a key (when keys are on) only
ready / not ready. Swagger UI's assets come from the ``fastapi-offline`` package, so ``/docs`` works
without internet.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.checks import search_filter
from gateway.errors import ErrorKind, GatewayError
from gateway.http_edges import (
    SEARCH_PATH,
    KeyRequired,
    SecurityHeaders,
    UploadLimit,
    error_response,
    legacy_error,
    legacy_timestamp,
)
from gateway.images import public_image_url, read_raster, safe_join
from gateway.pipeline import SearchGateway
from gateway.search import RecipeHit

log = logging.getLogger(__name__)

__all__ = ["SEARCH_PATH", "create_app"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
DOCS_PATHS = ("/docs", "/openapi.json", "/docs-static/")
# The page loads only its own script, style and API; card images may come from the catalogue's own hosts.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: https:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'; object-src 'none'"
)


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
            "timestamp": legacy_timestamp(),
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
