"""Batch (re-)index of a whole catalogue: blue/green, resumable, nothing lost.

Data flows one way: catalogue → photo files → ``preprocess`` (thread pool) → embedder (in-process
onnxruntime, or the gRPC embedder with several batches in flight) → upsert in batches → verify →
mark complete → swap the alias. Decoding, embedding and upserting overlap: photos of the next
batches decode while one batch embeds and the previous one is written.

* Every build writes a new collection ``<alias>-<model version>-<UTC yyyymmddThhmmssZ>``; the alias
  moves only once that collection is complete and verified (count = catalogue − bad, and a sample of
  photos each finds its own recipe at rank 1). ``keep_previous`` older collections are kept.
* A build killed at any moment leaves the alias where it was; rerunning it finds the incomplete
  collection of the same alias, model version and catalogue and resumes it, catalogue-true: each point
  carries a ``source_hash`` of its payload and photo bytes, so a rerun skips exactly the points whose
  source is unchanged, re-embeds the ones that changed and deletes the ones that left the catalogue
  (point ids are deterministic, so nothing is stored twice). An unfinished collection of another
  catalogue (its recorded ``catalog_fingerprint`` differs) is left alone and a fresh one started,
  with a log line saying why. Nothing stale goes live.
* Bad photos go to a report (id, file, reason); the build fails when their share passes
  ``max_bad_fraction``.

This module is one pipeline whose stages share a build's state (about 500 lines); what stands on its
own lives elsewhere: collection names, pruning and rollback in :mod:`indexer.collections`, the
embedders in :mod:`embedder.factory`, the match verdict and quality gate in :mod:`indexer.quality`.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from embedder.cpus import decode_threads
from embedder.embedding import SyncEmbedder
from embedder.factory import open_embedder as open_any_embedder
from embedder.manifest import ModelIntegrityError
from embedder.model_folders import newest_model_folder, verify_model_folder
from embedder.preprocess import ImageDecodeError
from indexer.calibration import CALIBRATION_KEY
from indexer.catalog import (
    BadItem,
    Catalog,
    Recipe,
    load_photo,
    read_catalog,
    recipe_payload,
    write_bad_report,
)
from indexer.collections import new_collection_name, prune
from indexer.quality import QUALITY_KEY, CollectionQuality, assess_collection, gate_failures, quality_of
from indexer.settings import IndexerSettings
from indexer.store.base import (
    CollectionInfo,
    RecipePoint,
    RecipeStore,
    point_id,
)

log = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """The build stopped; the alias was not moved. The message says why and what to do."""


# -- embedding -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Photo:
    """One decoded catalogue photo on its way into the store."""

    recipe: Recipe
    image: Path | str
    id: str
    data: bytes
    array: np.ndarray


# In-process, one onnxruntime run may take several of the build's batches at once.
IN_PROCESS_MAX_BATCH = 256


def open_embedder(
    model_dir: str | Path, embedder_address: str | None, *, max_in_flight: int = 4
) -> SyncEmbedder:
    """The newest model in ``model_dir`` (verified), embedded in-process or by the service at the address.

    With an address the service must serve exactly that model version (the catalogue is indexed with it).
    """
    try:
        folder = newest_model_folder(model_dir)
        manifest = verify_model_folder(folder)
        embedder = open_any_embedder(
            embedder_address, folder, timeout_s=60.0, max_batch_size=IN_PROCESS_MAX_BATCH
        )
        timeout_s = 60.0 if embedder_address else None  # in-process runs have nothing to wait out
        return SyncEmbedder(embedder, manifest.version, max_in_flight=max_in_flight, timeout_s=timeout_s)
    except ModelIntegrityError as exc:
        raise BuildError(str(exc)) from None


# -- the build -----------------------------------------------------------------------------------
@dataclass
class BuildSummary:
    collection: str
    alias: str
    model_version: str
    indexed: int = 0
    skipped: int = 0
    changed: int = 0
    removed: int = 0
    bad: int = 0
    total: int = 0
    seconds: float = 0.0
    resumed: bool = False
    previous: str | None = None
    dropped: list[str] = field(default_factory=list)
    bad_report: Path | None = None
    quality: CollectionQuality | None = None
    forced: bool = False
    quality_seconds: float = 0.0  # of ``seconds``: calibrating the verdict and the quality gate

    @property
    def images_per_s(self) -> float:
        """Photos indexed per second, the fixed cost of the quality check left out."""
        seconds = self.seconds - self.quality_seconds
        return self.indexed / seconds if seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"indexed {self.indexed}, skipped {self.skipped} (already stored), re-embedded {self.changed} "
            f"(changed), removed {self.removed} (left the catalogue), bad {self.bad} "
            f"of {self.total} photos in {self.seconds:.1f}s ({self.images_per_s:.1f} images/s, quality check "
            f"{self.quality_seconds:.1f}s) → {self.collection} behind alias {self.alias!r}"
        )


def catalog_fingerprint(catalog_path: str | Path, fmt: str) -> str:
    """Which catalogue a build reads (its resolved path and format), recorded by unfinished collections."""
    where = Path(catalog_path).resolve().as_posix()
    return hashlib.sha256(f"{fmt}\0{where}".encode()).hexdigest()[:16]


def _resumable(
    store: RecipeStore, alias: str, model_version: str, fingerprint: str
) -> tuple[CollectionInfo | None, list[CollectionInfo]]:
    """The newest unfinished build of this alias, model and catalogue; and those of other catalogues."""
    candidates = [
        c
        for c in store.list_collections()
        if not c.complete
        and c.model_version == model_version
        and c.extra.get("purpose") == "build"
        and c.extra.get("alias") == alias
    ]
    same = [c for c in candidates if c.extra.get("catalog_fingerprint") == fingerprint]
    others = [c for c in candidates if c.extra.get("catalog_fingerprint") != fingerprint]
    return (same[-1] if same else None), others


def _source_hashes(
    catalog: Catalog, items: Sequence[tuple[Recipe, Path | str, str]], version: str, pool: ThreadPoolExecutor
) -> dict[str, str]:
    """point id → the ``source_hash`` its point would carry (payload + photo bytes); unreadable: ""."""

    def one(item: tuple[Recipe, Path | str, str]) -> str:
        recipe, image, _ = item
        try:
            data = Path(image).read_bytes()
        except OSError:
            return ""
        return str(recipe_payload(catalog.root, recipe, image, version, photo=data)["source_hash"])

    return {pid: h for (_, _, pid), h in zip(items, pool.map(one, items), strict=True)}


def _bad_check(bad: int, total: int, limit: float, report: Path | None) -> None:
    share = bad / total if total else 0.0
    if share > limit:
        where = f"; see {report}" if report else ""
        raise BuildError(
            f"{bad} of {total} photos are bad ({share:.1%}), above max_bad_fraction {limit:.1%}: "
            f"the alias was not moved{where}"
        )


def _decoded_batches(
    items: Sequence[tuple[Recipe, Path | str, str]],
    *,
    batch_size: int,
    pool: ThreadPoolExecutor,
    min_side: int,
    image_size: int,
    bad: list[BadItem],
    lookahead: int = 2,
) -> Iterator[list[Photo]]:
    """Decoded photos in batches (bad ones reported into ``bad``); ``lookahead`` batches decode ahead."""

    def decode(item: tuple[Recipe, Path | str, str]) -> Photo | BadItem:
        recipe, image, pid = item
        try:
            data, array = load_photo(image, size=image_size, min_side=min_side)
        except ImageDecodeError as exc:
            return BadItem(recipe.id, str(image), str(exc))
        return Photo(recipe, image, pid, data, array)

    starts = range(0, len(items), batch_size)
    pending: deque[list[Future[Photo | BadItem]]] = deque()
    submitted = 0
    for _ in starts:
        while submitted < len(starts) and len(pending) <= lookahead:
            chunk = items[submitted * batch_size : (submitted + 1) * batch_size]
            pending.append([pool.submit(decode, item) for item in chunk])
            submitted += 1
        futures = pending.popleft()
        good: list[Photo] = []
        for fut in futures:
            result = fut.result()
            if isinstance(result, Photo):
                good.append(result)
            else:
                bad.append(result)
        if good:
            yield good


def build_options(settings: IndexerSettings | None = None, **overrides: Any) -> IndexerSettings:
    """``settings`` (or the defaults, without the environment and without a bad-item report) + overrides."""
    base = settings.model_dump() if settings is not None else {"bad_report": None}
    return IndexerSettings.model_validate({**base, **overrides})


def build_index(
    catalog_path: str | Path,
    model_dir: str | Path,
    store: RecipeStore,
    *,
    settings: IndexerSettings | None = None,
    embedder: SyncEmbedder | None = None,
    force: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> BuildSummary:
    """Index a catalogue into a new (or resumed) collection and put it behind the alias.

    The knobs (alias, batch_size, keep_previous, verify_sample, bad_report, …) are those of
    :class:`~indexer.settings.IndexerSettings`: ``settings``, each overridable by keyword. Before the
    alias moves, the collection's figures are measured and compared with the live one's
    (:mod:`indexer.quality`); ``force`` moves it even when they are worse.
    """
    started = time.perf_counter()
    opts = build_options(settings, **overrides)
    alias, batch_size, bad_report = opts.alias, opts.batch_size, opts.bad_report
    embedder_address, max_in_flight = opts.embedder_address, opts.max_in_flight
    max_bad_fraction, min_side = opts.max_bad_fraction, opts.min_side
    catalog = read_catalog(catalog_path)
    if embedder is None:
        embedder = open_embedder(model_dir, embedder_address, max_in_flight=max_in_flight)
    version = embedder.version
    image_size = embedder.image_size
    report = Path(bad_report) if bad_report is not None else None
    total = catalog.photo_count + len(catalog.bad)
    if catalog.photo_count == 0:
        if report is not None:
            write_bad_report(catalog.bad, report)
        raise BuildError(f"{catalog_path}: no usable photos ({len(catalog.bad)} bad items)")
    if catalog.bad:
        log.warning(
            "%d bad catalogue item(s) in %s (missing files, empty titles, …)", len(catalog.bad), catalog_path
        )
    if report is not None:
        write_bad_report(catalog.bad, report)
    _bad_check(len(catalog.bad), total, max_bad_fraction, report)

    previous = store.resolve_alias(alias)
    fingerprint = catalog_fingerprint(catalog_path, catalog.format)
    resumable, others = _resumable(store, alias, version, fingerprint)
    for other in others:
        log.warning(
            "unfinished collection %s was filled from another catalogue (%s) and is not resumed from %s: "
            "%s; `recipelens-index drop %s` removes it",
            other.name,
            other.extra.get("catalog", "unrecorded"),
            catalog_path,
            "resuming another unfinished build" if resumable is not None else "starting a fresh collection",
            other.name,
        )
    if resumable is not None:
        name = resumable.name
        if resumable.dimension != embedder.dimension:
            raise BuildError(
                f"collection {name} is {resumable.dimension}-D but model {version} is {embedder.dimension}-D"
            )
        log.info("resuming unfinished collection %s (%d points stored)", name, resumable.points_count)
    else:
        name = new_collection_name(store, alias, version)
        store.create_collection(
            name,
            dimension=embedder.dimension,
            model_version=version,
            extra={
                "purpose": "build",
                "alias": alias,
                "catalog": str(catalog_path),
                "catalog_fingerprint": fingerprint,
                # what image names are relative to: the gateway's images_root (and upserts) use it
                "catalog_root": str(catalog.root.resolve()),
                "expected": catalog.photo_count,
            },
        )
    summary = BuildSummary(
        collection=name,
        alias=alias,
        model_version=version,
        total=total,
        resumed=resumable is not None,
        previous=previous,
        bad_report=report,
    )

    items = [(r, img, point_id(r.id, catalog.image_name(img))) for r, img in catalog.photos()]
    ids = [pid for _, _, pid in items]
    if len(set(ids)) != len(ids):
        raise BuildError(f"{catalog_path}: two photos of one recipe share a file name")
    bad: list[BadItem] = list(catalog.bad)
    workers = decode_threads(opts.decode_threads)
    todo = items
    if resumable is not None:
        stored = store.payload_hashes(name)
        with ThreadPoolExecutor(workers, thread_name_prefix="hash") as hash_pool:
            wanted = _source_hashes(catalog, items, version, hash_pool)
        gone = [pid for pid in stored if pid not in wanted]
        store.delete_points(name, gone)
        todo = [item for item in items if not stored.get(item[2]) or stored[item[2]] != wanted[item[2]]]
        store.set_extra(name, {"expected": catalog.photo_count})
        summary.removed = len(gone)
        summary.changed = sum(1 for _, _, pid in todo if pid in stored)
        if gone or summary.changed:
            log.info(
                "%s: %d point(s) changed since they were stored, %d left the catalogue",
                name,
                summary.changed,
                len(gone),
            )
    summary.skipped = len(items) - len(todo)
    bar = tqdm(total=len(todo), desc=f"indexing {name}", unit="photo", disable=not progress, smoothing=0.1)
    try:
        with (
            ThreadPoolExecutor(workers, thread_name_prefix="decode") as decode_pool,
            ThreadPoolExecutor(1, thread_name_prefix="upsert") as upsert_pool,
        ):
            batches = _decoded_batches(
                todo,
                batch_size=batch_size,
                pool=decode_pool,
                min_side=min_side,
                image_size=image_size,
                bad=bad,
            )
            batch_iter = iter(batches)
            seen: deque[list[Photo]] = deque()

            def remembered() -> Iterator[list[Photo]]:
                for batch in batch_iter:
                    seen.append(batch)
                    yield batch

            writing: Future[int] | None = None
            for vectors in embedder.embed_gallery_batches(remembered()):
                batch = seen.popleft()
                if len(vectors) != len(batch):
                    raise BuildError(f"embedder returned {len(vectors)} vectors for {len(batch)} photos")
                points = [
                    RecipePoint(
                        p.id, v, recipe_payload(catalog.root, p.recipe, p.image, version, photo=p.data)
                    )
                    for p, v in zip(batch, vectors, strict=True)
                ]
                if writing is not None:
                    bar.update(writing.result())
                writing = upsert_pool.submit(_upsert, store, name, points, version, opts.batch_pause_s)
                bar.set_postfix(bad=len(bad), refresh=False)
            if writing is not None:
                bar.update(writing.result())
    finally:
        bar.close()
    summary.bad = len(bad)
    summary.indexed = len(todo) - (len(bad) - len(catalog.bad))
    if report is not None:
        write_bad_report(bad, report)
    _bad_check(len(bad), total, max_bad_fraction, report)

    expected = total - len(bad)
    count = store.count(name)
    if count != expected:
        raise BuildError(
            f"verification failed: collection {name} holds {count} points, expected {expected} "
            f"(catalogue {total} − bad {len(bad)}); the alias was not moved"
        )
    bad_files = {(b.recipe_id, b.file) for b in bad}
    good = [item for item in items if (item[0].id, str(item[1])) not in bad_files]
    _verify_sample(
        store, name, embedder=embedder, good=good, sample=opts.verify_sample, image_size=image_size
    )
    checked = time.perf_counter()
    summary.quality = _assess_and_gate(
        store,
        name,
        previous,
        embedder=embedder,
        good=good,
        sample=opts.quality_sample,
        tolerance_points=opts.gate_tolerance_points,
        force=force,
    )
    summary.forced = force
    summary.quality_seconds = time.perf_counter() - checked

    store.mark_complete(name)
    store.swap_alias(alias, name)
    summary.dropped = prune(store, alias, opts.keep_previous, previous=previous)
    summary.seconds = time.perf_counter() - started
    log.info("%s", summary.line())
    return summary


def _upsert(store: RecipeStore, name: str, points: list[RecipePoint], version: str, pause_s: float) -> int:
    store.upsert(name, points, model_version=version)
    if pause_s:
        time.sleep(pause_s)
    return len(points)


def _verify_sample(
    store: RecipeStore,
    name: str,
    *,
    embedder: SyncEmbedder,
    good: Sequence[tuple[Recipe, Path | str, str]],
    sample: int,
    image_size: int,
) -> None:
    """Each sampled photo, embedded as it was stored, must find its own recipe at rank 1 (ties with
    identical photos count): a stored vector that is not the model's for its photo fails."""
    if sample <= 0 or not good:
        return
    chosen = random.Random(0).sample(  # noqa: S311 - a reproducible sample, not a secret
        list(good), min(sample, len(good))
    )
    photos = []
    for recipe, image, pid in chosen:
        data, array = load_photo(image, size=image_size, min_side=1)
        photos.append(Photo(recipe, image, pid, data, array))
    vectors = next(iter(embedder.embed_gallery_batches([photos])))
    failures = []
    for photo, vector in zip(photos, vectors, strict=True):
        hits = store.search(name, vector, limit=5, model_version=embedder.version)
        top = hits[0].score if hits else 0.0
        tied = {h.payload.get("recipe_id") for h in hits if h.score >= top - 1e-4}
        if photo.recipe.id not in tied:
            found = hits[0].payload.get("recipe_id") if hits else None
            failures.append(f"{photo.image} (recipe {photo.recipe.id}) → {found}")
    if failures:
        raise BuildError(
            f"verification failed: {len(failures)} of {len(photos)} sampled photos do not find their own "
            f"recipe first in {name}: " + "; ".join(failures[:5]) + "; the alias was not moved"
        )


def _assess_and_gate(
    store: RecipeStore,
    name: str,
    live: str | None,
    *,
    embedder: SyncEmbedder,
    good: Sequence[tuple[Recipe, Path | str, str]],
    sample: int,
    tolerance_points: float,
    force: bool,
) -> CollectionQuality | None:
    """Calibrate the match verdict, record the figures, refuse (unless ``force``) when worse than live."""
    if not good:
        log.warning("collection %s holds no photos to measure: no match calibration, no quality gate", name)
        return None
    calibration, quality = assess_collection(
        store,
        name,
        embedder.version,
        [(recipe.id, image) for recipe, image, _ in good],
        embedder.embed,
        sample=sample,
    )
    store.set_extra(name, {CALIBRATION_KEY: calibration.to_metadata(), QUALITY_KEY: quality.to_metadata()})
    if live is None or live == name:
        return quality
    before = quality_of(store.collection_info(live).extra)
    if before is None:
        log.info("quality gate: live collection %s has no recorded figures; nothing to compare", live)
        return quality
    failures = gate_failures(before, quality, tolerance_points)
    if not failures:
        log.info("quality gate passed: %s (live %s: %s)", name, live, before.line())
        return quality
    message = (
        f"quality gate: new collection {name} is worse than live {live} by more than "
        f"{tolerance_points:g} point(s): " + "; ".join(failures)
    )
    if force:
        log.warning("%s; moving the alias anyway (--force)", message)
        return quality
    raise BuildError(
        f"{message}. The alias was not moved; {name} is kept incomplete with its figures: rerun with "
        "--force to put it live anyway (the rerun resumes it), or roll back the model"
    )
