from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedder.client import EmbedderClient
from embedder.manifest import MODEL_FILE, read_manifest, write_manifest
from embedder.server import RunningServer, start_server
from embedder.settings import EmbedderSettings
from tests.support.tinymodel import write_tiny_model

OLD = "2024-01-01T00:00:00+00:00"
NEW = "2024-06-01T00:00:00+00:00"
NEWEST = "2025-01-01T00:00:00+00:00"


def make_model(folder: Path, *, seed: int, created_at: str) -> str:
    """A tiny model folder with a chosen ``created_at`` (which decides the default version)."""
    write_tiny_model(folder, seed=seed)
    fields = read_manifest(folder).model_dump(exclude={"version", "sha256", "format_version"})
    fields["created_at"] = created_at
    return write_manifest(folder, **fields).version


def corrupt(folder: Path) -> None:
    """Change the ONNX file after its manifest was written (the hash no longer matches)."""
    onnx = folder / MODEL_FILE
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF
    onnx.write_bytes(bytes(data))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_for(model_dir: Path, **overrides: object) -> EmbedderSettings:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "model_dir": model_dir,
        "providers": ["CPUExecutionProvider"],
        "reload_interval_s": 0,
        "grace_period_s": 1.0,
        "decode_threads": 2,
    }
    base.update(overrides)
    return EmbedderSettings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A folder of two model folders: (root, old version from seed 0, new version from seed 1)."""
    root = tmp_path_factory.mktemp("repo")
    old = make_model(root / "m-seed0", seed=0, created_at=OLD)
    new = make_model(root / "m-seed1", seed=1, created_at=NEW)
    assert old != new
    return root, old, new


@pytest.fixture(scope="session")
def server(two_models: tuple[Path, str, str]) -> Iterator[RunningServer]:
    """One embedder for the read-only tests: small limits so that every refusal is cheap to provoke."""
    root, _, _ = two_models
    settings = settings_for(
        root,
        max_batch_size=8,
        max_queue_delay_ms=2,
        max_images_per_request=8,
        max_message_bytes=1 << 20,
        max_pixels=1_000_000,
    )
    with start_server(settings) as running:
        yield running


@pytest.fixture(scope="session")
def client(server: RunningServer) -> Iterator[EmbedderClient]:
    with EmbedderClient(server.address, max_images_per_request=8) as c:
        c.wait_ready(10)
        yield c
