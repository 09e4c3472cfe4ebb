"""Search latency and throughput through the gateway, side by side with bare decode + the runtime.

One run, same photos, each model (fp32 and, with ``--int8``, its twin) behind a gateway process of its
own, measured in interleaved rounds:

1. one client's p50/p99 over gRPC through the gateway vs ``preprocess`` + the bare runtime; the
   difference is the gateway's overhead (goal ≤ 3 ms p50), split by the gateway's own ``took_ms`` into
   the gRPC half (of it an empty round trip, health Check, timed after the same pause as a search: a
   server woken from idle answers slower than one called back to back) and the search path's (of it
   the alias lookup and ANN + payload, timed in this process on the same store right after a model run,
   as in a search; what remains is the header check, thread hops and the verdict);
2. 16 concurrent clients vs sequential requests, beside the ceiling that the machine's CPU per search
   implies (goal ≥ 0.9 of it): ``cores × sequential latency / CPU per search`` is the most concurrency
   can gain at that cost per search — batching helps only as far as it makes a search cheaper;
3. int8 / fp32 searches/s under 16 clients (goal ≥ 1.6×), against the faster fp32: on a build with
   OpenVINO, fp32 runs behind two gateways, one on each CPU runtime (OpenVINO EP, named in the gateway's
   providers, and onnxruntime's own CPU provider, where the default order runs fp32 — the ``cpu``
   extra's runtime), since which of them runs fp32 faster depends on the CPU — the goal is judged
   against the faster one, the other printed beside it;
4. cold start of a fresh gateway process to gRPC health SERVING (≤ 5 s).

    python bench/search.py --model models/lite0-raw-<v> --int8 models/lite0-raw-int8-<v> \
        --photos data/demo/images
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, load_photos, machine_cpu_seconds, percentiles, stop_process  # noqa: E402
from bench.grouping import GOAL as GROUPING_GOAL  # noqa: E402
from bench.grouping import POINTS, grouping_cost  # noqa: E402

ALIAS = "recipes"


def _index(model_dir: Path, store_path: Path, photos: list[bytes], search_threads: int) -> None:
    from embedder.runtime import EmbeddingModel
    from indexer.store.base import RecipePoint, point_id
    from indexer.store.edge import EdgeStore

    model = EmbeddingModel(model_dir)
    with EdgeStore(store_path, search_threads=search_threads) as store:
        store.create_collection("bench", dimension=model.dimension, model_version=model.version)
        vectors = model.embed_images(photos)
        points = [
            RecipePoint(point_id(f"b{i}", "p.jpg"), vectors[i], {"recipe_id": f"b{i}", "title": f"bench {i}"})
            for i in range(len(photos))
        ]
        store.upsert("bench", points, model_version=model.version)
        store.mark_complete("bench")
        store.swap_alias(ALIAS, "bench")


def _store_times(model_dir: Path, store_path: Path, photos: list[bytes], repeats: int) -> tuple[float, float]:
    """p50 ms of the alias lookup (alias → collection → its model version, as every search does) and of one
    distinct-recipe search (ANN + payload), in this process, each right after a model run as in a search
    (the run leaves the CPU caches cold for the store: measured here, twice the time of back-to-back
    searches)."""
    from embedder.preprocess import preprocess
    from embedder.runtime import EmbeddingModel
    from indexer.store.edge import EdgeStore

    model = EmbeddingModel(model_dir)
    some = photos[: min(len(photos), 16)]
    arrays = [preprocess(p, size=model.image_size)[None] for p in some]
    vectors = model.embed_images(some)
    alias, search = [], []
    with EdgeStore(store_path) as store:
        for i in range(repeats):
            model.embed_arrays(arrays[i % len(arrays)])
            t0 = time.perf_counter()
            name = store.resolve_alias(ALIAS)
            assert name is not None
            store.collection_info(name)
            t1 = time.perf_counter()
            alias.append((t1 - t0) * 1000)
            model.embed_arrays(arrays[i % len(arrays)])
            t2 = time.perf_counter()
            store.search_recipes(name, vectors[i % len(vectors)], limit=5, model_version=model.version)
            search.append((time.perf_counter() - t2) * 1000)
    return statistics.median(alias), statistics.median(search)


def _cold_start(env: dict[str, str]) -> float:
    """Seconds from launching ``python -m gateway.server`` to health SERVING."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.server"], env=env, cwd=ROOT, stderr=subprocess.DEVNULL
    )
    try:
        return _wait_serving(f"127.0.0.1:{env['RECIPELENS_GATEWAY_GRPC_PORT']}", start)
    finally:
        stop_process(proc, "the gateway (cold start)")


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


@dataclass
class Setup:
    """One model behind its own gateway process, and what was measured on it."""

    numerics: str  # the column's name: "fp32", "int8", or "fp32 on CPU EP" beside fp32 on OpenVINO
    model_dir: Path
    store: Path
    env: dict[str, str]
    providers: list[str] | None = None  # None: the build's default order
    address: str = ""
    process: subprocess.Popen[bytes] | None = None
    bare: Callable[[bytes], object] | None = None
    runs_on: str = ""
    times: list[float] = field(default_factory=list)
    took: list[float] = field(default_factory=list)  # the gateway's own took_ms of the same searches
    bare_times: list[float] = field(default_factory=list)
    rtt: list[float] = field(default_factory=list)  # health Check right after a search (a busy server)
    rtt_after_pause: list[float] = field(default_factory=list)  # … right after a bare run, as a search
    sequential: list[float] = field(default_factory=list)
    concurrent: list[float] = field(default_factory=list)
    cpu_seq: list[float] = field(default_factory=list)
    cpu_conc: list[float] = field(default_factory=list)
    client_cpu_seq: list[float] = field(default_factory=list)
    client_cpu_conc: list[float] = field(default_factory=list)
    store_ms: tuple[float, float] = (0.0, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="an exported model folder (default: tiny)")
    parser.add_argument("--int8", type=Path, default=None, help="its int8 twin, measured beside it")
    parser.add_argument("--photos", type=Path, default=None, help="folder of photos (default: generated)")
    parser.add_argument("--n", type=int, default=64, help="distinct photos")
    parser.add_argument("--repeats", type=int, default=200, help="single-client requests")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="sequential/concurrent rounds (medians)")
    parser.add_argument("--embedder", action="store_true", help="use the embedder service, not in-process")
    parser.add_argument(
        "--search-threads",
        type=int,
        default=1,
        help="Qdrant Edge threads per search in the bench collections (the store setting; 0: Edge's pool)",
    )
    parser.add_argument("--grouping-points", type=int, default=POINTS, help="synthetic points (grouping row)")
    args = parser.parse_args()

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

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
    from embedder.providers import CPU, OPENVINO
    from embedder.runtime import cpu_runtimes

    # fp32 on each CPU runtime the build offers where int8 is measured: which is faster depends on the CPU.
    folders: list[tuple[str, Path, list[str] | None]] = [("fp32", model_dir, None)]
    if args.int8 and len(cpu_runtimes()) > 1:
        folders = [("fp32 on OpenVINO EP", model_dir, [OPENVINO, CPU]), ("fp32 on CPU EP", model_dir, None)]
    if args.int8:
        folders.append(("int8", args.int8, None))
    setups: list[Setup] = []
    for n, (numerics, folder, providers) in enumerate(folders):
        store = work / f"qdrant-{n}"
        _index(folder, store, photos, args.search_threads)
        setup = Setup(numerics, folder, store, dict(os.environ), providers)
        setup.store_ms = _store_times(folder, store, photos, args.repeats)
        model = EmbeddingModel(folder, **({"providers": providers} if providers else {}))
        setup.runs_on = model.runs_on
        if providers:
            setup.env["RECIPELENS_GATEWAY_PROVIDERS"] = ",".join(providers)

        def bare(data: bytes, model: Any = model) -> None:
            model.embed_arrays(preprocess(data, size=model.image_size)[None])

        setup.bare = bare
        setup.env.update(
            RECIPELENS_GATEWAY_MODEL_DIR=str(folder),
            RECIPELENS_GATEWAY_STORE_PATH=str(store),
            RECIPELENS_GATEWAY_GRPC_PORT=str(free_port()),
            RECIPELENS_GATEWAY_HTTP_PORT=str(free_port()),
            RECIPELENS_GATEWAY_LOG_LEVEL="WARNING",
        )
        setups.append(setup)
    from embedder.cpus import int8_instructions

    print(
        f"{len(photos)} photos, {os.cpu_count()} CPUs ({int8_instructions().describe()}), Qdrant Edge "
        f"search threads {args.search_threads}; "
        + "; ".join(f"{s.numerics}: {EmbeddingModel(s.model_dir).version} {s.runs_on}" for s in setups)
    )

    embedders = []
    if args.embedder:
        from embedder.server import start_server
        from embedder.settings import EmbedderSettings

        for s in setups:
            extra = {"providers": s.providers} if s.providers else {}
            running = start_server(
                EmbedderSettings(model_dir=s.model_dir, port=0, reload_interval_s=0, **extra)
            )
            embedders.append(running)
            s.env["RECIPELENS_GATEWAY_EMBEDDER_ADDRESS"] = running.address
    # Each gateway runs in its own process, as deployed (a client in the same process would share its GIL).
    for s in setups:
        s.address = f"127.0.0.1:{s.env['RECIPELENS_GATEWAY_GRPC_PORT']}"
        s.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.server"], env=s.env, cwd=ROOT, stderr=subprocess.DEVNULL
        )
    total = max(args.repeats, 8 * args.clients)
    try:
        for s in setups:
            _wait_serving(s.address, time.perf_counter())
        singles = {s.numerics: RecipeSearchClient(s.address, timeout_s=60) for s in setups}
        channels = {s.numerics: grpc.insecure_channel(s.address) for s in setups}
        health = {k: health_pb2_grpc.HealthStub(c) for k, c in channels.items()}
        check = health_pb2.HealthCheckRequest(service="")
        for s in setups:
            singles[s.numerics].search(photos[0])
            assert s.bare is not None
            s.bare(photos[0])
            health[s.numerics].Check(check)
        # (1) Interleaved, so that whatever else the machine does slows every path alike.
        for i in range(args.repeats):
            photo = photos[i % len(photos)]
            for s in setups:
                assert s.bare is not None
                t0 = time.perf_counter()
                s.bare(photo)
                t1 = time.perf_counter()
                answer = singles[s.numerics].search(photo, top_k=5)
                t2 = time.perf_counter()
                health[s.numerics].Check(check)
                t3 = time.perf_counter()
                s.bare(photo)  # the same pause before the next call as the search had
                t4 = time.perf_counter()
                health[s.numerics].Check(check)
                s.rtt_after_pause.append((time.perf_counter() - t4) * 1000)
                s.bare_times.append((t1 - t0) * 1000)
                s.times.append((t2 - t1) * 1000)
                s.took.append(answer.took_ms)
                s.rtt.append((t3 - t2) * 1000)

        # (2) Alternating rounds of sequential and concurrent searches, for each model in turn.
        clients = {
            s.numerics: [RecipeSearchClient(s.address, timeout_s=60) for _ in range(args.clients)]
            for s in setups
        }

        def worker(numerics: str, k: int) -> None:
            for i in range(k, total, args.clients):
                clients[numerics][k].search(photos[i % len(photos)], top_k=5)

        with ThreadPoolExecutor(args.clients) as pool:
            for s in setups:  # warm-up of every channel
                list(pool.map(lambda k, n=s.numerics: worker(n, k), range(args.clients)))
            for _ in range(args.rounds):
                for s in setups:
                    c0, t0, p0 = machine_cpu_seconds(), time.perf_counter(), time.process_time()
                    for i in range(total):
                        clients[s.numerics][0].search(photos[i % len(photos)], top_k=5)
                    c1, t1, p1 = machine_cpu_seconds(), time.perf_counter(), time.process_time()
                    list(pool.map(lambda k, n=s.numerics: worker(n, k), range(args.clients)))
                    c2, t2, p2 = machine_cpu_seconds(), time.perf_counter(), time.process_time()
                    s.client_cpu_seq.append((p1 - p0) / total * 1000)
                    s.client_cpu_conc.append((p2 - p1) / total * 1000)
                    s.sequential.append(total / (t1 - t0))
                    s.concurrent.append(total / (t2 - t1))
                    s.cpu_seq.append((c1 - c0) / total * 1000)
                    s.cpu_conc.append((c2 - c1) / total * 1000)
        for group in clients.values():
            for c in group:
                c.close()
        for c in singles.values():
            c.close()
        for ch in channels.values():
            ch.close()
    finally:
        for s in setups:
            if s.process is not None:
                stop_process(s.process, f"the {s.numerics} gateway")
        for running in embedders:
            running.stop()

    cold = float("nan")
    if not args.embedder:
        setups[0].env["RECIPELENS_GATEWAY_GRPC_PORT"] = str(free_port())
        cold = statistics.median(_cold_start(setups[0].env) for _ in range(3))

    # bench/grouping.py: distinct recipes + verdict vs a plain search, on a synthetic collection
    grouping = grouping_cost(args.grouping_points, repeats=args.repeats)
    cores = os.cpu_count() or 1
    med = statistics.median
    where = "embedder service" if args.embedder else "in-process"
    print()
    print("| path | p50 ms | p99 ms |")
    print("|---|---:|---:|")
    for s in setups:
        for label, times in (
            (f"bare decode + runtime, {s.numerics}", s.bare_times),
            (f"gateway over gRPC ({where}), {s.numerics}", s.times),
        ):
            p50, p99 = percentiles(times)
            print(f"| {label} | {p50:.2f} | {p99:.2f} |")
    print()
    print("| measure | " + " | ".join(s.numerics for s in setups) + " | ceiling | goal |")
    print("|---|" + "---:|" * len(setups) + "---:|---:|")

    def row(label: str, values: list[str], ceiling: str = "", goal: str = "") -> None:
        print(f"| {label} | " + " | ".join(values) + f" | {ceiling} | {goal} |")

    overheads = [med(s.times) - med(s.bare_times) for s in setups]
    row("gateway p50 overhead vs bare", [f"{o:.2f} ms" for o in overheads], "0 ms", "≤ 3 ms")
    # The two halves add up to the overhead: the gateway's own took_ms splits each request in two.
    wire = [med(s.times) - med(s.took) for s in setups]
    inside = [med(s.took) - med(s.bare_times) for s in setups]
    alias = [s.store_ms[0] for s in setups]
    ann = [s.store_ms[1] for s in setups]
    rtt = [med(s.rtt_after_pause) for s in setups]
    for label, values, digits in (  # each half, then its parts (which add up to it)
        ("… gRPC half: client's time − the gateway's took_ms (p50s)", wire, 2),
        ("… empty gRPC round trip, after the same pause as a search (health Check p50; gRPC half)", rtt, 2),
        (
            "(not in the sum: the same call back to back, right after a search)",
            [med(s.rtt) for s in setups],
            2,
        ),
        (
            "… servicer, protobuf of photo and hits (the gRPC half's rest)",
            [w - r for w, r in zip(wire, rtt, strict=True)],
            2,
        ),
        ("… search path: the gateway's took_ms − bare (p50s)", inside, 2),
        ("… alias lookup + collection info (p50 in-process, after a model run; search path)", alias, 3),
        ("… ANN + payload, distinct recipes (p50 in-process, after a model run; search path)", ann, 2),
        (
            "… rest: thread hops (loop ↔ worker ↔ batcher), header check, verdict (the search path's rest)",
            [i - a - n for i, a, n in zip(inside, alias, ann, strict=True)],
            2,
        ),
    ):
        row(label, [f"{v:.{digits}f} ms" for v in values])
    name, extra = grouping.cells()
    row(name, [extra if x is setups[0] else "" for x in setups], "", GROUPING_GOAL)
    row("sequential searches/s", [f"{med(s.sequential):.1f}" for s in setups])
    row(f"{args.clients} concurrent clients searches/s", [f"{med(s.concurrent):.1f}" for s in setups])
    for s in setups:
        gain = med(s.concurrent) / med(s.sequential)
        ceiling = cores * 1000 / med(s.sequential) / med(s.cpu_conc)
        row(
            f"concurrent / sequential, {s.numerics} (of the CPU ceiling)",
            [f"{gain:.2f}× ({gain / ceiling:.2f})" if x is s else "" for x in setups],
            f"{ceiling:.2f}× = {cores} cores × latency / CPU per search",
            "≥ 0.9 of the ceiling",
        )
    row(
        "machine CPU per search, sequential / concurrent",
        [f"{med(s.cpu_seq):.1f} / {med(s.cpu_conc):.1f} ms" for s in setups],
    )
    row(
        "… of which this bench's gRPC clients (its own process), sequential / concurrent",
        [f"{med(s.client_cpu_seq):.1f} / {med(s.client_cpu_conc):.1f} ms" for s in setups],
    )
    row(
        "CPU busy while sequential",
        [f"{med(s.cpu_seq) * med(s.sequential) / 10 / cores:.0f} % of {cores} cores" for s in setups],
    )
    if args.int8:
        int8, fp32s = setups[-1], setups[:-1]
        faster = max(fp32s, key=lambda s: med(s.concurrent))
        for fp32 in fp32s:
            ratio = med(int8.concurrent) / med(fp32.concurrent)
            ceiling = med(fp32.cpu_conc) / med(int8.cpu_conc)
            judged = fp32 is faster
            label = "the faster fp32" if len(fp32s) > 1 and judged else fp32.numerics
            print(
                f"| int8 / {label} searches/s, {args.clients} clients ({fp32.runs_on}) | "
                + " | ".join(f"{ratio:.2f}×" if x is int8 else "" for x in setups)
                + f" | {ceiling:.2f}× (fp32 / int8 CPU per search) | {'≥ 1.6×' if judged else ''} |"
            )
    if not args.embedder:
        cold_row = [f"{cold:.2f} s" if x is setups[0] else "" for x in setups]
        row("cold start to SERVING (median of 3)", cold_row, "", "≤ 5 s")


if __name__ == "__main__":
    main()
