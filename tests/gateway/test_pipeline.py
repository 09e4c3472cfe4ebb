"""The one search path without a port: SearchGateway over Qdrant Edge and the in-process embedder."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from embedder.factory import open_embedder
from embedder.inprocess import InProcessEmbedder
from embedder.runtime import EmbeddingModel
from gateway.errors import ErrorKind, GatewayError
from gateway.pipeline import SearchGateway
from gateway.settings import GatewaySettings
from indexer.calibration import CALIBRATION_KEY, MatchCalibration, match_verdict
from indexer.store.base import RecipePoint, SearchFilter, point_id
from indexer.store.edge import EdgeStore
from tests.gateway.conftest import N_RECIPES, World, gateway_settings, recipe_payload


@contextlib.asynccontextmanager
async def _opened(world: World, **overrides: object) -> AsyncIterator[SearchGateway]:
    """A SearchGateway over the world's store and models (settings overridden), closed with its store."""
    settings = gateway_settings(world, **overrides)
    embedder = open_embedder(None, settings.model_dir, watch_model_dir=True)
    gw = SearchGateway(EdgeStore(world.store_path), embedder, settings, workers=2)
    try:
        yield gw
    finally:
        await gw.aclose()
        gw.store.close()


@pytest.fixture
async def gateway(world: World) -> AsyncIterator[SearchGateway]:
    async with _opened(world) as gw:
        yield gw


def _kind(exc: pytest.ExceptionInfo[GatewayError]) -> ErrorKind:
    return exc.value.kind


async def test_search_answers_with_the_collection_model(
    gateway: SearchGateway, world: World, query_photos: list[bytes]
) -> None:
    result = await gateway.search(query_photos[3], top_k=3)
    assert result.hits[0].recipe_id == "r003" and [h.rank for h in result.hits] == [1, 2, 3]
    assert result.model_version == world.version_a and result.collection == world.collection_a
    paged = await gateway.search(query_photos[3], top_k=2, offset=1)
    assert [h.recipe_id for h in paged.hits] == [h.recipe_id for h in result.hits[1:3]]
    assert [h.rank for h in paged.hits] == [2, 3]
    assert (
        len((await gateway.search(query_photos[3])).hits) == gateway.settings.default_top_k
    )  # None: the default


@pytest.mark.parametrize(("top_k", "offset"), [(0, 0), (101, 0), (5, -1), (5, 10_001)])
async def test_paging_is_checked_before_anything_else(
    gateway: SearchGateway, top_k: int, offset: int
) -> None:
    with pytest.raises(GatewayError) as info:
        await gateway.search(b"not even a photo", top_k=top_k, offset=offset)
    assert _kind(info) is ErrorKind.INVALID_ARGUMENT
    assert ("top_k" if offset in (0, -1) and top_k != 5 else "offset") in str(info.value)


async def test_missing_alias_fails_search_readiness_and_wait(world: World, query_photos: list[bytes]) -> None:
    async with _opened(world, alias="absent") as gw:
        with pytest.raises(GatewayError) as info:
            await gw.search(query_photos[0])
        assert _kind(info) is ErrorKind.FAILED_PRECONDITION and "'absent'" in str(info.value)
        readiness = await gw.readiness()
        assert not readiness.ready and "absent" in readiness.checks["store"]
        assert readiness.checks["embedder"].startswith("ok")
        with pytest.raises(TimeoutError, match="absent"):
            await gw.wait_ready(0.3, period_s=0.05)


async def test_embedder_without_the_collection_model(
    world: World, tmp_path: Path, query_photos: list[bytes]
) -> None:
    only_b = tmp_path / "models"
    only_b.mkdir()
    (only_b / "tiny-b").symlink_to(world.models / "tiny-b", target_is_directory=True)
    async with _opened(world, model_dir=only_b) as gw:
        with pytest.raises(GatewayError) as info:
            await gw.search(query_photos[0])
        assert _kind(info) is ErrorKind.FAILED_PRECONDITION and world.version_a in str(info.value)
        readiness = await gw.readiness()
        assert not readiness.ready and world.version_a in readiness.checks["versions"]


async def test_get_recipe(gateway: SearchGateway) -> None:
    assert (await gateway.get_recipe(" r004 ")).title == "Recipe 4"
    with pytest.raises(GatewayError) as info:
        await gateway.get_recipe("r999")
    assert _kind(info) is ErrorKind.NOT_FOUND
    with pytest.raises(GatewayError) as info:
        await gateway.get_recipe("x" * 257)
    assert _kind(info) is ErrorKind.INVALID_ARGUMENT


def test_authorize_takes_only_a_configured_bearer_key(world: World) -> None:
    settings = GatewaySettings(api_keys=[SecretStr("key-one"), SecretStr("key-two")])
    gw = SearchGateway(EdgeStore(world.store_path), open_embedder(None, world.models), settings, workers=1)
    try:
        assert gw.auth_enabled
        for header in (None, "", "Bearer", "Basic key-one", "Bearer wrong"):
            with pytest.raises(GatewayError) as info:
                gw.authorize(header)
            assert _kind(info) is ErrorKind.UNAUTHENTICATED
        gw.authorize("Bearer key-two")
        gw.authorize("bearer  key-one ")
    finally:
        gw.store.close()


async def test_a_lone_search_runs_the_model_in_its_worker_and_concurrent_ones_share_a_run(
    gateway: SearchGateway, world: World, query_photos: list[bytes]
) -> None:
    assert isinstance(gateway.embedder, InProcessEmbedder)
    batcher = gateway.embedder.resolve(world.version_a).batcher
    model_run, gate, threads = batcher.run_batch, threading.Event(), []

    def watched(items: list[np.ndarray]) -> list[np.ndarray]:  # the real model, once the gate is open
        threads.append(threading.current_thread().name)
        gate.wait(5)
        return model_run(items)

    batcher.run_batch = watched
    try:
        gate.set()
        alone = [await gateway.search(q, top_k=3) for q in query_photos]
        assert len(threads) == len(query_photos) and all(t.startswith("gateway") for t in threads)
        threads.clear()
        gate.clear()
        largest = batcher.stats.largest_batch
        searches = [asyncio.ensure_future(gateway.search(q, top_k=3)) for q in query_photos]
        await asyncio.sleep(0.3)  # the first run waits at the gate; the others queue behind it
        gate.set()
        together = await asyncio.gather(*searches)
    finally:
        batcher.run_batch = model_run
    assert largest == 1 and batcher.stats.largest_batch > 1  # concurrent searches met in one run
    assert threads and not any(t.startswith("gateway") for t in threads)  # in the batcher's thread
    for a, b in zip(alone, together, strict=True):  # the same answers either way
        assert [h.recipe_id for h in a.hits] == [h.recipe_id for h in b.hits]
        np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], atol=1e-5)


def _thread_ids() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def _batch_scheduled(tid: int) -> bool:
    try:
        return os.sched_getscheduler(tid) == os.SCHED_BATCH
    except OSError:  # the thread ended meanwhile
        return False


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
async def test_search_workers_yield_to_the_model_threads_on_wake(
    world: World, query_photos: list[bytes]
) -> None:
    """The workers (header check, decode, store; the model too when a search is alone) run under
    SCHED_BATCH; a batch of concurrent searches runs in the batcher's thread under the default policy."""
    seen: dict[bool, list[tuple[str, int]]] = {}
    for on in (True, False):
        async with _opened(world, sched_batch=on) as gw:
            # the threads there now (the runtime's among them: its sessions were made at load), but those
            # of earlier gateways still winding down, which have the policy already
            loaded = {t for t in _thread_ids() if not _batch_scheduled(t)}
            assert isinstance(gw.embedder, InProcessEmbedder)
            batcher = gw.embedder.resolve(world.version_a).batcher
            model_run, runs = batcher.run_batch, []

            def watched(items: list[np.ndarray], model_run: object = model_run, runs: list = runs) -> object:
                runs.append((threading.current_thread().name, os.sched_getscheduler(0)))
                time.sleep(0.05)  # while it runs, the other searches queue for one batch
                return model_run(items)  # type: ignore[operator]

            batcher.run_batch = watched
            await gw.search(query_photos[0], top_k=3)
            await asyncio.gather(*(gw.search(q, top_k=3) for q in query_photos))
            seen[on] = runs
            if on:  # the policy never reaches a thread that was there before the workers
                assert not [t for t in loaded & _thread_ids() if _batch_scheduled(t)]
    in_workers = {policy for name, policy in seen[True] if name.startswith("gateway")}
    in_batcher = {policy for name, policy in seen[True] if not name.startswith("gateway")}
    assert in_workers == {os.SCHED_BATCH}
    assert in_batcher == {os.SCHED_OTHER}
    assert {policy for _, policy in seen[False]} == {os.SCHED_OTHER}


@pytest.fixture
def paged_world(world: World, tmp_path: Path, query_photos: list[bytes]) -> tuple[World, np.ndarray]:
    """The catalogue in a calibrated collection whose thresholds sit between the scores of query 3's
    recipes: rank 1 alone is strong, ranks 5 and beyond are 'none'. Returns the world and the query's
    vector."""
    model = EmbeddingModel(world.models / "tiny-a")
    vectors = model.embed_images([(world.images / f"r{i:03d}.jpg").read_bytes() for i in range(N_RECIPES)])
    query = model.embed_images([query_photos[3]])[0]
    scores = sorted((vectors @ query).tolist(), reverse=True)
    calibration = MatchCalibration(
        model.version,
        none_below=(scores[3] + scores[4]) / 2,
        strong_from=(scores[0] + scores[1]) / 2,
        references=np.zeros((0, model.dimension), np.float32),  # no non-food bank: evidence = score
    )
    store_path = tmp_path / "q"
    with EdgeStore(store_path) as store:
        store.create_collection("paged", dimension=model.dimension, model_version=model.version)
        points = [
            RecipePoint(point_id(f"r{i:03d}", f"r{i:03d}.jpg"), v, recipe_payload(i, model.version))
            for i, v in enumerate(vectors)
        ]
        store.upsert("paged", points, model_version=model.version)
        store.set_extra("paged", {CALIBRATION_KEY: calibration.to_metadata()})
        store.mark_complete("paged")
        store.swap_alias("recipes", "paged")
    return dataclasses.replace(world, store_path=store_path), query


async def test_a_query_has_one_verdict_on_every_page(
    paged_world: tuple[World, np.ndarray], query_photos: list[bytes]
) -> None:
    world, _ = paged_world
    async with _opened(world) as gw:
        photo = query_photos[3]
        first = await gw.search(photo, top_k=7)
        assert first.match == "strong" and first.hits[0].recipe_id == "r003"
        later = await gw.search(photo, top_k=3, offset=4)  # ranks 5..7, each below 'none' on its own
        assert later.match == "strong" and [h.rank for h in later.hits] == [5, 6, 7]
        assert [h.recipe_id for h in later.hits] == [h.recipe_id for h in first.hits[4:7]]
        assert [h.confidence for h in later.hits] == [h.confidence for h in first.hits[4:7]]  # their own
        assert all(h.confidence is not None and h.confidence < 0.2 for h in later.hits)
        c = [h.confidence or 0.0 for h in first.hits]
        kept = await gw.search(photo, top_k=3, offset=4, min_confidence=(c[4] + c[5]) / 2)
        assert kept.match == "strong" and [h.rank for h in kept.hits] == [5]  # weaker hits still dropped
        beyond = await gw.search(photo, top_k=5, offset=N_RECIPES)  # past the last recipe: no hits
        assert beyond.hits == [] and beyond.match == "strong"


async def test_with_a_filter_the_verdict_is_about_the_filtered_recipes(
    paged_world: tuple[World, np.ndarray], query_photos: list[bytes]
) -> None:
    world, query = paged_world
    async with _opened(world) as gw:
        mains = SearchFilter(categories=("main",))  # query 3's own recipe is a dessert
        first = await gw.search(query_photos[3], top_k=2, search_filter=mains)
        assert first.hits and all(h.category == "main" for h in first.hits)
        calibration = gw._calibration(first.collection, first.model_version)
        assert calibration is not None
        expected = match_verdict(calibration, query, [first.hits[0].score]).match
        assert first.match == expected != "strong"
        later = await gw.search(query_photos[3], top_k=2, offset=3, search_filter=mains)
        assert later.match == first.match and [h.rank for h in later.hits] == [4, 5]


async def test_a_deadline_passing_while_the_model_runs_in_the_worker_names_the_stage(
    gateway: SearchGateway, world: World, query_photos: list[bytes]
) -> None:
    assert isinstance(gateway.embedder, InProcessEmbedder)
    batcher = gateway.embedder.resolve(world.version_a).batcher
    model_run, gate = batcher.run_batch, threading.Event()

    def slow(items: list[np.ndarray]) -> list[np.ndarray]:
        gate.wait(5)
        return model_run(items)

    batcher.run_batch = slow
    try:
        with pytest.raises(GatewayError, match="embedding did not finish within the deadline") as info:
            await gateway.search(query_photos[0], timeout_s=0.3)
        assert _kind(info) is ErrorKind.UNAVAILABLE
    finally:
        gate.set()
        batcher.run_batch = model_run
    assert (await gateway.search(query_photos[0], top_k=1)).hits[0].recipe_id == "r000"  # and it goes on
