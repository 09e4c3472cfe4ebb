"""Qdrant server backend through qdrant-client, with the same semantics as the Edge backend.

Collection metadata (model version, dimension, created_at, complete, points expected) lives in the
collection's own ``metadata`` (qdrant-client ≥ 1.15 / Qdrant ≥ 1.16). Aliases are switched with one
``update_collection_aliases`` call (delete + create in one request: atomic on the server). A server
handles concurrent readers and writers itself, so edits of a live collection happen in place.

``location=":memory:"`` gives qdrant-client's local mode — the same client code without a server,
which the congruence tests use where no ``QDRANT_URL`` is set.
"""

from __future__ import annotations

import logging
import uuid
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from indexer.store.base import (
    KEYWORD_INDEXES,
    CollectionInfo,
    CollectionNotFound,
    RecipePoint,
    RecipeStore,
    SearchFilter,
    StoreError,
    StoreHit,
    check_vectors,
)

log = logging.getLogger(__name__)

_SCROLL_PAGE = 1024


def server_filter(search_filter: SearchFilter | None) -> models.Filter | None:
    """The store's :class:`SearchFilter` as a qdrant-client filter (same meaning as the Edge one)."""
    if search_filter is None or search_filter.is_empty():
        return None
    must: list[Any] = []
    must_not: list[Any] = []
    if search_filter.categories:
        must.append(
            models.FieldCondition(key="category", match=models.MatchAny(any=list(search_filter.categories)))
        )
    for kw in search_filter.include_keywords():
        must.append(models.FieldCondition(key="ingredient_keywords", match=models.MatchValue(value=kw)))
    for group in search_filter.exclude_groups():
        conds = [
            models.FieldCondition(key="ingredient_keywords", match=models.MatchValue(value=kw))
            for kw in group
        ]
        must_not.append(conds[0] if len(conds) == 1 else models.Filter(must=list(conds)))
    return models.Filter(must=must or None, must_not=must_not or None)


class ServerStore(RecipeStore):
    """Collections on a Qdrant server (or qdrant-client's local mode with ``location``)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        prefer_grpc: bool = True,
        shard_number: int | None = None,
        replication_factor: int | None = None,
        timeout_s: int = 60,
        location: str | None = None,
    ) -> None:
        self.url = url or location or ""
        self.shard_number = shard_number
        self.replication_factor = replication_factor
        if location is not None:
            self.client = QdrantClient(location=location)
        else:
            self.client = QdrantClient(url=url, api_key=api_key, prefer_grpc=prefer_grpc, timeout=timeout_s)
        self._local = location is not None

    def _exists(self, name: str) -> bool:
        return bool(self.client.collection_exists(name))

    def _metadata(self, name: str) -> tuple[dict[str, Any], int]:
        try:
            info = self.client.get_collection(name)
        except (UnexpectedResponse, ValueError) as exc:
            if not self._exists(name):
                raise CollectionNotFound(f"no collection {name!r} on {self.url}") from None
            raise StoreError(f"cannot read collection {name!r} on {self.url}: {exc}") from None
        except Exception as exc:  # grpc errors
            if "not found" in str(exc).lower() or "doesn't exist" in str(exc).lower():
                raise CollectionNotFound(f"no collection {name!r} on {self.url}") from None
            raise StoreError(f"cannot read collection {name!r} on {self.url}: {exc}") from None
        return dict(info.config.metadata or {}), int(info.points_count or 0)

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
        if self._exists(name):
            raise StoreError(f"collection {name!r} already exists on {self.url}")
        if distance != "Cosine":
            raise StoreError(f"unsupported distance {distance!r} (only Cosine)")
        if quantization not in (None, "int8"):
            raise StoreError(f"unsupported quantization {quantization!r} (None or 'int8')")
        meta = {
            "model_version": model_version,
            "dimension": int(dimension),
            "distance": distance,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "complete": False,
            "extra": extra or {},
        }
        self.client.create_collection(
            name,
            vectors_config=models.VectorParams(
                size=int(dimension), distance=models.Distance.COSINE, on_disk=on_disk
            ),
            quantization_config=(
                models.ScalarQuantization(
                    scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99)
                )
                if quantization
                else None
            ),
            shard_number=self.shard_number,
            replication_factor=self.replication_factor,
            metadata=meta,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # local mode warns that payload indexes do nothing there
            for field_name in KEYWORD_INDEXES:
                self.client.create_payload_index(
                    name, field_name, models.PayloadSchemaType.KEYWORD, wait=True
                )
        log.info("created collection %s (%d-D, model %s) on %s", name, dimension, model_version, self.url)
        return self._info(name, meta, 0)

    @staticmethod
    def _info(name: str, meta: dict[str, Any], points: int) -> CollectionInfo:
        return CollectionInfo(
            name=name,
            model_version=str(meta.get("model_version", "")),
            dimension=int(meta.get("dimension", 0)),
            points_count=points,
            created_at=str(meta.get("created_at", "")),
            complete=bool(meta.get("complete", False)),
            distance=str(meta.get("distance", "Cosine")),
            extra=dict(meta.get("extra") or {}),
        )

    def collection_info(self, name: str) -> CollectionInfo:
        meta, points = self._metadata(name)
        return self._info(name, meta, points)

    def list_collections(self) -> list[CollectionInfo]:
        names = [c.name for c in self.client.get_collections().collections]
        infos = [self.collection_info(n) for n in names]
        return sorted(infos, key=lambda c: (c.created_at, c.name))

    def mark_complete(self, name: str, complete: bool = True) -> None:
        meta, _ = self._metadata(name)
        meta["complete"] = complete
        meta["completed_at" if complete else "reopened_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.client.update_collection(name, metadata=meta)

    def set_extra(self, name: str, updates: dict[str, Any]) -> None:
        meta, _ = self._metadata(name)
        meta["extra"] = {**dict(meta.get("extra") or {}), **updates}
        self.client.update_collection(name, metadata=meta)

    def drop_collection(self, name: str) -> None:
        if not self._exists(name):
            raise CollectionNotFound(f"no collection {name!r} on {self.url}")
        live = [a for a, c in self.aliases().items() if c == name]
        if live:
            raise StoreError(f"collection {name!r} is behind alias {live[0]!r}: swap or roll back first")
        self.client.delete_collection(name)
        log.info("dropped collection %s", name)

    # -- points ------------------------------------------------------------------------------
    def upsert(self, name: str, points: Sequence[RecipePoint], *, model_version: str) -> None:
        info = self.check_model_version(name, model_version)
        if not points:
            return
        check_vectors(name, points, info.dimension)
        self.client.upsert(
            name,
            points=[
                models.PointStruct(
                    id=p.id, vector=np.asarray(p.vector, dtype=np.float32).tolist(), payload=dict(p.payload)
                )
                for p in points
            ],
            wait=True,
        )

    def delete_points(self, name: str, ids: Sequence[str]) -> None:
        if ids:
            self.client.delete(name, points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def search(
        self,
        name: str,
        vector: np.ndarray,
        *,
        limit: int,
        offset: int = 0,
        filter: SearchFilter | None = None,
        model_version: str,
    ) -> list[StoreHit]:
        query = self.query_vector(name, vector, model_version)
        result = self.client.query_points(
            name,
            query=query.tolist(),
            limit=int(limit),
            offset=int(offset) or None,
            query_filter=server_filter(filter),
            with_payload=True,
        )
        return [StoreHit(str(p.id), float(p.score), dict(p.payload or {})) for p in result.points]

    def retrieve(self, name: str, ids: Sequence[str]) -> list[StoreHit]:
        if not ids:
            return []
        records = self.client.retrieve(name, ids=list(ids), with_payload=True, with_vectors=False)
        return [StoreHit(str(r.id), 0.0, dict(r.payload or {})) for r in records]

    def count(self, name: str) -> int:
        return int(self.client.count(name, exact=True).count)

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        records = self.client.retrieve(name, ids=list(ids), with_payload=False, with_vectors=False)
        return {str(uuid.UUID(str(r.id))) for r in records}

    def ids_of_recipe(self, name: str, recipe_id: str) -> list[str]:
        flt = models.Filter(
            must=[models.FieldCondition(key="recipe_id", match=models.MatchValue(value=recipe_id))]
        )
        found: list[str] = []
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                name, scroll_filter=flt, limit=_SCROLL_PAGE, offset=offset, with_payload=False
            )
            found.extend(str(r.id) for r in records)
            if offset is None:
                return found

    # -- aliases -----------------------------------------------------------------------------
    def aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def resolve_alias(self, alias: str) -> str | None:
        return self.aliases().get(alias)

    def swap_alias(self, alias: str, collection: str) -> None:
        info = self.collection_info(collection)
        if not info.complete:
            raise StoreError(f"collection {collection!r} is incomplete; it cannot go behind alias {alias!r}")
        previous = self.resolve_alias(alias)
        operations: list[Any] = []
        if previous is not None:
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        operations.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
            )
        )
        self.client.update_collection_aliases(change_aliases_operations=operations)
        log.info("alias %s: %s → %s", alias, previous, collection)

    def delete_alias(self, alias: str) -> None:
        if self.resolve_alias(alias) is not None:
            self.client.update_collection_aliases(
                change_aliases_operations=[
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
                ]
            )

    def close(self) -> None:
        self.client.close()
