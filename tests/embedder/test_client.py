"""The client against a real server: waiting, retrying on UNAVAILABLE, giving up within its deadline."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from embedder.client import EmbedderClient, EmbedderError
from embedder.server import RunningServer, start_server
from tests.embedder.conftest import free_port, settings_for


@contextlib.contextmanager
def server_started_later(model_dir: Path, delay_s: float) -> Iterator[str]:
    """Yield an address at once; a server starts listening there after ``delay_s``."""
    port = free_port()
    started: list[RunningServer] = []

    def run() -> None:
        time.sleep(delay_s)
        started.append(start_server(settings_for(model_dir, port=port)))

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        thread.join()
        for running in started:
            running.stop()


def test_wait_ready_waits_for_a_server_started_later(
    two_models: tuple[Path, str, str], photo_bytes: list[bytes]
) -> None:
    root, _, new = two_models
    with server_started_later(root, 0.8) as address, EmbedderClient(address) as client:
        with pytest.raises(TimeoutError, match=f"{address} is not SERVING"):
            client.wait_ready(0.3)
        began = time.monotonic()
        client.wait_ready(15)
        assert time.monotonic() - began < 10
        assert client.embed(photo_bytes[:1]).model_version == new


def test_unary_calls_retry_while_the_server_is_unavailable(
    two_models: tuple[Path, str, str], photo_bytes: list[bytes]
) -> None:
    root, _, new = two_models
    with (
        server_started_later(root, 0.4) as address,
        EmbedderClient(address, timeout_s=10, retries=6, backoff_s=0.1) as client,
    ):
        result = client.embed(photo_bytes[:2])  # the first attempts fail: nothing listens yet
        assert result.model_version == new and result.vectors.shape == (2, 64)


def test_stopped_server_gives_unavailable_within_the_deadline(
    two_models: tuple[Path, str, str], photo_bytes: list[bytes]
) -> None:
    root, _, _ = two_models
    running = start_server(settings_for(root))
    with EmbedderClient(running.address, timeout_s=3, retries=3, backoff_s=0.1) as client:
        client.embed(photo_bytes[:1])
        running.stop()
        started = time.monotonic()
        with pytest.raises(EmbedderError) as info:
            client.embed(photo_bytes[:1])
        assert time.monotonic() - started < 3 + 1
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert running.address in str(info.value)
        assert "attempts" in info.value.details  # it did retry


def test_non_transient_errors_are_not_retried(client: EmbedderClient) -> None:
    started = time.monotonic()
    with pytest.raises(EmbedderError) as info:
        client.embed([b"not an image"])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "attempts" not in info.value.details
    assert time.monotonic() - started < 2
    with pytest.raises(ValueError, match="at least one image"):
        client.embed([])


def test_error_in_a_later_chunk_says_where(client: EmbedderClient, photo_bytes: list[bytes]) -> None:
    images = [*photo_bytes[:10], b"junk", photo_bytes[11]]  # chunk 2 holds images 8..11
    with pytest.raises(EmbedderError) as info:
        client.embed(images)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "images 8..11" in info.value.details and "image 2:" in info.value.details


def test_health_status_name(client: EmbedderClient) -> None:
    assert client.health() == "SERVING"


def test_stream_stopped_early_or_failing_source_leaves_the_server_healthy(
    client: EmbedderClient, photo_bytes: list[bytes]
) -> None:
    batches = (photo_bytes[i : i + 2] for i in range(0, 30, 2))
    stream = client.embed_stream(batches, max_in_flight=3)
    first = next(stream)
    assert first.vectors.shape == (2, 64)
    stream.close()  # the caller stops early: the call is cancelled

    def failing() -> Iterator[list[bytes]]:
        yield photo_bytes[:2]
        raise OSError("catalogue file vanished")

    with pytest.raises(OSError, match="catalogue file vanished"):
        list(client.embed_stream(failing()))
    with pytest.raises(ValueError, match="batch 1 holds no images"):
        list(client.embed_stream([photo_bytes[:1], []]))
    assert [r.vectors.shape for r in client.embed_stream([photo_bytes[:1]] * 3)] == [(1, 64)] * 3
    assert client.health() == "SERVING"
