"""Qdrant server backend through qdrant-client, with the same semantics as the Edge backend.

Collection metadata (model version, dimension, created_at, complete, points expected) lives in the
collection's own ``metadata`` (qdrant-client ≥ 1.15 / Qdrant ≥ 1.16). Aliases are switched with one
``update_collection_aliases`` call (delete + create in one request: atomic on the server). A server
handles concurrent readers and writers itself, so edits of a live collection happen in place.

``location=":memory:"`` gives qdrant-client's local mode — the same client code without a server,
which the congruence tests use where no ``QDRANT_URL`` is set.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from indexer.store.base import (
    GROUP_FETCH_LIMIT,
    KEYWORD_INDEXES,
    CollectionInfo,
    CollectionNotFound,
    PointQuery,
    RecipeMatch,
    RecipePoint,
    RecipeStore,
    StoreError,
    StoreHit,
    now_stamp,
)

_SCROLL_PAGE = 1024
# A server's payloads change in place (edits, other writers), so its filter vocabulary is read again
# after this long rather than keyed on a generation.
VOCABULARY_TTL_S = 30.0
# Collection metadata (~80 KB with the match calibration and quality figures) is read once per
# collection and kept until this process changes that collection (which forgets it at once) or, for
# changes made by other processes (another writer's points count, a build's completion), this long.
METADATA_TTL_S = 30.0
_METADATA_CACHED = 32  # collections come and go (names are per build): keep the cache small


def _payload(selected: bool | tuple[str, ...]) -> bool | list[str]:
    """qdrant-client's ``with_payload`` for a :class:`PointQuery` payload selection."""
    return list(selected) if isinstance(selected, tuple) and selected else bool(selected)


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
        super().__init__(f"on {self.url}")
        self.shard_number = shard_number
        self.replication_factor = replication_factor
        if location is not None:
            self.client = QdrantClient(location=location)
        else:
            self.client = QdrantClient(url=url, api_key=api_key, prefer_grpc=prefer_grpc, timeout=timeout_s)
        self._local = location is not None
        # name → (monotonic time read, metadata, points count); _epoch counts invalidations, so that a
        # read that raced with a change is not cached after it.
        self._meta_cache: dict[str, tuple[float, dict[str, Any], int]] = {}
        self._meta_epoch = 0
        self._meta_lock = threading.Lock()

    def _exists(self, name: str) -> bool:
        return bool(self.client.collection_exists(name))

    def _metadata(self, name: str) -> tuple[dict[str, Any], int]:
        """The collection's metadata (a copy the caller may change) and points count; cached, see above."""
        now = time.monotonic()
        with self._meta_lock:
            cached = self._meta_cache.get(name)
            epoch = self._meta_epoch
        if cached is None or now - cached[0] >= METADATA_TTL_S:
            meta, points = self._read_metadata(name)
            cached = (now, meta, points)
            with self._meta_lock:
                if epoch == self._meta_epoch:
                    if len(self._meta_cache) >= _METADATA_CACHED:
                        self._meta_cache.clear()
                    self._meta_cache[name] = cached
        return copy.deepcopy(cached[1]), cached[2]

    def _changed(self, name: str) -> None:
        super()._changed(name)
        with self._meta_lock:
            self._meta_cache.pop(name, None)
            self._meta_epoch += 1

    def _read_metadata(self, name: str) -> tuple[dict[str, Any], int]:
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

    def _create(self, name: str, meta: dict[str, Any], *, on_disk: bool, quantization: str | None) -> None:
        self.client.create_collection(
            name,
            vectors_config=models.VectorParams(
                size=int(meta["dimension"]), distance=models.Distance.COSINE, on_disk=on_disk
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
        meta["completed_at" if complete else "reopened_at"] = now_stamp()
        self.client.update_collection(name, metadata=meta)
        self._changed(name)

    def set_extra(self, name: str, updates: dict[str, Any]) -> None:
        meta, _ = self._metadata(name)
        meta["extra"] = {**dict(meta.get("extra") or {}), **updates}
        self.client.update_collection(name, metadata=meta)
        self._changed(name)

    def _drop(self, name: str) -> None:
        self.client.delete_collection(name)

    # -- points ------------------------------------------------------------------------------
    def _upsert(self, name: str, points: Sequence[RecipePoint]) -> None:
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

    def _delete(self, name: str, ids: list[str]) -> None:
        self.client.delete(name, points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def _query(self, name: str, query: PointQuery) -> list[StoreHit]:
        result = self.client.query_points(
            name,
            query=query.vector.tolist(),
            limit=query.limit,
            offset=query.offset or None,
            query_filter=query.filter,
            with_payload=_payload(query.payload),
        )
        return [StoreHit(str(p.id), float(p.score), dict(p.payload or {})) for p in result.points]

    def _recipes(self, name: str, query: PointQuery) -> list[RecipeMatch]:
        """Qdrant's query groups (``group_by="recipe_id"``, one photo per group); same answers as the base."""
        need = query.offset + query.limit
        if need > GROUP_FETCH_LIMIT:  # deeper than groups are worth: the bounded collapse of the base
            return super()._recipes(name, query)
        result = self.client.query_points_groups(
            name,
            query=query.vector.tolist(),
            group_by="recipe_id",
            limit=need,
            group_size=1,
            query_filter=query.filter,
            with_payload=_payload(query.payload),
        )
        return [
            RecipeMatch(str(g.id), float(g.hits[0].score), str(g.hits[0].id), dict(g.hits[0].payload or {}))
            for g in result.groups[query.offset :]
            if g.hits
        ]

    def _facet(self, name: str, key: str) -> list[str]:
        response = self.client.facet(name, key, limit=1 << 30, exact=True)
        return [str(h.value) for h in response.hits]

    def _vocabulary_key(self, name: str) -> object:
        return int(time.monotonic() // VOCABULARY_TTL_S)

    def _match_any(self, key: str, values: Sequence[str]) -> Any:
        return models.FieldCondition(key=key, match=models.MatchAny(any=list(values)))

    def _all_of(self, must: list[Any], must_not: list[Any]) -> Any:
        return models.Filter(must=must or None, must_not=must_not or None)

    def retrieve(self, name: str, ids: Sequence[str], *, payload: list[str] | None = None) -> list[StoreHit]:
        if not ids:
            return []
        records = self.client.retrieve(name, ids=list(ids), with_payload=payload or True, with_vectors=False)
        return [StoreHit(str(r.id), 0.0, dict(r.payload or {})) for r in records]

    def count(self, name: str) -> int:
        return int(self.client.count(name, exact=True).count)

    def _scroll(
        self, name: str, flt: models.Filter | None, payload: list[str] | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                name, scroll_filter=flt, limit=_SCROLL_PAGE, offset=offset, with_payload=payload or False
            )
            yield from ((str(uuid.UUID(str(r.id))), dict(r.payload or {})) for r in records)
            if offset is None:
                return

    def ids_of_recipe(self, name: str, recipe_id: str) -> list[str]:
        flt = models.Filter(
            must=[models.FieldCondition(key="recipe_id", match=models.MatchValue(value=recipe_id))]
        )
        return [pid for pid, _ in self._scroll(name, flt)]

    def payload_hashes(self, name: str) -> dict[str, str]:
        return {pid: str(p.get("source_hash", "")) for pid, p in self._scroll(name, None, ["source_hash"])}

    # -- aliases -----------------------------------------------------------------------------
    def aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def _set_alias(self, alias: str, collection: str) -> str | None:
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
        return previous

    def delete_alias(self, alias: str) -> None:
        if self.resolve_alias(alias) is not None:
            self.client.update_collection_aliases(
                change_aliases_operations=[
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
                ]
            )

    def close(self) -> None:
        self.client.close()
