"""The memory figure: resident memory of a gateway and an embedder process under bursts of max-size uploads.

Each service runs as its own process (``python -m gateway.server`` in-process mode, which decodes photos
itself; ``python -m embedder``) with the default limits: 10 MiB uploads, 40 MP, a 384 MiB decoding budget.
For the gateway, each kind of :mod:`tests.reliability.bigimages` is sent 32 times at once (16 over gRPC,
16 over HTTP); for the embedder, one ``Embed`` of 64 of them and an ``EmbedStream`` of 64 more run at the
same time. Each service is warmed up first with ordinary photos at the largest batch (onnxruntime keeps
its arena at the size of the largest batch it ran); growth is against ``VmRSS`` after that. The peak is
the kernel's high-water mark (``VmHWM``, reset through ``/proc/<pid>/clear_refs`` before each burst), so
no short spike is missed between samples. 10 s after the last burst the resident memory is read again.

``python -m tests.reliability.memory`` prints the table of the README; ``test_memory.py`` asserts the bounds.
"""

from __future__ import annotations

import math
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from embedder.memory import DEFAULT_BUDGET_BYTES
from embedder.preprocess import IMAGE_SIZE, decode_cost, open_image
from tests.reliability.bigimages import HEIGHT, KINDS, WIDTH, big_upload
from tests.reliability.stack import Service, World, free_port, make_world, query_photos, wait_serving
from tests.support.load import rss_kib, run_load, status_kib

PEAK_LIMIT_MB = 600
SETTLED_LIMIT_MB = 100
SETTLE_S = 10.0
CONCURRENCY = 32
MB = 1_000_000


def hwm_kib(pid: int) -> int:
    """The peak resident memory since the last reset (``VmHWM``), in KiB."""
    return status_kib(pid, "VmHWM")


def reset_hwm(pid: int) -> None:
    """Start a new high-water mark at the current resident size (``echo 5 > /proc/<pid>/clear_refs``)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _settled_mb(service: Service, baseline_kib: int) -> float:
    """Resident growth over ``baseline_kib`` after :data:`SETTLE_S` seconds without load, in MB."""
    time.sleep(SETTLE_S)
    return (rss_kib(service.pid) - baseline_kib) * 1024 / MB


def _stop_without_traceback(service: Service, what: str) -> None:
    service.stop()
    log = service.log()
    if "Traceback" in log:
        raise AssertionError(f"{what} logged a traceback:\n{log[-3000:]}")


def _cost(data: bytes) -> int:
    img, full_size = open_image(data, IMAGE_SIZE, 10**12)
    return decode_cost(img, full_size)


def largest_upload(kind: str, budget: int = DEFAULT_BUDGET_BYTES) -> bytes:
    """``kind`` at 40 MP, or (WebP, whose decoder holds 16 bytes a pixel) as large as the budget accepts."""
    width, height = WIDTH, HEIGHT
    data = big_upload(kind, width, height)
    while (cost := _cost(data)) > budget:
        scale = math.sqrt((budget - 48 * 2**20) / cost)
        width, height = int(width * scale), int(height * scale)
        data = big_upload(kind, width, height)
    return data


def max_size_uploads() -> dict[str, bytes]:
    """One upload of every kind at the largest size the default limits accept."""
    return {kind: largest_upload(kind) for kind in KINDS}


@dataclass
class Burst:
    """One burst: what the callers got and how far the service's memory rose."""

    load: str
    outcomes: Counter[str] = field(default_factory=Counter)
    peak_mb: float = 0.0
    seconds: float = 0.0


@dataclass
class Figure:
    """A service's bursts, its baseline and what stayed resident ``SETTLE_S`` after the last one."""

    service: str
    baseline_mb: float
    bursts: list[Burst] = field(default_factory=list)
    settled_mb: float = 0.0
    log: str = ""

    @property
    def peak_mb(self) -> float:
        return max(b.peak_mb for b in self.bursts)

    def table(self) -> str:
        lines = [
            f"{self.service}: baseline {self.baseline_mb:.0f} MB RSS",
            f"  {'load':<34} {'answers':<30} {'peak growth':>11} {'s':>6}",
        ]
        for b in self.bursts:
            answers = ", ".join(f"{n} {k}" for k, n in sorted(b.outcomes.items()))
            lines.append(f"  {b.load:<34} {answers:<30} {b.peak_mb:>8.0f} MB {b.seconds:>6.1f}")
        lines.append(f"  {SETTLE_S:.0f} s after the last burst: {self.settled_mb:+.0f} MB")
        return "\n".join(lines)


def _growth_mb(pid: int, baseline_kib: int) -> float:
    return (hwm_kib(pid) - baseline_kib) * 1024 / MB


def _service(name: str, module: str, env: dict[str, str], log_dir: Path) -> Service:
    return Service(name, module, env, log_dir / f"{name}.log")


def _started(service: Service, address: str, health_name: str) -> Service:
    service.start()
    wait_serving(address, health_name, timeout_s=60, proc=service)
    return service


def per_kind_bursts(uploads: dict[str, bytes]) -> dict[str, list[bytes]]:
    """One burst of ``CONCURRENCY`` uploads for each kind (the README figure)."""
    return {f"{CONCURRENCY} x {kind}": [data] * CONCURRENCY for kind, data in uploads.items()}


def mixed_burst(uploads: dict[str, bytes]) -> dict[str, list[bytes]]:
    """One burst of ``CONCURRENCY`` uploads, the kinds in turn (the test: same budget, 1/8 of the work)."""
    return {f"{CONCURRENCY} mixed": _mixed(uploads, CONCURRENCY)}


def gateway_figure(world: World, bursts: dict[str, list[bytes]], log_dir: Path) -> Figure:
    """Each burst's uploads sent at once to an in-process gateway, half over gRPC and half over HTTP."""
    grpc_port, http_port = free_port(), free_port()
    env = {
        "RECIPELENS_GATEWAY_GRPC_HOST": "127.0.0.1",
        "RECIPELENS_GATEWAY_GRPC_PORT": str(grpc_port),
        "RECIPELENS_GATEWAY_HTTP_HOST": "127.0.0.1",
        "RECIPELENS_GATEWAY_HTTP_PORT": str(http_port),
        "RECIPELENS_GATEWAY_MODEL_DIR": str(world.model_dir),
        "RECIPELENS_GATEWAY_STORE_PATH": str(world.store_path),
        # Everyone waits for the budget, so every upload is answered: the bound holds at full service.
        "RECIPELENS_GATEWAY_EMBED_TIMEOUT_S": "120",
        "RECIPELENS_GATEWAY_DECODE_WAIT_S": "120",
        "RECIPELENS_GATEWAY_GRACE_PERIOD_S": "0",
    }
    address, url = f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}"
    service = _started(
        _service("gateway", "gateway.server", env, log_dir), address, "recipelens.v1.RecipeSearch"
    )
    try:
        warm = query_photos(CONCURRENCY)  # concurrent, so batches of the largest size form once
        for protocol, target in (("grpc", address), ("http", url)):
            run_load(target, warm, protocol=protocol, total=2 * CONCURRENCY, concurrency=CONCURRENCY)
        time.sleep(1.0)
        baseline = rss_kib(service.pid)
        figure = Figure("gateway (in-process embedder)", baseline * 1024 / MB)
        for label, images in bursts.items():
            burst = Burst(label)
            half = len(images) // 2
            reset_hwm(service.pid)
            start = time.perf_counter()
            with ThreadPoolExecutor(2) as pool:
                reports = list(
                    pool.map(
                        lambda job: run_load(
                            job[1],
                            job[2],
                            protocol=job[0],
                            total=len(job[2]),
                            concurrency=len(job[2]),
                            timeout_s=300,
                        ),
                        [("grpc", address, images[:half]), ("http", url, images[half:])],
                    )
                )
            burst.seconds = time.perf_counter() - start
            burst.peak_mb = _growth_mb(service.pid, baseline)
            burst.outcomes = Counter(o.status for report in reports for o in report.outcomes)
            figure.bursts.append(burst)
        figure.settled_mb = _settled_mb(service, baseline)
        return figure
    finally:
        _stop_without_traceback(service, "gateway")


def _mixed(uploads: dict[str, bytes], n: int) -> list[bytes]:
    kinds = list(uploads.values())
    return [kinds[i % len(kinds)] for i in range(n)]


def embedder_figure(
    world: World,
    uploads: dict[str, bytes],
    log_dir: Path,
    *,
    embed_images: int = 64,
    stream_requests: int = 16,
) -> Figure:
    """An ``Embed`` of ``embed_images`` max-size images and an ``EmbedStream`` of requests of 4, at once."""
    from recipelens.v1 import embedder_pb2, embedder_pb2_grpc

    port = free_port()
    env = {
        "RECIPELENS_EMBEDDER_HOST": "127.0.0.1",
        "RECIPELENS_EMBEDDER_PORT": str(port),
        "RECIPELENS_EMBEDDER_MODEL_DIR": str(world.model_dir),
        "RECIPELENS_EMBEDDER_PROVIDERS": "CPUExecutionProvider",
        "RECIPELENS_EMBEDDER_RELOAD_INTERVAL_S": "0",
        "RECIPELENS_EMBEDDER_DECODE_THREADS": "8",  # more decoders than the budget lets run at once
        "RECIPELENS_EMBEDDER_DECODE_WAIT_S": "300",
        "RECIPELENS_EMBEDDER_GRACE_PERIOD_S": "0",
    }
    address = f"127.0.0.1:{port}"
    service = _started(_service("embedder", "embedder", env, log_dir), address, "recipelens.v1.Embedder")
    images = _mixed(uploads, max(embed_images, 4 * stream_requests))
    try:
        with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
            stub = embedder_pb2_grpc.EmbedderStub(channel)
            # Warm-up at the largest batch: onnxruntime's arena then has its steady size before the baseline.
            stub.Embed(embedder_pb2.EmbedRequest(images=query_photos(32)), timeout=60)
            time.sleep(1.0)
            baseline = rss_kib(service.pid)
            figure = Figure("embedder", baseline * 1024 / MB)
            burst = Burst(f"Embed {embed_images} + EmbedStream {stream_requests}x4, mixed")
            outcomes: Counter[str] = Counter()

            def embed() -> None:
                try:
                    request = embedder_pb2.EmbedRequest(images=images[:embed_images])
                    answer = stub.Embed(request, timeout=600)
                    outcomes["OK"] += len(answer.embeddings)
                except grpc.RpcError as exc:
                    outcomes[f"Embed {exc.code().name}: {exc.details()[:80]}"] += 1

            def requests() -> Iterator[embedder_pb2.EmbedRequest]:
                for i in range(stream_requests):
                    yield embedder_pb2.EmbedRequest(images=images[i * 4 : i * 4 + 4], request_id=str(i))

            def stream() -> None:
                try:
                    for answer in stub.EmbedStream(requests(), timeout=600):
                        outcomes["OK"] += len(answer.embeddings)
                except grpc.RpcError as exc:
                    outcomes[f"EmbedStream {exc.code().name}: {exc.details()[:80]}"] += 1

            reset_hwm(service.pid)
            start = time.perf_counter()
            threads = [threading.Thread(target=embed), threading.Thread(target=stream)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            burst.seconds = time.perf_counter() - start
            burst.peak_mb = _growth_mb(service.pid, baseline)
            burst.outcomes = outcomes
            figure.bursts.append(burst)
            figure.settled_mb = _settled_mb(service, baseline)
            return figure
    finally:
        _stop_without_traceback(service, "embedder")


def main() -> None:
    """Print both figures (run under ``flock /tmp/recipelens-bench.lock`` on a shared machine)."""
    with tempfile.TemporaryDirectory(prefix="recipelens-memory-") as tmp:
        root = Path(tmp)
        world = make_world(root / "world")
        uploads = max_size_uploads()
        for kind, data in uploads.items():
            print(f"{kind}: {len(data)} bytes", file=sys.stderr)
        for figure in (
            gateway_figure(world, per_kind_bursts(uploads), root),
            embedder_figure(world, uploads, root),
        ):
            print(figure.table(), flush=True)
        print(f"bounds: peak growth <= {PEAK_LIMIT_MB} MB, {SETTLE_S:.0f} s later <= {SETTLED_LIMIT_MB} MB")


if __name__ == "__main__":
    main()
