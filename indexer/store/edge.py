"""Qdrant Edge backend: one in-process EdgeShard per collection, on disk under one root folder.

Layout::

    <root>/aliases.json                      alias → collection, replaced atomically (temp + os.replace)
    <root>/collections/<name>/collection.json model_version, dimension, created_at, complete,
                                              generation, points_count (replaced atomically)
    <root>/collections/<name>/shard/          the EdgeShard (segments)
    <root>/collections/<name>/write.lock      flock held by the one process writing the collection

Concurrency between processes (a running gateway and the indexer on the same root) — measured with
qdrant-edge-py 0.9.0: a shard created with a write-ahead log is locked by the first process that
opens it (a second ``EdgeShard.load`` fails with ``WouldBlock``), a shard without one can be opened
by several processes, and loading or closing it writes nothing. So:

* Shards are created without a WAL and every write is flushed before it returns: a batch is on disk
  as a whole or not at all (checked by SIGKILLing a writer mid-flush), which is what resuming needs.
* One writer per collection, enforced with ``write.lock`` (released by the kernel if the writer dies).
* **Complete collections are immutable.** Readers (the gateway, ``recipelens-search``, verification)
  open them without any lock, any number of processes at once. Changes never touch them: a rebuild
  writes a new collection, and an incremental upsert/delete of a live collection writes a copy
  (:meth:`clone_collection` + edit + mark complete) and swaps the alias — blue/green for edits too.
* An incomplete collection is only ever opened by its writer (loading a shard that another process
  is writing makes that writer's next flush fail — measured), so reads of it (count, resume checks)
  take the write lock too. When a collection is marked complete it is loaded and closed once under
  the lock: the first load after writing compacts journals, later loads change no file (measured).
* ``aliases.json`` and ``collection.json`` are checked with one ``stat`` on every read and read again
  when their inode, size or times changed (every write replaces the file, so the inode changes), so a
  swap by the indexer is seen by a running gateway on its next search; a reader's cached handle is
  reopened when ``collection.json``'s generation changes.

How those small files are written, read and locked lives in :mod:`indexer.store.edge_files`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from indexer.store.base import (
    KEYWORD_INDEXES,
    CollectionInfo,
    CollectionNotFound,
    PointQuery,
    RecipePoint,
    RecipeStore,
    StoreError,
    StoreHit,
    StoreNotFound,
    now_stamp,
)
from indexer.store.edge_files import AliasFile, JsonFiles, lock_for_write, write_json_atomic

META_FILE = "collection.json"
SHARD_DIR = "shard"
LOCK_FILE = "write.lock"
_SCROLL_PAGE = 1024


class _Writer:
    """An open shard plus the flock that makes this process its only writer."""

    def __init__(self, shard: qe.EdgeShard | None, lock_fd: int) -> None:
        self.shard = shard
        self.lock_fd = lock_fd

    def close(self) -> None:
        try:
            if self.shard is not None:
                self.shard.close()
                self.shard = None
        finally:
            os.close(self.lock_fd)  # releases the flock


SEARCH_PARAMS = qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=True, oversampling=2.0))


class EdgeStore(RecipeStore):
    """Collections as Qdrant Edge shards under ``root`` (see the module docstring for the design)."""

    def __init__(self, root: str | Path, *, create: bool = True, search_threads: int = 1) -> None:
        """Open the store at ``root``; ``create=False`` (readers) refuses a folder that is not one.

        ``search_threads``: the search thread pool of each collection created here (Qdrant Edge keeps it
        with the shard: a clone inherits it, an existing collection keeps its own). 1 runs a search in
        the caller's thread; Qdrant Edge's default (0 here: one thread per CPU) hands every search to a
        pool whose threads spin before they sleep — measured on a one-segment collection of 64 points,
        0.2 ms of CPU per query against 0.05 ms with one thread, and twice the latency (0.10 vs
        0.05 ms). A gateway runs many searches at once, each in its own thread, so it gains nothing from
        a pool; a collection of many segments on a many-core machine searched one at a time might.
        """
        if search_threads < 0:
            raise ValueError("search_threads must be 0 (Qdrant Edge's default) or more")
        self.search_threads = search_threads
        self.root = Path(root)
        self.collections_dir = self.root / "collections"
        super().__init__(f"in {self.collections_dir}")
        if not create and not self.collections_dir.is_dir():
            what = (
                "does not exist" if not self.root.exists() else "is not a Qdrant Edge store (no collections/)"
            )
            raise StoreNotFound(
                f"the store {self.root} {what}: build an index there first (`recipelens-index build`)"
            )
        try:
            self.collections_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot use {self.root} as a Qdrant Edge folder: {exc}") from None
        self._writers: dict[str, _Writer] = {}
        self._readers: dict[str, tuple[qe.EdgeShard, int]] = {}  # name → (shard, generation)
        self._retired: list[qe.EdgeShard] = []
        self._lock = threading.RLock()
        self._files = JsonFiles()
        self._aliases = AliasFile(self.root, self.collections_dir, self._files)

    # -- paths and metadata ------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise StoreError(f"invalid collection name {name!r}")
        return self.collections_dir / name

    def _read_meta(self, name: str) -> dict[str, Any]:
        path = self._dir(name) / META_FILE
        try:
            meta: dict[str, Any] = dict(self._files.read(path))  # callers set top-level keys
        except FileNotFoundError:
            raise CollectionNotFound(f"no collection {name!r} in {self.collections_dir}") from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable collection metadata: {exc}") from None
        return meta

    def _write_meta(self, name: str, meta: dict[str, Any]) -> None:
        write_json_atomic(self._dir(name) / META_FILE, meta)

    # -- opening shards ----------------------------------------------------------------------
    def _lock_for_write(self, name: str) -> int:
        return lock_for_write(self._dir(name) / LOCK_FILE, name)

    def _writer(self, name: str) -> qe.EdgeShard:
        with self._lock:
            held = self._writers.get(name)
            if held is not None and held.shard is not None:
                return held.shard
            meta = self._read_meta(name)
            if meta.get("complete"):
                raise StoreError(
                    f"collection {name!r} is complete and therefore immutable on Qdrant Edge: "
                    "edit a copy (clone_collection) and swap the alias"
                )
            fd = self._lock_for_write(name)
            try:
                shard = qe.EdgeShard.load(str(self._dir(name) / SHARD_DIR))
            except Exception as exc:
                os.close(fd)
                raise StoreError(f"cannot open collection {name!r} for writing: {exc}") from None
            self._drop_reader(name)
            self._writers[name] = _Writer(shard, fd)
            return shard

    def _drop_reader(self, name: str) -> None:
        if name in self._readers:
            shard, _ = self._readers.pop(name)
            self._retired.append(shard)  # a concurrent search may still use it; closed in close()

    def _reader(self, name: str) -> qe.EdgeShard:
        with self._lock:
            held = self._writers.get(name)
            if held is not None and held.shard is not None:
                return held.shard
            meta = self._read_meta(name)  # also notices a dropped collection
            if not meta.get("complete"):
                # Loading a shard that another process writes disturbs that writer (measured: its next
                # flush fails), so an incomplete collection is only ever opened by its one writer.
                return self._writer(name)
            generation = int(meta.get("generation", 0))
            cached = self._readers.get(name)
            if cached is not None and cached[1] == generation:
                return cached[0]
            self._drop_reader(name)
            try:
                shard = qe.EdgeShard.load(str(self._dir(name) / SHARD_DIR))
            except Exception as exc:
                raise StoreError(f"cannot open collection {name!r}: {exc}") from None
            self._readers[name] = (shard, generation)
            return shard

    def _after_write(self, name: str, shard: qe.EdgeShard) -> None:
        shard.flush()
        meta = self._read_meta(name)
        meta["points_count"] = int(shard.info().points_count)
        meta["generation"] = int(meta.get("generation", 0)) + 1
        self._write_meta(name, meta)

    # -- collections -------------------------------------------------------------------------
    def _exists(self, name: str) -> bool:
        return self._dir(name).exists()

    def _create(self, name: str, meta: dict[str, Any], *, on_disk: bool, quantization: str | None) -> None:
        folder = self._dir(name)
        folder.mkdir(parents=True)
        meta.update(name=name, generation=0, points_count=0)
        fd = self._lock_for_write(name)
        quant = qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99) if quantization else None
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(
                size=int(meta["dimension"]), distance=qe.Distance.Cosine, on_disk=on_disk
            ),
            quantization_config=quant,
            wal_enabled=False,
            max_search_threads=self.search_threads or None,
        )
        try:
            shard = qe.EdgeShard.create(str(folder / SHARD_DIR), config)
            for field_name in KEYWORD_INDEXES:
                shard.update(qe.UpdateOperation.create_field_index(field_name, qe.PayloadSchemaType.Keyword))
            shard.flush()
            # Metadata last: a creator killed before this line leaves no collection to resume, only a
            # folder without collection.json (listed as broken, removable with drop).
            self._write_meta(name, meta)
        except Exception as exc:
            os.close(fd)
            raise StoreError(f"cannot create collection {name!r}: {exc}") from None
        with self._lock:
            self._writers[name] = _Writer(shard, fd)

    def collection_info(self, name: str) -> CollectionInfo:
        return self._info(name, self._read_meta(name))

    def list_collections(self) -> list[CollectionInfo]:
        found: list[CollectionInfo] = []
        for folder in sorted(p for p in self.collections_dir.iterdir() if p.is_dir()):
            try:
                found.append(self.collection_info(folder.name))
            except StoreError as exc:
                found.append(CollectionInfo(folder.name, "", 0, 0, "", False, extra={"broken": str(exc)}))
        return sorted(found, key=lambda c: (c.created_at, c.name))

    def mark_complete(self, name: str, complete: bool = True) -> None:
        with self._lock:
            writer = self._writers.pop(name, None)
            if writer is None:
                writer = _Writer(None, self._lock_for_write(name))
            try:
                meta = self._read_meta(name)
                if writer.shard is not None:
                    writer.shard.optimize()
                    writer.shard.flush()
                    meta["points_count"] = int(writer.shard.info().points_count)
                    writer.shard.close()
                    writer.shard = None
                if complete:
                    # The first load after writing compacts journals and rewrites edge_config.json; do it
                    # now, under the write lock, so that lock-free readers later find files that never change.
                    qe.EdgeShard.load(str(self._dir(name) / SHARD_DIR)).close()
                meta["complete"] = complete
                meta["generation"] = int(meta.get("generation", 0)) + 1
                meta["completed_at" if complete else "reopened_at"] = now_stamp()
                self._write_meta(name, meta)
            finally:
                writer.close()

    def set_extra(self, name: str, updates: dict[str, Any]) -> None:
        with self._lock:
            meta = self._read_meta(name)
            if meta.get("complete"):
                raise StoreError(f"collection {name!r} is complete and therefore immutable on Qdrant Edge")
            meta["extra"] = {**dict(meta.get("extra") or {}), **updates}
            self._write_meta(name, meta)

    def _drop(self, name: str) -> None:
        folder = self._dir(name)
        with self._lock:
            writer = self._writers.pop(name, None)
            if writer is not None:
                writer.close()
            self._drop_reader(name)
            fd = self._lock_for_write(name)  # refuses while another process writes it
            try:
                # Rename first so that a half-deleted folder is never mistaken for a collection.
                trash = self.collections_dir / f".dropped-{name}-{time.time_ns()}"
                folder.rename(trash)
            finally:
                os.close(fd)
            shutil.rmtree(trash, ignore_errors=True)

    def copy_on_write(self, name: str) -> bool:
        return self.collection_info(name).complete

    def clone_collection(self, source: str, target: str) -> CollectionInfo:
        meta = self._read_meta(source)
        if not meta.get("complete"):
            raise StoreError(f"only complete collections can be cloned; {source!r} is incomplete")
        folder = self._dir(target)
        if folder.exists():
            raise StoreError(f"collection {target!r} already exists in {self.collections_dir}")
        folder.mkdir(parents=True)
        new = dict(meta)
        new.update(
            name=target,
            complete=False,
            generation=0,
            created_at=now_stamp(),
            extra={**dict(meta.get("extra") or {}), "cloned_from": source, "purpose": "edit"},
        )
        new.pop("completed_at", None)
        self._write_meta(target, new)
        shutil.copytree(self._dir(source) / SHARD_DIR, folder / SHARD_DIR)  # immutable source: consistent
        return self._info(target, new)

    # -- points ------------------------------------------------------------------------------
    def _upsert(self, name: str, points: Sequence[RecipePoint]) -> None:
        shard = self._writer(name)
        batch = [
            qe.Point(p.id, np.asarray(p.vector, dtype=np.float32).tolist(), dict(p.payload)) for p in points
        ]
        shard.update(qe.UpdateOperation.upsert_points(batch))
        self._after_write(name, shard)

    def _delete(self, name: str, ids: list[str]) -> None:
        shard = self._writer(name)
        selected: list[Any] = list(ids)
        shard.update(qe.UpdateOperation.delete_points(selected))
        self._after_write(name, shard)

    def _query(self, name: str, query: PointQuery) -> list[StoreHit]:
        selected = query.payload
        request = qe.QueryRequest(
            limit=query.limit,
            offset=query.offset or None,
            query=qe.Query.Nearest(query.vector.tolist()),
            with_payload=qe.PayloadSelector.Include(list(selected))
            if isinstance(selected, tuple) and selected
            else bool(selected),
            filter=query.filter,
            # int8 collections: rescore 2× the candidates with the original vectors (bench/index.py:
            # without oversampling recall@10 stays near 0.94 whatever the ef); ignored without quantization
            params=SEARCH_PARAMS,
        )
        scored = self._reader(name).query(request)
        return [StoreHit(str(p.id), float(p.score), dict(p.payload or {})) for p in scored]

    def _facet(self, name: str, key: str) -> list[str]:
        response = self._reader(name).facet(qe.FacetRequest(key, limit=1 << 30, exact=True))
        return [str(h.value) for h in response.hits]

    def _vocabulary_key(self, name: str) -> object:
        meta = self._read_meta(name)
        return (meta.get("created_at"), meta.get("generation"))

    def _match_any(self, key: str, values: Sequence[str]) -> Any:
        return qe.FieldCondition(key, match=qe.MatchAny(list(values)))

    def _all_of(self, must: list[Any], must_not: list[Any]) -> Any:
        return qe.Filter(must=must or None, must_not=must_not or None)

    def retrieve(self, name: str, ids: Sequence[str], *, payload: list[str] | None = None) -> list[StoreHit]:
        if not ids:
            return []
        selector = qe.PayloadSelector.Include(payload) if payload else True
        records = self._reader(name).retrieve(list(ids), with_payload=selector, with_vector=False)
        return [StoreHit(str(r.id), 0.0, dict(r.payload or {})) for r in records]

    def count(self, name: str) -> int:
        return int(self._reader(name).count(qe.CountRequest(exact=True)))

    def _scroll(
        self, name: str, flt: qe.Filter | None, payload: list[str] | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        shard = self._reader(name)
        offset: Any = None
        selector = qe.PayloadSelector.Include(payload) if payload else False
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=_SCROLL_PAGE, filter=flt, with_payload=selector)
            )
            yield from ((str(r.id), dict(r.payload or {})) for r in records)
            if offset is None:
                return

    def ids_of_recipe(self, name: str, recipe_id: str) -> list[str]:
        flt = qe.Filter(must=[qe.FieldCondition("recipe_id", match=qe.MatchValue(recipe_id))])
        return [pid for pid, _ in self._scroll(name, flt)]

    def payload_hashes(self, name: str) -> dict[str, str]:
        return {
            pid: str(payload.get("source_hash", ""))
            for pid, payload in self._scroll(name, None, ["source_hash"])
        }

    # -- aliases -----------------------------------------------------------------------------
    def aliases(self) -> dict[str, str]:
        return self._aliases.read()

    def _set_alias(self, alias: str, collection: str) -> str | None:
        return self._aliases.set(alias, collection)

    def delete_alias(self, alias: str) -> None:
        self._aliases.delete(alias)

    def close(self) -> None:
        with self._lock:
            for writer in self._writers.values():
                if writer.shard is not None:
                    with contextlib.suppress(Exception):
                        writer.shard.flush()
                writer.close()
            self._writers.clear()
            for shard, _ in self._readers.values():
                shard.close()
            self._readers.clear()
            for shard in self._retired:
                with contextlib.suppress(Exception):
                    shard.close()
            self._retired.clear()
