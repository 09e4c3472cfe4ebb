"""The whole stack as separate processes on loopback: a real embedder and a real gateway, each its own pid.

Separate processes let the suite kill one part (SIGKILL), restart it on the same port, and read each
service's resident memory on its own. Services log to files under ``log_dir`` so tests can read what they
said (and check what they must never say).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from embedder.runtime import EmbeddingModel
from indexer.store.edge import EdgeStore
from tests.support.imagegen import distorted, encode, synthetic_photo
from tests.support.tinymodel import write_tiny_model

REPO = Path(__file__).resolve().parents[2]
N_RECIPES = 24
COLLECTION = "recipes-base"


@dataclass(frozen=True)
class World:
    """A tiny model, the catalogue photos and an Edge store whose alias points at a complete collection."""

    model_dir: Path
    version: str
    images: Path
    store_path: Path


def make_world(root: Path, *, n: int = N_RECIPES) -> World:
    """Write the model, the photos and the store (one complete collection behind alias ``recipes``)."""
    from tests.gateway.conftest import fill_collection

    root.mkdir(parents=True, exist_ok=True)
    model_dir = root / "models" / "tiny"
    version = write_tiny_model(model_dir)
    images = root / "images"
    images.mkdir(exist_ok=True)
    for i in range(n):
        (images / f"r{i:03d}.jpg").write_bytes(encode(synthetic_photo(1000 + i), "JPEG", quality=90))
    store_path = root / "qdrant"
    with EdgeStore(store_path) as store:
        fill_collection(store, COLLECTION, EmbeddingModel(model_dir), images)
        store.swap_alias("recipes", COLLECTION)
    return World(model_dir, version, images, store_path)


def query_photos(n: int = N_RECIPES) -> list[bytes]:
    """Cropped, recompressed copies of catalogue photos (photo ``i`` should find recipe ``r{i:03d}``)."""
    return [distorted(synthetic_photo(1000 + i), seed=i) for i in range(n)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """One service process (``python -m <module>``) with its settings in the environment and a log file."""

    def __init__(self, name: str, module: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.module = module
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=REPO,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye, like a crash or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout_s``); the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_serving(address: str, service: str, timeout_s: float = 30.0, proc: Service | None = None) -> None:
    """Poll ``grpc.health.v1`` at ``address`` until ``service`` is SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited during start:\n{proc.log()[-3000:]}")
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            time.sleep(0.1)
    tail = proc.log()[-3000:] if proc is not None else ""
    raise TimeoutError(f"{address} not SERVING after {timeout_s:.0f}s (last: {last})\n{tail}")


class Stack:
    """Embedder process + gateway process (remote-embedder mode) over one Edge store, all on loopback."""

    EMBEDDER_SERVICE = "recipelens.v1.Embedder"
    GATEWAY_SERVICE = "recipelens.v1.RecipeSearch"

    def __init__(
        self,
        world: World,
        log_dir: Path,
        *,
        store_path: Path | None = None,
        gateway_env: dict[str, str] | None = None,
        embedder_env: dict[str, str] | None = None,
    ) -> None:
        self.world = world
        self.embedder_port = free_port()
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.embedder = Service(
            "embedder",
            "embedder",
            {
                "RECIPELENS_EMBEDDER_HOST": "127.0.0.1",
                "RECIPELENS_EMBEDDER_PORT": str(self.embedder_port),
                "RECIPELENS_EMBEDDER_MODEL_DIR": str(world.model_dir),
                "RECIPELENS_EMBEDDER_PROVIDERS": "CPUExecutionProvider",
                "RECIPELENS_EMBEDDER_RELOAD_INTERVAL_S": "0",
                "RECIPELENS_EMBEDDER_DECODE_THREADS": "2",
                "RECIPELENS_EMBEDDER_INTRA_OP_THREADS": "1",
                "RECIPELENS_EMBEDDER_GRACE_PERIOD_S": "0",
                "RECIPELENS_EMBEDDER_MAX_PIXELS": "40000000",
                **(embedder_env or {}),
            },
            log_dir / "embedder.log",
        )
        self.gateway = Service(
            "gateway",
            "gateway.server",
            {
                "RECIPELENS_GATEWAY_GRPC_HOST": "127.0.0.1",
                "RECIPELENS_GATEWAY_GRPC_PORT": str(self.grpc_port),
                "RECIPELENS_GATEWAY_HTTP_HOST": "127.0.0.1",
                "RECIPELENS_GATEWAY_HTTP_PORT": str(self.http_port),
                "RECIPELENS_GATEWAY_EMBEDDER_ADDRESS": self.embedder_address,
                "RECIPELENS_GATEWAY_STORE_PATH": str(store_path or world.store_path),
                "RECIPELENS_GATEWAY_EMBED_TIMEOUT_S": "2.0",
                "RECIPELENS_GATEWAY_GRACE_PERIOD_S": "0",
                **(gateway_env or {}),
            },
            log_dir / "gateway.log",
        )

    @property
    def embedder_address(self) -> str:
        return f"127.0.0.1:{self.embedder_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start_embedder(self) -> None:
        self.embedder.start()
        wait_serving(self.embedder_address, self.EMBEDDER_SERVICE, proc=self.embedder)

    def start(self) -> Stack:
        self.start_embedder()
        self.gateway.start()
        wait_serving(self.grpc_address, self.GATEWAY_SERVICE, proc=self.gateway)
        return self

    def stop(self) -> None:
        self.gateway.stop()
        self.embedder.stop()

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
