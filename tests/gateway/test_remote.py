"""The gateway with the embedder service: alias swaps during a stream of searches, embedder down and back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from embedder.server import RunningServer, start_server
from embedder.settings import EmbedderSettings
from gateway.client import RecipeSearchClient
from gateway.server import RunningGateway, start_gateway
from indexer.store.edge import EdgeStore
from tests.gateway.conftest import World, gateway_settings


def _embedder(world: World, port: int = 0) -> RunningServer:
    return start_server(
        EmbedderSettings(model_dir=world.models, port=port, reload_interval_s=0, grace_period_s=0)
    )


@pytest.fixture(scope="module")
def embedder(world: World) -> Iterator[RunningServer]:
    server = _embedder(world)
    yield server
    server.stop(grace=0)


@pytest.fixture(scope="module")
def remote_gateway(world: World, embedder: RunningServer) -> Iterator[RunningGateway]:
    running = start_gateway(
        gateway_settings(world, embedder_address=embedder.address, embed_timeout_s=2.0), health_period_s=0.2
    )
    yield running
    running.stop()


@pytest.mark.parametrize("which", ["in-process", "remote"])
def test_alias_swap_during_searches(
    which: str,
    world: World,
    gateway: RunningGateway,
    remote_gateway: RunningGateway,
    query_photos: list[bytes],
) -> None:
    """Swap the alias back and forth while 4 clients search: every answer is whole and consistent."""
    running = gateway if which == "in-process" else remote_gateway
    expected_version = {world.collection_a: world.version_a, world.collection_b: world.version_b}
    answers: list[tuple[str, str, str, int]] = []
    failures: list[str] = []
    stop = threading.Event()

    def search_loop(worker: int) -> None:
        with RecipeSearchClient(running.grpc_address, timeout_s=10) as client:
            n = 0
            while not stop.is_set():
                i = (worker + n) % len(query_photos)
                n += 1
                try:
                    r = client.search(query_photos[i], top_k=3)
                    answers.append((r.collection, r.model_version, r.hits[0].recipe.id, i))
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")

    indexer_view = EdgeStore(world.store_path)  # another handle on the same folder, like the indexer's
    threads = [threading.Thread(target=search_loop, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    swaps = 0
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            indexer_view.swap_alias("recipes", world.collection_b if swaps % 2 == 0 else world.collection_a)
            swaps += 1
            time.sleep(0.03)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        indexer_view.swap_alias("recipes", world.collection_a)
        indexer_view.close()
    assert failures == []
    assert len(answers) >= 20 and swaps >= 20
    mismatched = [a for a in answers if expected_version[a[0]] != a[1] or a[2] != f"r{a[3]:03d}"]
    assert mismatched == []
    assert {a[0] for a in answers} == {world.collection_a, world.collection_b}  # both were live at times


def test_embedder_down_then_back(
    world: World, remote_gateway: RunningGateway, query_photos: list[bytes]
) -> None:
    global_embedder = _embedder(world)
    port = global_embedder.port
    with (
        start_gateway(
            gateway_settings(world, embedder_address=global_embedder.address, embed_timeout_s=1.5),
            health_period_s=0.2,
        ) as running,
        RecipeSearchClient(running.grpc_address, timeout_s=5) as client,
    ):
        assert client.search(query_photos[0]).hits[0].recipe.id == "r000"
        global_embedder.stop(grace=0)
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            client.search(query_photos[0], timeout_s=3.0)
        elapsed = time.monotonic() - start
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
        assert elapsed < 3.0
        assert "embedder" in (info.value.details() or "")
        deadline = time.monotonic() + 5
        while client.health() == "SERVING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.health() == "NOT_SERVING"
        restarted = _embedder(world, port)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    assert client.search(query_photos[1]).hits[0].recipe.id == "r001"
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    assert time.monotonic() < deadline, "the gateway did not recover"
                    time.sleep(0.2)
        finally:
            restarted.stop(grace=0)
