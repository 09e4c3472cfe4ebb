"""Embedder metrics: the module on its own, then through a real gRPC server with its /metrics port."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from embedder.client import EmbedderClient
from embedder.metrics import EmbedderMetrics
from embedder.server import ServerStartError, start_server
from tests.embedder.conftest import free_port, settings_for
from tests.support.imagegen import encode, synthetic_photo


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counts_calls_batches_and_errors_by_label() -> None:
    m = EmbedderMetrics()
    m.observe_call("Embed", "v1", 3, 0.02)
    m.observe_call("EmbedStream", "v1", 1, 0.01)
    m.observe_error("Embed", "INVALID_ARGUMENT", 0.001)
    m.observe_batch("v1", [0.0, 0.004, 0.002], 0.03)
    got = samples(m.exposition().decode())
    assert got[("recipelens_embedder_requests_total", (("method", "Embed"), ("model_version", "v1")))] == 1
    assert got[("recipelens_embedder_images_total", (("method", "Embed"), ("model_version", "v1")))] == 3
    assert got[("recipelens_embedder_errors_total", (("code", "INVALID_ARGUMENT"), ("method", "Embed")))] == 1
    assert got[("recipelens_embedder_request_seconds_count", (("method", "Embed"),))] == 2
    assert got[("recipelens_embedder_batch_size_sum", (("model_version", "v1"),))] == 3
    assert got[("recipelens_embedder_batch_size_bucket", (("le", "2.0"), ("model_version", "v1")))] == 0
    assert got[("recipelens_embedder_batch_size_bucket", (("le", "4.0"), ("model_version", "v1")))] == 1
    assert got[("recipelens_embedder_queue_wait_seconds_count", (("model_version", "v1"),))] == 3
    inference = got[("recipelens_embedder_inference_seconds_sum", (("model_version", "v1"),))]
    assert inference == pytest.approx(0.03)


def test_served_over_http_with_models_and_their_numerics(two_models: tuple[Path, str, str]) -> None:
    root, old, new = two_models
    with start_server(settings_for(root, metrics_port=0)) as running:
        endpoint = running.server.metrics_endpoint
        assert endpoint is not None and endpoint.port > 0
        with EmbedderClient(running.address) as client:
            client.embed([encode(synthetic_photo(1)), encode(synthetic_photo(2))])
            with pytest.raises(Exception, match=r"image 0"):
                client.embed([b"not an image"])
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=10) as reply:
            assert reply.status == 200
            got = samples(reply.read().decode())
    default = new  # the newest created_at is the default
    loaded = {labels for (name, labels), value in got.items() if name == "recipelens_embedder_model_loaded"}
    assert {dict(labels)["model_version"] for labels in loaded} == {old, new}
    assert {dict(labels)["numerics"] for labels in loaded} == {"fp32"}
    assert {dict(labels)["provider"] for labels in loaded} == {"CPUExecutionProvider"}
    assert got[("recipelens_embedder_images_total", (("method", "Embed"), ("model_version", default)))] == 2
    assert got[("recipelens_embedder_errors_total", (("code", "INVALID_ARGUMENT"), ("method", "Embed")))] == 1
    assert got[("recipelens_embedder_batch_size_sum", (("model_version", default),))] == 2
    assert got[("recipelens_embedder_in_flight_requests", ())] == 0


def test_metrics_port_taken_is_a_start_error(two_models: tuple[Path, str, str]) -> None:
    import socket

    root, _, _ = two_models
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(ServerStartError, match=f"metrics on 127.0.0.1:{port}"):
            start_server(settings_for(root, metrics_port=port))
