"""The embedder served for real on 127.0.0.1 with the tiny ONNX model: answers, batching, refusals."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image
from recipelens.v1 import embedder_pb2, embedder_pb2_grpc

from embedder.client import EmbedderClient, EmbedderError
from embedder.runtime import EmbeddingModel
from embedder.server import RunningServer, ServerStartError, start_server
from protos.services import EMBEDDER_SERVICE as SERVICE_NAME
from tests.embedder.conftest import NEW, NEWEST, corrupt, make_model, settings_for
from tests.support.imagegen import encode, synthetic_photo

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 8 << 20)]) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> embedder_pb2_grpc.EmbedderStub:
    return embedder_pb2_grpc.EmbedderStub(channel)


@pytest.fixture(scope="module")
def reference(two_models: tuple[Path, str, str]) -> dict[str, EmbeddingModel]:
    """The same model folders loaded in-process, to compare the served vectors with."""
    root, old, new = two_models
    return {old: EmbeddingModel(root / "m-seed0"), new: EmbeddingModel(root / "m-seed1")}


def as_array(response: embedder_pb2.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


def rpc_error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value


def test_embed_returns_the_in_process_unit_vectors(
    stub: embedder_pb2_grpc.EmbedderStub,
    photo_bytes: list[bytes],
    two_models: tuple[Path, str, str],
    reference: dict[str, EmbeddingModel],
) -> None:
    _, old, new = two_models
    images = photo_bytes[:6]
    response = stub.Embed(embedder_pb2.EmbedRequest(images=images, request_id="r-1"), timeout=10)
    assert response.request_id == "r-1"
    assert response.model_version == new  # the default is the newest created_at
    assert response.dimension == 64
    vectors = as_array(response)
    assert vectors.shape == (6, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, reference[new].embed_images(images), atol=1e-5)

    pinned = stub.Embed(embedder_pb2.EmbedRequest(images=images, model_version=old), timeout=10)
    assert pinned.model_version == old
    np.testing.assert_allclose(as_array(pinned), reference[old].embed_images(images), atol=1e-5)
    assert not np.allclose(as_array(pinned), vectors, atol=1e-3)  # two models, two different answers


def test_concurrent_callers_share_onnxruntime_runs(
    two_models: tuple[Path, str, str],
    photo_bytes: list[bytes],
    reference: dict[str, EmbeddingModel],
) -> None:
    root, _, new = two_models
    callers = 8  # = max_batch_size: the batch runs as soon as all are queued, or after 500 ms
    settings = settings_for(root, max_batch_size=callers, max_queue_delay_ms=500)
    with start_server(settings) as running, EmbedderClient(running.address) as client:
        barrier = threading.Barrier(callers)
        results: dict[int, np.ndarray] = {}
        errors: list[BaseException] = []

        def call(i: int) -> None:
            try:
                barrier.wait()
                results[i] = client.embed([photo_bytes[10 + i]]).vectors[0]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not errors
        stats = running.servicer.batch_stats(new)
    expected = reference[new].embed_images(photo_bytes[10 : 10 + callers])
    for i in range(callers):
        np.testing.assert_allclose(results[i], expected[i], atol=1e-5)  # each caller got its own vector
    assert stats.items == callers
    assert stats.batches < callers  # some calls shared a run
    assert stats.largest_batch > 1


def test_embed_stream_answers_in_order(
    stub: embedder_pb2_grpc.EmbedderStub,
    photo_bytes: list[bytes],
    two_models: tuple[Path, str, str],
    reference: dict[str, EmbeddingModel],
) -> None:
    _, _, new = two_models
    sizes = [3, 1, 2, 4, 1, 2]
    starts = np.cumsum([0, *sizes[:-1]])
    requests = [
        embedder_pb2.EmbedRequest(images=photo_bytes[s : s + n], request_id=f"req-{i}")
        for i, (s, n) in enumerate(zip(starts, sizes, strict=True))
    ]
    responses = list(stub.EmbedStream(iter(requests), timeout=20))
    assert [r.request_id for r in responses] == [f"req-{i}" for i in range(len(sizes))]
    expected = reference[new].embed_images(photo_bytes[: sum(sizes)])
    got = np.concatenate([as_array(r) for r in responses])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_client_stream_keeps_batches_whole_and_ordered(
    client: EmbedderClient,
    photo_bytes: list[bytes],
    two_models: tuple[Path, str, str],
    reference: dict[str, EmbeddingModel],
) -> None:
    _, old, _ = two_models
    batches = [photo_bytes[0:3], photo_bytes[3:20], photo_bytes[20:21], photo_bytes[21:30]]  # 17 > 8: split
    results = list(client.embed_stream(iter(batches), model_version=old, max_in_flight=2))
    assert [r.vectors.shape for r in results] == [(3, 64), (17, 64), (1, 64), (9, 64)]
    assert {r.model_version for r in results} == {old}
    got = np.concatenate([r.vectors for r in results])
    np.testing.assert_allclose(got, reference[old].embed_images(photo_bytes), atol=1e-5)


def test_client_splits_large_lists(
    client: EmbedderClient, photo_bytes: list[bytes], reference: dict[str, EmbeddingModel]
) -> None:
    result = client.embed(photo_bytes[:20])  # the server takes 8 per request
    assert result.vectors.shape == (20, 64)
    np.testing.assert_allclose(
        result.vectors, reference[result.model_version].embed_images(photo_bytes[:20]), atol=1e-5
    )


def test_model_info_lists_models_default_and_provider(
    client: EmbedderClient, two_models: tuple[Path, str, str]
) -> None:
    _, old, new = two_models
    info = client.model_info()
    assert [m.version for m in info.models] == [new, old]  # newest first
    assert info.default_version == new
    assert {m.provider for m in info.models} == {"CPUExecutionProvider"}
    assert list(info.providers) == ["CPUExecutionProvider"]
    assert {(m.dimension, m.image_size, m.backbone) for m in info.models} == {(64, 224, "tiny-colour-layout")}
    only = client.model_info(old)
    assert [m.version for m in only.models] == [old]


def test_the_default_model_setting_decides_what_a_request_without_version_gets(
    two_models: tuple[Path, str, str], photo_bytes: list[bytes]
) -> None:
    root, old, _ = two_models
    settings = settings_for(root, default_model=old)
    with start_server(settings) as running, EmbedderClient(running.address) as client:
        assert client.model_info().default_version == old
        assert client.embed(photo_bytes[:1]).model_version == old


def _png_too_many_pixels() -> bytes:
    return encode(Image.new("1", (1100, 1000)), "PNG")  # 1.1 MP > the server's 1 MP limit


def _truncated_jpeg() -> bytes:
    data = encode(synthetic_photo(99), "JPEG", quality=90)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"this is a text file, not a photo", "not an image"),
        (b"", "empty"),
        (_truncated_jpeg(), "JPEG"),
        (_png_too_many_pixels(), "too large"),
    ],
    ids=["text", "empty", "truncated-jpeg", "too-many-pixels"],
)
def test_bad_image_is_named_by_index_and_the_server_keeps_serving(
    stub: embedder_pb2_grpc.EmbedderStub, photo_bytes: list[bytes], bad: bytes, reason: str
) -> None:
    images = [photo_bytes[0], photo_bytes[1], bad, photo_bytes[3]]
    error = rpc_error(lambda: stub.Embed(embedder_pb2.EmbedRequest(images=images), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image 2:" in error.details()
    assert reason in error.details()
    ok = stub.Embed(embedder_pb2.EmbedRequest(images=photo_bytes[:2]), timeout=10)
    assert len(ok.embeddings) == 2


def test_empty_and_oversized_requests_are_refused(
    stub: embedder_pb2_grpc.EmbedderStub, photo_bytes: list[bytes]
) -> None:
    error = rpc_error(lambda: stub.Embed(embedder_pb2.EmbedRequest(), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no images" in error.details()

    error = rpc_error(lambda: stub.Embed(embedder_pb2.EmbedRequest(images=photo_bytes[:9]), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "9 images" in error.details() and "limit of 8" in error.details()

    blob = os.urandom(1_200_000)  # the server's message limit is 1 MiB
    error = rpc_error(lambda: stub.Embed(embedder_pb2.EmbedRequest(images=[blob]), timeout=10))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unknown_model_version_is_not_found(
    stub: embedder_pb2_grpc.EmbedderStub, photo_bytes: list[bytes], two_models: tuple[Path, str, str]
) -> None:
    _, old, new = two_models
    request = embedder_pb2.EmbedRequest(images=photo_bytes[:1], model_version="feedfacefeedface")
    error = rpc_error(lambda: stub.Embed(request, timeout=10))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "feedfacefeedface" in error.details()
    assert old in error.details() and new in error.details()
    info_error = rpc_error(
        lambda: stub.ModelInfo(embedder_pb2.ModelInfoRequest(model_version="nope"), timeout=10)
    )
    assert info_error.code() == grpc.StatusCode.NOT_FOUND


def test_stream_error_names_the_request(
    stub: embedder_pb2_grpc.EmbedderStub, photo_bytes: list[bytes]
) -> None:
    requests = [
        embedder_pb2.EmbedRequest(images=photo_bytes[:2], request_id="a"),
        embedder_pb2.EmbedRequest(images=[photo_bytes[0], b"junk"], request_id="b"),
    ]
    call = stub.EmbedStream(iter(requests), timeout=10)
    first = next(call)
    assert first.request_id == "a"
    error = rpc_error(lambda: next(call))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "stream request 1" in error.details() and "'b'" in error.details() and "image 1:" in error.details()
    )


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "recipelens.v1.Embedder" in services
    assert "grpc.health.v1.Health" in services


def test_health_is_not_serving_until_models_are_loaded(
    two_models: tuple[Path, str, str], photo_bytes: list[bytes]
) -> None:
    root, _, _ = two_models
    with (
        start_server(settings_for(root), load_models=False) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        assert health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
        stub = embedder_pb2_grpc.EmbedderStub(channel)
        error = rpc_error(lambda: stub.Embed(embedder_pb2.EmbedRequest(images=photo_bytes[:1]), timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        running.load_models()
        assert health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        assert len(stub.Embed(embedder_pb2.EmbedRequest(images=photo_bytes[:1]), timeout=5).embeddings) == 1


def test_hot_added_model_is_served_and_removed_one_dropped(
    tmp_path: Path, two_models: tuple[Path, str, str], photo_bytes: list[bytes]
) -> None:
    root, old, new = two_models
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    shutil.copytree(root / "m-seed0", model_dir / "m-seed0")
    with (
        start_server(settings_for(model_dir, reload_interval_s=0.1)) as running,
        EmbedderClient(running.address) as client,
    ):
        assert client.model_info().default_version == old
        staged = tmp_path / "staging" / "m-seed2"
        added = make_model(staged, seed=2, created_at=NEWEST)
        staged.rename(model_dir / "m-seed2")  # appears whole, next to the model in use

        deadline = time.monotonic() + 10
        while client.model_info().default_version != added and time.monotonic() < deadline:
            time.sleep(0.05)
        info = client.model_info()
        assert info.default_version == added
        assert {m.version for m in info.models} == {old, added}
        result = client.embed(photo_bytes[:3])
        assert result.model_version == added
        np.testing.assert_allclose(
            result.vectors, EmbeddingModel(model_dir / "m-seed2").embed_images(photo_bytes[:3]), atol=1e-5
        )
        assert client.embed(photo_bytes[:3], model_version=old).model_version == old  # old one still served

        shutil.rmtree(model_dir / "m-seed0")
        report = running.refresh()  # explicit refresh; the poller may have done it already
        assert report.removed in ([old], [])
        assert [m.version for m in client.model_info().models] == [added]
        with pytest.raises(EmbedderError) as info_error:
            client.embed(photo_bytes[:1], model_version=old)
        assert info_error.value.code == grpc.StatusCode.NOT_FOUND
        assert new not in {m.version for m in client.model_info().models}


def test_corrupt_model_folder_is_refused_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    make_model(folder, seed=3, created_at=NEWEST)
    corrupt(folder)
    with pytest.raises(ServerStartError) as info:
        start_server(settings_for(folder))
    message = str(info.value)
    assert str(folder) in message and "does not match" in message
    assert re.search(r"hash [0-9a-f]{16}.*sha256 [0-9a-f]{16}", message)  # both hashes named

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ServerStartError, match="no model folders"):
        start_server(settings_for(empty))
    with pytest.raises(ServerStartError, match="does not exist"):
        start_server(settings_for(tmp_path / "missing"))


def test_corrupt_folder_beside_a_good_one_is_skipped(tmp_path: Path, photo_bytes: list[bytes]) -> None:
    good = make_model(tmp_path / "good", seed=0, created_at=NEW)
    make_model(tmp_path / "bad", seed=4, created_at=NEWEST)
    corrupt(tmp_path / "bad")
    with start_server(settings_for(tmp_path)) as running, EmbedderClient(running.address) as client:
        info = client.model_info()
        assert [m.version for m in info.models] == [good]
        assert running.server.repository is not None
        assert tmp_path / "bad" in running.server.repository.refused


def _start_process(args: list[str], env_extra: dict[str, str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env_extra}
    return subprocess.Popen(
        [sys.executable, "-m", "embedder", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_cli_refuses_a_corrupt_model_folder(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    make_model(folder, seed=5, created_at=NEWEST)
    corrupt(folder)
    proc = _start_process(["--model-dir", str(folder), "--port", "0"], {})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert "embedder not started" in out and str(folder) in out and "does not match" in out


def test_cli_serves_and_stops_on_sigterm(two_models: tuple[Path, str, str], photo_bytes: list[bytes]) -> None:
    root, _, new = two_models
    proc = _start_process(
        ["--port", "0"],
        {"RECIPELENS_EMBEDDER_MODEL_DIR": str(root), "RECIPELENS_EMBEDDER_PROVIDERS": "CPUExecutionProvider"},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                port = int(match.group(1))
        assert port is not None, "".join(lines)
        with EmbedderClient(f"127.0.0.1:{port}") as client:
            client.wait_ready(30)
            assert client.embed(photo_bytes[:2]).model_version == new
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(lines) + rest
    assert proc.returncode == 0, log
    assert "execution provider in use: CPUExecutionProvider" in log
    assert f"serving model {new}" in log
    assert "stop signal received" in log and "stopped" in log


def test_serving_modules_do_not_import_tensorflow() -> None:
    code = (
        "import sys, embedder.server, embedder.client\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == "[]", out.stdout
