"""Search latency and throughput through the gateway, side by side with bare decode + onnxruntime.

One run, same photos: (1) one client's p50/p99 over gRPC through the gateway vs ``preprocess`` + the bare
onnxruntime session (target: overhead ≤ 25 %); (2) 16 concurrent clients vs sequential requests (target
≥ 1.8× images/s, from batching); (3) cold start of a fresh gateway process to gRPC health SERVING (≤ 5 s).

(2) also counts the CPU time the whole machine spends per search (clients, gateway and embedder alike) in
both phases. ``cores × sequential latency / CPU per search`` is then the most that concurrency can gain
at that cost per search: batching helps only as far as it makes a search cheaper, and where one search
already keeps every core busy there is no idle capacity for concurrency to use.

    python bench/search.py --model models/lite0-raw-<version> --photos data/demo/images
    python bench/search.py                         # tiny generated model and photos (plumbing check)
    python bench/search.py --embedder              # through the embedder service instead of in-process
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, load_photos, machine_cpu_seconds, percentiles  # noqa: E402


def _index(model_dir: Path, store_path: Path, photos: list[bytes]) -> None:
    from embedder.runtime import EmbeddingModel
    from indexer.store.base import RecipePoint, point_id
    from indexer.store.edge import EdgeStore

    model = EmbeddingModel(model_dir)
    with EdgeStore(store_path) as store:
        store.create_collection("bench", dimension=model.dimension, model_version=model.version)
        vectors = model.embed_images(photos)
        points = [
            RecipePoint(point_id(f"b{i}", "p.jpg"), vectors[i], {"recipe_id": f"b{i}", "title": f"bench {i}"})
            for i in range(len(photos))
        ]
        store.upsert("bench", points, model_version=model.version)
        store.mark_complete("bench")
        store.swap_alias("recipes", "bench")


def _cold_start(env: dict[str, str]) -> float:
    """Seconds from launching ``python -m gateway.server`` to health SERVING."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.server"], env=env, cwd=ROOT, stderr=subprocess.DEVNULL
    )
    try:
        return _wait_serving(f"127.0.0.1:{env['RECIPELENS_GATEWAY_GRPC_PORT']}", start)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_serving(address: str, start: float) -> float:
    """Seconds from ``start`` until the gateway at ``address`` reports health SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.perf_counter() - start < 60:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.perf_counter() - start
            except grpc.RpcError:
                pass
            time.sleep(0.02)
    raise SystemExit(f"gateway at {address} did not become SERVING within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="an exported model folder (default: tiny)")
    parser.add_argument("--photos", type=Path, default=None, help="folder of photos (default: generated)")
    parser.add_argument("--n", type=int, default=64, help="distinct photos")
    parser.add_argument("--repeats", type=int, default=200, help="single-client requests")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="sequential/concurrent rounds (medians)")
    parser.add_argument("--embedder", action="store_true", help="use the embedder service, not in-process")
    args = parser.parse_args()

    from embedder.preprocess import preprocess
    from embedder.runtime import EmbeddingModel
    from gateway.client import RecipeSearchClient

    work = Path(tempfile.mkdtemp(prefix="recipelens-bench-"))
    model_dir = args.model
    if model_dir is None:
        from tests.support.tinymodel import write_tiny_model

        model_dir = work / "models" / "tiny"
        write_tiny_model(model_dir)
    photos = load_photos(args.photos, args.n)
    _index(model_dir, work / "qdrant", photos)
    model = EmbeddingModel(model_dir)
    print(
        f"model {model.version} ({model.manifest.backbone}, {model.dimension}-D) on {model.provider}, "
        f"{len(photos)} photos, {os.cpu_count()} CPUs"
    )

    # (1) bare decode + onnxruntime, one photo at a time
    def bare(data: bytes) -> None:
        model.embed_arrays(preprocess(data, size=model.image_size)[None])

    # The gateway runs in its own process, as deployed (a client in the same process would share its GIL).
    embedder = None
    env = dict(os.environ)
    env.update(
        RECIPELENS_GATEWAY_MODEL_DIR=str(model_dir),
        RECIPELENS_GATEWAY_STORE_PATH=str(work / "qdrant"),
        RECIPELENS_GATEWAY_GRPC_PORT=str(free_port()),
        RECIPELENS_GATEWAY_HTTP_PORT=str(free_port()),
        RECIPELENS_GATEWAY_LOG_LEVEL="WARNING",
    )
    if args.embedder:
        from embedder.server import start_server
        from embedder.settings import EmbedderSettings

        embedder = start_server(EmbedderSettings(model_dir=model_dir, port=0, reload_interval_s=0))
        env["RECIPELENS_GATEWAY_EMBEDDER_ADDRESS"] = embedder.address
    address = f"127.0.0.1:{env['RECIPELENS_GATEWAY_GRPC_PORT']}"
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway.server"], env=env, cwd=ROOT, stderr=subprocess.DEVNULL
    )
    try:
        _wait_serving(address, time.perf_counter())
        with RecipeSearchClient(address, timeout_s=60) as client:
            client.search(photos[0])
            bare(photos[0])
            # Interleaved, so that whatever else the machine does slows both paths alike.
            times, bare_times = [], []
            for i in range(args.repeats):
                photo = photos[i % len(photos)]
                t0 = time.perf_counter()
                bare(photo)
                t1 = time.perf_counter()
                client.search(photo, top_k=5)
                t2 = time.perf_counter()
                bare_times.append((t1 - t0) * 1000)
                times.append((t2 - t1) * 1000)
            bare_p50, bare_p99 = percentiles(bare_times)
            gw_p50, gw_p99 = percentiles(times)

        total = max(args.repeats, 8 * args.clients)
        clients = [RecipeSearchClient(address, timeout_s=60) for _ in range(args.clients)]

        def worker(k: int) -> None:
            for i in range(k, total, args.clients):
                clients[k].search(photos[i % len(photos)], top_k=5)

        # Alternating rounds of sequential and concurrent searches; medians of the rates.
        sequential_rates, concurrent_rates = [], []
        sequential_cpu, concurrent_cpu = [], []  # machine CPU ms per search
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(worker, range(args.clients)))  # warm-up of every channel
            for _ in range(args.rounds):
                c0, t0 = machine_cpu_seconds(), time.perf_counter()
                for i in range(total):
                    clients[0].search(photos[i % len(photos)], top_k=5)
                c1, t1 = machine_cpu_seconds(), time.perf_counter()
                list(pool.map(worker, range(args.clients)))
                c2, t2 = machine_cpu_seconds(), time.perf_counter()
                sequential_rates.append(total / (t1 - t0))
                concurrent_rates.append(total / (t2 - t1))
                sequential_cpu.append((c1 - c0) / total * 1000)
                concurrent_cpu.append((c2 - c1) / total * 1000)
        sequential = statistics.median(sequential_rates)
        concurrent = statistics.median(concurrent_rates)
        cpu_seq = statistics.median(sequential_cpu)
        cpu_conc = statistics.median(concurrent_cpu)
        for c in clients:
            c.close()
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
        if embedder is not None:
            embedder.stop()

    env.pop("RECIPELENS_GATEWAY_EMBEDDER_ADDRESS", None)
    cold = statistics.median(_cold_start(env) for _ in range(3)) if not args.embedder else float("nan")

    print()
    print("| path | p50 ms | p99 ms |")
    print("|---|---:|---:|")
    print(f"| bare decode + onnxruntime | {bare_p50:.2f} | {bare_p99:.2f} |")
    print(
        f"| gateway over gRPC ({'embedder service' if args.embedder else 'in-process'}) "
        f"| {gw_p50:.2f} | {gw_p99:.2f} |"
    )
    print()
    print("| measure | measured | target |")
    print("|---|---:|---:|")
    print(f"| gateway p50 overhead vs bare | {(gw_p50 / bare_p50 - 1) * 100:.0f} % | ≤ 25 % |")
    print(f"| sequential searches/s | {sequential:.1f} | |")
    print(f"| {args.clients} concurrent clients searches/s | {concurrent:.1f} | |")
    print(f"| concurrent / sequential | {concurrent / sequential:.2f}× | ≥ 1.8× |")
    cores = os.cpu_count() or 1
    print(f"| machine CPU per search, sequential / concurrent | {cpu_seq:.1f} / {cpu_conc:.1f} ms | |")
    print(f"| CPU busy while sequential | {cpu_seq * sequential / 10 / cores:.0f} % of {cores} cores | |")
    print(
        f"| ceiling at the concurrent CPU cost: {cores} cores × latency / CPU per search "
        f"| {cores * 1000 / sequential / cpu_conc:.2f}× | |"
    )
    if not args.embedder:
        print(f"| cold start to SERVING (median of 3) | {cold:.2f} s | ≤ 5 s |")


if __name__ == "__main__":
    main()
