"""The one store interface the indexer and the gateway use, and (re-exported) what travels through it.

Two back ends implement :class:`RecipeStore`: :class:`~indexer.store.edge.EdgeStore` (Qdrant Edge,
in-process, on disk: the embedded default) and :class:`~indexer.store.server.ServerStore` (a Qdrant
server through qdrant-client). This module imports neither: :func:`indexer.store.open_store` picks
one from :class:`StoreSettings`. What both share (checks, guards, filters, grouping) is written here
once as template methods over a few primitives per back end; the values, settings and errors that
travel through it live in :mod:`indexer.store.records` and the filters in :mod:`indexer.store.filters`,
both re-exported here so that callers import everything from the interface.

Every collection records the model version and dimension that filled it and a ``complete`` flag;
nothing writes or searches vectors of one model in a collection of another
(:class:`ModelVersionMismatch`). Aliases (default ``recipes``) name the live collection and are
swapped atomically.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, TypedDict, Unpack

import numpy as np

# The filters belong to this interface; they live in indexer.store.filters and are re-exported here.
from indexer.store.filters import (
    MAX_FILTER_BYTES,
    MAX_FILTER_TERMS,
    MAX_TERM_CHARS,
    InvalidFilter,
    ResolvedFilter,
    SearchFilter,
    Vocabulary,
)

# What travels through the interface lives in indexer.store.records; it is re-exported here.
from indexer.store.records import (
    DEFAULT_ALIAS,
    KEYWORD_INDEXES,
    CollectionBusy,
    CollectionInfo,
    CollectionNotFound,
    ModelVersionMismatch,
    PointQuery,
    RecipeMatch,
    RecipePoint,
    RecipeResults,
    StoreError,
    StoreHit,
    StoreNotFound,
    StoreSettings,
    check_vectors,
    now_stamp,
    point_id,
)

__all__ = [
    "DEFAULT_ALIAS",
    "GROUP_FETCH_LIMIT",
    "GROUP_FETCH_MIN",
    "GROUP_OVERFETCH",
    "KEYWORD_INDEXES",
    "MAX_FILTER_BYTES",
    "MAX_FILTER_TERMS",
    "MAX_TERM_CHARS",
    "CollectionBusy",
    "CollectionInfo",
    "CollectionNotFound",
    "InvalidFilter",
    "ModelVersionMismatch",
    "PointQuery",
    "RecipeMatch",
    "RecipePoint",
    "RecipeResults",
    "RecipeStore",
    "ResolvedFilter",
    "SearchArgs",
    "SearchFilter",
    "StoreError",
    "StoreHit",
    "StoreNotFound",
    "StoreSettings",
    "Vocabulary",
    "check_vectors",
    "collapse",
    "now_stamp",
    "point_id",
]

log = logging.getLogger("indexer.store")


class _SearchArgsNeeded(TypedDict):
    limit: int
    model_version: str


class SearchArgs(_SearchArgsNeeded, total=False):
    """The keywords of :meth:`RecipeStore.search` and :meth:`RecipeStore.search_recipes`, declared once.

    ``limit`` (and ``offset``) count photos for ``search`` and recipes for ``search_recipes``;
    ``model_version`` is the version of the model that made the query vector (checked against the
    collection's); ``filter`` narrows by category and ingredient keywords. ``limit`` and
    ``model_version`` are required (the base class says so at run time too, where ``Required[...]``
    under postponed annotations would not).
    """

    offset: int
    filter: SearchFilter | None


def _check_search_args(args: SearchArgs) -> None:
    """A keyword missing or unknown is a TypeError, as with an explicit signature (``**`` accepts any)."""
    missing = SearchArgs.__required_keys__ - args.keys()
    unknown = args.keys() - SearchArgs.__required_keys__ - SearchArgs.__optional_keys__
    if missing or unknown:
        problems = [f"missing {', '.join(sorted(missing))}"] if missing else []
        problems += [f"unexpected {', '.join(sorted(unknown))}"] if unknown else []
        raise TypeError(f"store search keywords: {'; '.join(problems)}")


class RecipeStore(ABC):
    """Collections of recipe photo vectors with payloads, and the aliases that name the live one.

    The checks and the search logic live here once (template methods); a back end implements the
    underscore primitives (``_exists``, ``_create``, ``_drop``, ``_upsert``, ``_query``, ``_facet``,
    ``_set_alias``, …) and the plain reads, and may replace a step (the server groups recipes with
    Qdrant's query groups in ``_recipes``; it caches metadata and extends ``_changed``).
    """

    def __init__(self, where: str) -> None:
        #: where collections live, for messages ("in var/qdrant/collections", "on http://qdrant:6333")
        self.where = where
        self._vocab_cache: dict[str, tuple[object, Vocabulary]] = {}
        self._vocab_lock = threading.Lock()

    # -- collections -------------------------------------------------------------------------
    def create_collection(
        self,
        name: str,
        *,
        dimension: int,
        model_version: str,
        distance: str = "Cosine",
        on_disk: bool = False,
        quantization: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> CollectionInfo:
        """Create an empty, incomplete collection with its payload indexes."""
        if self._exists(name):
            raise StoreError(f"collection {name!r} already exists {self.where}")
        if distance != "Cosine":
            raise StoreError(f"unsupported distance {distance!r} (only Cosine)")
        if quantization not in (None, "int8"):
            raise StoreError(f"unsupported quantization {quantization!r} (None or 'int8')")
        meta: dict[str, Any] = {
            "model_version": model_version,
            "dimension": int(dimension),
            "distance": distance,
            "created_at": now_stamp(),
            "complete": False,
            "extra": extra or {},
        }
        self._create(name, meta, on_disk=on_disk, quantization=quantization)
        self._changed(name)
        log.info("created collection %s (%d-D, model %s) %s", name, dimension, model_version, self.where)
        return self._info(name, meta, 0)

    @staticmethod
    def _info(name: str, meta: dict[str, Any], points: int | None = None) -> CollectionInfo:
        """A :class:`CollectionInfo` from a collection's stored metadata."""
        return CollectionInfo(
            name=name,
            model_version=str(meta.get("model_version", "")),
            dimension=int(meta.get("dimension", 0)),
            points_count=int(meta.get("points_count", 0) if points is None else points),
            created_at=str(meta.get("created_at", "")),
            complete=bool(meta.get("complete", False)),
            distance=str(meta.get("distance", "Cosine")),
            extra=dict(meta.get("extra") or {}),
        )

    @abstractmethod
    def collection_info(self, name: str) -> CollectionInfo:
        """Raises :class:`CollectionNotFound`."""

    @abstractmethod
    def list_collections(self) -> list[CollectionInfo]:
        """Every collection this store holds, oldest first."""

    @abstractmethod
    def mark_complete(self, name: str, complete: bool = True) -> None:
        """Flag a collection as complete (verified, safe to put behind an alias)."""

    @abstractmethod
    def set_extra(self, name: str, updates: dict[str, Any]) -> None:
        """Merge ``updates`` into an incomplete collection's ``extra`` metadata."""

    def drop_collection(self, name: str) -> None:
        """Remove a collection that no alias points to."""
        if not self._exists(name):
            raise CollectionNotFound(f"no collection {name!r} {self.where}")
        live = sorted(a for a, c in self.aliases().items() if c == name)
        if live:
            raise StoreError(
                f"collection {name!r} is behind alias {live[0]!r}: put another collection behind it first "
                f"(`recipelens-index swap NAME --alias {live[0]}` or `recipelens-index rollback`)"
            )
        self._drop(name)
        self._changed(name)
        log.info("dropped collection %s", name)

    # -- points ------------------------------------------------------------------------------
    def upsert(self, name: str, points: Sequence[RecipePoint], *, model_version: str) -> None:
        """Insert or replace points; durable when this returns."""
        info = self.check_model_version(name, model_version)
        if not points:
            return
        check_vectors(name, points, info.dimension)
        self._upsert(name, points)
        self._changed(name)

    def delete_points(self, name: str, ids: Sequence[str]) -> None:
        if ids:
            self._delete(name, list(ids))
            self._changed(name)

    def search(self, name: str, vector: np.ndarray, **query: Unpack[SearchArgs]) -> list[StoreHit]:
        """The nearest photos (points), best first; see :meth:`search_recipes` for one hit per recipe."""
        point_query, _ = self._point_query(name, vector, query)
        return self._query(name, point_query)

    def search_recipes(self, name: str, vector: np.ndarray, **query: Unpack[SearchArgs]) -> RecipeResults:
        """Distinct recipes, best first: each once, at the rank and score of its best photo.

        ``limit`` and ``offset`` count recipes. The result carries the filter's warnings (terms that
        match nothing in the collection). How a back end groups is its :meth:`_recipes`.
        """
        point_query, resolved = self._point_query(name, vector, query)
        if point_query.limit <= 0:
            return RecipeResults([], resolved.warnings)
        return RecipeResults(self._recipes(name, point_query), resolved.warnings)

    def _point_query(
        self, name: str, vector: np.ndarray, args: SearchArgs
    ) -> tuple[PointQuery, ResolvedFilter]:
        """A search's arguments checked against ``name`` (model, dimension, filter terms)."""
        _check_search_args(args)
        query = self.query_vector(name, vector, args["model_version"])
        resolved = self.resolve_filter(name, args.get("filter"))
        limit, offset = int(args["limit"]), int(args.get("offset", 0))
        return PointQuery(query, limit, offset, self._native(resolved)), resolved

    def _recipes(self, name: str, query: PointQuery) -> list[RecipeMatch]:
        """The page of distinct recipes ``query`` asks for (its limit and offset count recipes).

        This default over-fetches photos and collapses them by ``recipe_id``, growing the fetch
        fourfold until the page is full, the collection is exhausted or :data:`GROUP_FETCH_LIMIT`
        photos were read (then the page may be short: recipes with that many photos each ahead of it
        are rare and the bound keeps the cost of one search fixed).
        """
        need = query.offset + query.limit
        fetch = min(GROUP_FETCH_LIMIT, max(GROUP_FETCH_MIN, need * GROUP_OVERFETCH))
        while True:
            # Scores with the recipe id alone, then whole payloads for the page only: on Qdrant Edge the
            # cost of a search grows with the payloads it converts (measured: a query returning 32
            # payloads costs 0.7 ms more than one returning none).
            hits = self._query(name, replace(query, limit=fetch, offset=0, payload=("recipe_id",)))
            best = collapse(hits, need)
            if len(best) >= need or len(hits) < fetch or fetch >= GROUP_FETCH_LIMIT:
                break
            fetch = min(GROUP_FETCH_LIMIT, fetch * 4)
        page = best[query.offset : need]
        payloads = {h.id: h.payload for h in self.retrieve(name, [h.id for h in page])}
        return [
            RecipeMatch(str(h.payload.get("recipe_id", h.id)), h.score, h.id, payloads.get(h.id, h.payload))
            for h in page
        ]

    @abstractmethod
    def retrieve(self, name: str, ids: Sequence[str], *, payload: list[str] | None = None) -> list[StoreHit]:
        """Points by id (score 0), in no particular order; unknown ids are left out.

        ``payload``: only these payload keys (default: all).
        """

    @abstractmethod
    def count(self, name: str) -> int: ...

    @abstractmethod
    def ids_of_recipe(self, name: str, recipe_id: str) -> list[str]:
        """Point ids of every photo of one recipe."""

    @abstractmethod
    def payload_hashes(self, name: str) -> dict[str, str]:
        """point id → the ``source_hash`` stored in its payload ("" where none): what a resume checks."""

    # -- filters -----------------------------------------------------------------------------
    def vocabulary(self, name: str) -> Vocabulary:
        """The categories and ingredient keywords ``name`` holds (cached; see :meth:`_vocabulary_key`)."""
        key = self._vocabulary_key(name)
        with self._vocab_lock:
            cached = self._vocab_cache.get(name)
            if cached is not None and cached[0] == key:
                return cached[1]
        vocab = Vocabulary.of(self._facet(name, "category"), self._facet(name, "ingredient_keywords"))
        with self._vocab_lock:
            if len(self._vocab_cache) > 32:  # collections come and go: keep the cache small
                self._vocab_cache.clear()
            self._vocab_cache[name] = (key, vocab)
        return vocab

    def _changed(self, name: str) -> None:
        """Forget what this store cached about collection ``name``: it has just changed through it.

        Back ends that cache more (the server's collection metadata) extend this.
        """
        with self._vocab_lock:
            self._vocab_cache.pop(name, None)

    def resolve_filter(self, name: str, search_filter: SearchFilter | None) -> ResolvedFilter:
        """``search_filter`` in the spellings ``name`` holds, with a warning per term it lacks."""
        return ResolvedFilter.of(search_filter, lambda: self.vocabulary(name))

    def _native(self, resolved: ResolvedFilter) -> Any:
        """The back end's filter object for a resolved filter (None: no filter)."""
        if resolved.is_empty():
            return None
        must: list[Any] = []
        must_not: list[Any] = []
        if resolved.categories is not None:
            must.append(self._match_any("category", resolved.categories))
        must.extend(self._match_any("ingredient_keywords", group) for group in resolved.include)
        for groups in resolved.exclude:
            conds = [self._match_any("ingredient_keywords", group) for group in groups]
            must_not.append(conds[0] if len(conds) == 1 else self._all_of(conds, []))
        return self._all_of(must, must_not)

    # -- aliases -----------------------------------------------------------------------------
    @abstractmethod
    def aliases(self) -> dict[str, str]:
        """alias → collection."""

    def resolve_alias(self, alias: str) -> str | None:
        return self.aliases().get(alias)

    def swap_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at complete ``collection`` in one atomic step."""
        self._changed(collection)  # completeness is read fresh: another process may have just set it
        info = self.collection_info(collection)
        if not info.complete:
            raise StoreError(f"collection {collection!r} is incomplete; it cannot go behind alias {alias!r}")
        previous = self._set_alias(alias, collection)
        log.info("alias %s: %s → %s", alias, previous, collection)

    @abstractmethod
    def delete_alias(self, alias: str) -> None: ...

    # -- edits of a live collection ----------------------------------------------------------
    def copy_on_write(self, name: str) -> bool:
        """Whether edits of ``name`` must go to a copy (blue/green) rather than in place."""
        return False

    def clone_collection(self, source: str, target: str) -> CollectionInfo:
        """A copy of complete ``source`` under a new, incomplete name (copy-on-write backends)."""
        raise StoreError(f"{type(self).__name__} does not clone collections")

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> RecipeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared checks -----------------------------------------------------------------------
    def check_model_version(self, name: str, model_version: str) -> CollectionInfo:
        info = self.collection_info(name)
        if info.model_version != model_version:
            raise ModelVersionMismatch(name, info.model_version, model_version)
        return info

    def query_vector(self, name: str, vector: np.ndarray, model_version: str) -> np.ndarray:
        """The query as a flat float32 vector, checked against the collection's model and dimension."""
        info = self.check_model_version(name, model_version)
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape != (info.dimension,):
            raise StoreError(
                f"query vector of dimension {query.shape[0]} does not fit collection {name!r} "
                f"of dimension {info.dimension}"
            )
        return query

    # -- what a back end implements ----------------------------------------------------------
    @abstractmethod
    def _exists(self, name: str) -> bool: ...

    @abstractmethod
    def _create(self, name: str, meta: dict[str, Any], *, on_disk: bool, quantization: str | None) -> None:
        """Create the empty collection with ``meta`` and the :data:`KEYWORD_INDEXES`."""

    @abstractmethod
    def _drop(self, name: str) -> None: ...

    @abstractmethod
    def _upsert(self, name: str, points: Sequence[RecipePoint]) -> None: ...

    @abstractmethod
    def _delete(self, name: str, ids: list[str]) -> None: ...

    @abstractmethod
    def _query(self, name: str, query: PointQuery) -> list[StoreHit]:
        """The nearest points ``query`` asks for, with the payloads it asks for."""

    @abstractmethod
    def _facet(self, name: str, key: str) -> list[str]:
        """Every distinct value of payload ``key`` in ``name``."""

    @abstractmethod
    def _vocabulary_key(self, name: str) -> object:
        """Changes whenever ``name``'s payloads may have changed: the vocabulary cache's key."""

    @abstractmethod
    def _match_any(self, key: str, values: Sequence[str]) -> Any:
        """A condition: payload ``key`` holds one of ``values``."""

    @abstractmethod
    def _all_of(self, must: list[Any], must_not: list[Any]) -> Any:
        """A filter: every ``must`` condition and none of ``must_not``."""

    @abstractmethod
    def _set_alias(self, alias: str, collection: str) -> str | None:
        """Point ``alias`` at ``collection`` atomically; the collection it pointed at before."""


# A grouped search reads need × GROUP_OVERFETCH photos first (at least GROUP_FETCH_MIN), four times as
# many while the page is short, and at most GROUP_FETCH_LIMIT photos in all. Most catalogues hold one
# to three photos per recipe, so the first read usually fills the page.
GROUP_OVERFETCH = 3
GROUP_FETCH_MIN = 16
GROUP_FETCH_LIMIT = 2048


def collapse(hits: Sequence[StoreHit], limit: int) -> list[StoreHit]:
    """The first hit of each ``recipe_id``, in order, at most ``limit`` of them."""
    seen: set[str] = set()
    best: list[StoreHit] = []
    for hit in hits:
        rid = str(hit.payload.get("recipe_id", hit.id))
        if rid not in seen:
            seen.add(rid)
            best.append(hit)
            if len(best) >= limit:
                break
    return best
