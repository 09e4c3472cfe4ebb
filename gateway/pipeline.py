"""The one search path, shared by the gRPC service, the HTTP app and the CLI: check, embed, search.

One request, in order: API key (constant time) → paging → size limit → sniff the bytes (Pillow; the client's
content type is never trusted) and pixel limit → resolve the alias to a collection and the model version
that filled it → decode (in-process only) → embed with exactly that model version → search that
collection. From the header check on, a search runs in one worker thread, the model included when it is the
only search in flight (caller-runs); concurrent searches meet in the model's micro-batcher. Every failure
leaves as :class:`~gateway.errors.GatewayError`; the front ends only translate it into their own statuses.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from embedder.cpus import batch_scheduling
from embedder.embedding import Embedder
from gateway.checks import bearer_token, key_matches, sniff_image
from gateway.errors import ErrorKind, GatewayError, embedder_failure, store_failure
from gateway.metrics import GatewayMetrics
from gateway.search import RecipeHit, SearchResult, check_paging, judge_hits
from gateway.settings import GatewaySettings
from indexer.calibration import MatchCalibration, calibration_of
from indexer.store.base import (
    CollectionNotFound,
    InvalidFilter,
    ModelVersionMismatch,
    RecipeResults,
    RecipeStore,
    SearchFilter,
    StoreHit,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Readiness:
    """``ready`` when the store answers, the alias points at a collection and the embedder holds its model."""

    ready: bool
    checks: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        return ("ready: " if self.ready else "not ready: ") + "; ".join(
            f"{k}: {v}" for k, v in self.checks.items()
        )


def _named(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


@dataclass(frozen=True)
class _Page:
    """Which recipes a search asks for."""

    top_k: int
    offset: int
    filter: SearchFilter | None


@dataclass(frozen=True)
class _Found:
    """A page of recipes and the best score of any recipe under the same filter (``None``: no recipe)."""

    results: RecipeResults
    best_score: float | None


@dataclass
class _Leg:
    """How far a search got in its worker thread (the stage it is in, for a deadline's message) and what
    it found there; ``failure`` is what the store search raised, retried on the event loop."""

    stage: str = "image check"
    collection: str = ""
    model_version: str = ""
    prepared: Any = None
    vector: np.ndarray | None = None
    found: _Found | None = None
    failure: Exception | None = None


class SearchGateway:
    """The one search path (photo → embed → search → hits), shared by the gRPC service, HTTP and the CLI."""

    def __init__(
        self,
        store: RecipeStore,
        embedder: Embedder,
        settings: GatewaySettings | None = None,
        *,
        metrics: GatewayMetrics | None = None,
        workers: int = 32,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.settings = settings if settings is not None else GatewaySettings()
        self.alias = self.settings.alias
        self.api_keys = list(self.settings.api_keys)
        self.metrics = metrics or GatewayMetrics()
        self.executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="gateway",
            initializer=batch_scheduling if self.settings.sched_batch else None,
        )
        self._calibrations: dict[str, MatchCalibration | None] = {}
        self._searching = 0  # searches in flight (changed on the event loop only)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def authorize(self, authorization: str | None) -> None:
        """Raise UNAUTHENTICATED unless auth is off or the header carries a configured key."""
        if not self.api_keys:
            return
        token = bearer_token(authorization)
        if token is None:
            raise GatewayError(ErrorKind.UNAUTHENTICATED, "missing `authorization: Bearer <api key>`")
        if not key_matches(token, self.api_keys):
            raise GatewayError(ErrorKind.UNAUTHENTICATED, "the API key is not valid")

    async def _blocking(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def _bounded(self, work: Awaitable[T], deadline: float, what: str | Callable[[], str]) -> T:
        """``work`` within the deadline; past it UNAVAILABLE naming ``what`` (or the stage it reports)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GatewayError(ErrorKind.UNAVAILABLE, f"deadline passed before {_named(what)}")
        try:
            return await asyncio.wait_for(work, remaining)
        except TimeoutError:
            raise GatewayError(
                ErrorKind.UNAVAILABLE, f"{_named(what)} did not finish within the deadline"
            ) from None

    def _live_collection(self) -> tuple[str, str]:
        for attempt in (1, 2):
            collection = self.store.resolve_alias(self.alias)
            if collection is None:
                raise GatewayError(
                    ErrorKind.FAILED_PRECONDITION,
                    f"no collection behind alias {self.alias!r}: build one with `recipelens-index build`",
                )
            try:
                return collection, self.store.collection_info(collection).model_version
            except CollectionNotFound:
                if attempt == 2:
                    raise  # dropped between the alias lookup and the read, twice: a store in trouble
        raise AssertionError("unreachable")  # pragma: no cover

    def _looked_up(self) -> tuple[str, str]:
        try:
            return self._live_collection()
        except Exception as exc:
            raise store_failure(exc, "alias lookup") from None

    async def _moved(self, collection: str, exc: Exception, deadline: float) -> tuple[str, str] | None:
        """Where the alias points now, when a store failure came from ``collection`` being replaced."""
        if isinstance(exc, GatewayError | InvalidFilter | ModelVersionMismatch):
            return None
        try:
            now = await self.live_collection(deadline)
        except GatewayError:
            return None
        return now if now[0] != collection else None

    async def live_collection(self, deadline: float) -> tuple[str, str]:
        """The collection behind the alias and the model version that filled it."""
        return await self._bounded(self._blocking(self._looked_up), deadline, "alias lookup")

    def _search_here(self, leg: _Leg, image: bytes, page: _Page) -> None:
        """As much of one search as one worker thread can do, in order: the image's header, the alias,
        decoding, the model when this search is alone and the model idle (caller-runs), and the store.
        What is left (company for the batcher, a remote embedder, a store failure to retry) the event
        loop finishes (:meth:`search`)."""
        with self.metrics.time_stage("check"):
            sniff_image(image, max_bytes=self.settings.max_upload_bytes, max_pixels=self.settings.max_pixels)
        leg.stage = "alias lookup"
        leg.collection, leg.model_version = self._looked_up()
        leg.stage = "decoding"
        try:
            leg.prepared = self.metrics.time_if_done(
                "decode", lambda: self.embedder.prepare_here(image, leg.model_version)
            )
            if leg.prepared is None or self._searching > 1:  # others in flight: meet them in the batcher
                return
            leg.stage = "embedding"
            leg.vector = self.metrics.time_if_done(
                "embed", lambda: self.embedder.embed_here(leg.prepared, leg.model_version)
            )
        except Exception as exc:
            raise embedder_failure(exc, leg.model_version) from None
        if leg.vector is None:
            return
        leg.stage = "store search"
        try:
            leg.found = self._find(leg.collection, leg.model_version, leg.vector, page)
        except Exception as exc:
            leg.failure = exc

    def _find(self, collection: str, model_version: str, vector: np.ndarray, page: _Page) -> _Found:
        """The page of recipes, and the best score of all under the filter (rank 1's, whatever the page:
        the verdict's evidence)."""
        with self.metrics.time_stage("search"):
            found = self.store.search_recipes(
                collection,
                vector,
                limit=page.top_k,
                offset=page.offset,
                filter=page.filter,
                model_version=model_version,
            )
            if page.offset == 0:
                return _Found(found, found.hits[0].score if found.hits else None)
            top = self.store.search(
                collection, vector, limit=1, filter=page.filter, model_version=model_version
            )
            return _Found(found, top[0].score if top else None)

    async def _embed(
        self, image: bytes, model_version: str, deadline: float, prepared: Any = None
    ) -> np.ndarray:
        """The async path: decode (unless ``prepared``), then the batcher or the remote embedder."""
        try:
            if prepared is None:
                with self.metrics.time_stage("decode"):
                    prepared = await self.embedder.prepare(image, model_version, self.executor)
            with self.metrics.time_stage("embed"):
                remaining = max(deadline - time.monotonic(), 0.001)
                vectors = await self._bounded(
                    self.embedder.embed_prepared([prepared], model_version, remaining), deadline, "embedding"
                )
        except Exception as exc:
            raise embedder_failure(exc, model_version) from None
        return vectors[0]

    async def search(
        self,
        image: bytes,
        *,
        top_k: int | None = None,
        offset: int = 0,
        search_filter: SearchFilter | None = None,
        timeout_s: float | None = None,
        min_confidence: float = 0.0,
    ) -> SearchResult:
        """Photo → ranked recipes from the collection behind the alias, embedded with its model version.

        ``top_k`` ``None`` means the configured default (gRPC's unset 0 is passed as ``None``). The result
        carries the match verdict, judged from the best recipe under the filter whatever the page, each
        hit its own confidence; hits below ``min_confidence`` are dropped (:func:`judge_hits`). A search
        alone in flight runs in one worker thread from header check to store search, the model included
        (caller-runs); concurrent ones meet in the model's batcher.
        """
        start = time.perf_counter()
        top_k = self.settings.default_top_k if top_k is None else top_k
        check_paging(top_k, offset)
        self._searching += 1
        try:
            return await self._search(
                image, start, _Page(top_k, offset, search_filter), timeout_s, min_confidence
            )
        finally:
            self._searching -= 1

    async def _search(
        self, image: bytes, start: float, page: _Page, timeout_s: float | None, min_confidence: float
    ) -> SearchResult:
        budget = self.settings.embed_timeout_s
        deadline = time.monotonic() + (budget if timeout_s is None else min(timeout_s, budget))
        leg = _Leg()
        await self._bounded(
            self._blocking(lambda: self._search_here(leg, image, page)), deadline, lambda: leg.stage
        )
        collection, model_version = leg.collection, leg.model_version
        # Not embedded in the worker (other searches in flight, the model busy, or remote): the async path.
        vector = (
            leg.vector
            if leg.vector is not None
            else await self._embed(image, model_version, deadline, leg.prepared)
        )

        async def find() -> _Found:
            return await self._bounded(
                self._blocking(lambda: self._find(collection, model_version, vector, page)),
                deadline,
                "store search",
            )

        try:
            if leg.failure is not None:
                raise leg.failure
            found = leg.found if leg.found is not None else await find()
        except Exception as exc:
            # The collection may have gone under the search (alias swapped, old one dropped): look the
            # alias up once more and answer from where it points now, re-embedding if its model differs.
            moved = await self._moved(collection, exc, deadline)
            if moved is None:
                raise store_failure(exc, "search") from None
            log.info("collection %s went away during a search (%s); searching %s", collection, exc, moved[0])
            if moved[1] != model_version:
                vector = await self._embed(image, moved[1], deadline)
            collection, model_version = moved
            try:
                found = await find()
            except Exception as again:
                raise store_failure(again, "search") from None
        hits = [RecipeHit.from_match(page.offset + i + 1, m) for i, m in enumerate(found.results.hits)]
        calibration = self._calibration(collection, model_version)
        match, hits = judge_hits(calibration, vector, hits, min_confidence, best_score=found.best_score)
        took_ms = (time.perf_counter() - start) * 1000.0
        return SearchResult(
            hits, model_version, collection, took_ms, list(found.results.warnings), match=match
        )

    def _calibration(self, collection: str, model_version: str) -> MatchCalibration | None:
        """The collection's match calibration, read once per collection (a build never changes it)."""
        key = f"{collection}/{model_version}"
        if key not in self._calibrations:
            if len(self._calibrations) >= 16:
                self._calibrations.clear()
            self._calibrations[key] = calibration_of(
                self.store.collection_info(collection).extra, model_version
            )
        return self._calibrations[key]

    async def get_recipe(self, recipe_id: str, *, timeout_s: float | None = None) -> RecipeHit:
        """One recipe of the live collection, by its recipe id (or its point id)."""
        recipe_id = recipe_id.strip()
        if not recipe_id or len(recipe_id) > 256:
            raise GatewayError(ErrorKind.INVALID_ARGUMENT, "recipe id must be 1..256 characters")
        deadline = time.monotonic() + (self.settings.embed_timeout_s if timeout_s is None else timeout_s)
        collection, _ = await self.live_collection(deadline)

        def lookup() -> list[StoreHit]:
            try:
                ids = [str(uuid.UUID(recipe_id))]
            except ValueError:
                ids = self.store.ids_of_recipe(collection, recipe_id)
            return self.store.retrieve(collection, ids[:1]) if ids else []

        try:
            found = await self._bounded(self._blocking(lookup), deadline, "store lookup")
        except Exception as exc:
            moved = await self._moved(collection, exc, deadline)  # as in search: swapped away meanwhile
            if moved is None:
                raise store_failure(exc, "recipe lookup") from None
            collection = moved[0]
            try:
                found = await self._bounded(self._blocking(lookup), deadline, "store lookup")
            except Exception as again:
                raise store_failure(again, "recipe lookup") from None
        if not found:
            raise GatewayError(ErrorKind.NOT_FOUND, f"no recipe {recipe_id!r} in collection {collection}")
        return RecipeHit.from_store(1, found[0])

    async def readiness(self, timeout_s: float = 2.0) -> Readiness:
        """Store reachable, alias resolved, embedder reachable and holding the collection's model."""
        deadline = time.monotonic() + timeout_s
        checks: dict[str, str] = {}
        ready = True
        model_version: str | None = None
        try:
            collection, model_version = await self.live_collection(deadline)
            checks["store"] = f"ok: alias {self.alias!r} -> {collection} (model {model_version})"
        except GatewayError as exc:
            ready = False
            checks["store"] = f"error: {exc}"
        try:
            try:
                status = await self._bounded(self.embedder.status(timeout_s), deadline, "embedder check")
            except Exception as exc:
                raise embedder_failure(exc) from None
            checks["embedder"] = f"ok: {status.description}, models {', '.join(status.versions) or 'none'}"
            if model_version is not None and model_version not in status.versions:
                ready = False
                checks["versions"] = (
                    f"error: the collection needs model {model_version}, the embedder lacks it"
                )
            elif model_version is not None:
                checks["versions"] = "ok"
        except GatewayError as exc:
            ready = False
            checks["embedder"] = f"error: {exc}"
        return Readiness(ready, checks)

    async def wait_ready(self, timeout_s: float, period_s: float = 0.5) -> Readiness:
        """Poll :meth:`readiness` until ready; after ``timeout_s`` ``TimeoutError`` naming what failed."""
        deadline = time.monotonic() + timeout_s
        while True:
            readiness = await self.readiness(min(2.0, max(deadline - time.monotonic(), 0.1)))
            if readiness.ready:
                return readiness
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout_s:.0f} s: {readiness.line()}")
            await asyncio.sleep(period_s)

    async def aclose(self) -> None:
        await self.embedder.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)
