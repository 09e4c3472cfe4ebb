"""Embedding throughput and latency, fp32 and its int8 twin side by side in one run on the same photos.

Rows, measured in interleaved rounds (so whatever else the machine does slows every path alike):

* each runtime × numerics on **decoded tensors** (onnxruntime's CPU provider and, where the installed
  build has it, OpenVINO's; fp32 and int8) — the model alone;
* **decoding alone** (``preprocess``), and the bare runtime from encoded photos (decode + run);
* the **embedder service** over gRPC on loopback, one process per model, as deployed;
* optionally Keras ``predict`` (the seed's way, an information row).

Ratios (batch-N images/s, medians), each beside the ceiling that bounds it, measured in the same run:
int8 on OpenVINO / fp32 on decoded tensors (goal ≥ 2.5×); int8 service / fp32 service (goal ≥ 1.8×,
bounded by decode + fp32 run over decode + int8 run); service / bare runtime (goal ≥ 0.95×, ceiling 1).
On a build with OpenVINO fp32 runs on both CPU runtimes (the service too: a second fp32 process), the
default order's — onnxruntime's CPU provider, the ``cpu`` extra's runtime — and OpenVINO, named, since
which is faster depends on the CPU, and int8 is judged against the faster fp32; the other ratio is
printed beside it.

    python bench/embed.py --model models/lite0-raw-<v> --int8 models/lite0-raw-int8-<v> \
        --photos data/demo/images
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import free_port, load_photos, model_parser, percentiles, stop_process

CPU = "CPUExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
SHORT = {CPU: "onnxruntime CPU", OPENVINO: "OpenVINO EP"}


def _service(model: Path, batch: int, providers: str = "") -> tuple[subprocess.Popen[bytes], int]:
    """An embedder process serving one model folder (on ``providers``, else the build's default order);
    returns it and its port."""
    port = free_port()
    env = dict(
        os.environ,
        RECIPELENS_EMBEDDER_MODEL_DIR=str(model),
        RECIPELENS_EMBEDDER_PORT=str(port),
        RECIPELENS_EMBEDDER_MAX_BATCH_SIZE=str(batch),
        RECIPELENS_EMBEDDER_RELOAD_INTERVAL_S="0",
        RECIPELENS_EMBEDDER_LOG_LEVEL="WARNING",
        **({"RECIPELENS_EMBEDDER_PROVIDERS": providers} if providers else {}),
    )
    return subprocess.Popen([sys.executable, "-m", "embedder"], env=env, stderr=subprocess.DEVNULL), port


def main() -> None:
    parser = model_parser(__doc__, model_help="an exported (fp32) model folder", required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--latency-repeats", type=int, default=40)
    parser.add_argument("--throughput-repeats", type=int, default=7)
    parser.add_argument("--skip-keras", action="store_true")
    args = parser.parse_args()

    import onnxruntime as ort

    from embedder.client import EmbedderClient
    from embedder.preprocess import preprocess
    from embedder.runtime import EmbeddingModel, select_providers

    photos = load_photos(args.photos, args.batch)
    one = [photos[0]]
    decoded = {len(batch): np.stack([preprocess(b) for b in batch]) for batch in (one, photos)}
    providers = [p for p in (CPU, OPENVINO) if p in ort.get_available_providers()]
    folders = {"fp32": args.model, **({"int8": args.int8} if args.int8 else {})}
    default = {numerics: EmbeddingModel(folder) for numerics, folder in folders.items()}
    for numerics, model in default.items():
        print(
            f"{numerics}: model {model.version} ({model.manifest.backbone}, {model.dimension}-D) "
            f"on {model.provider}"
        )
    print(f"onnxruntime {ort.__version__}, providers {providers}, {os.cpu_count()} CPUs")

    paths: dict[str, Callable[[list[bytes]], object]] = {}
    if not args.skip_keras:
        from training.models import load_keras_for_manifest

        keras_model = load_keras_for_manifest(args.model)

        def keras_run(batch: list[bytes]) -> np.ndarray:
            arr = np.stack([preprocess(b) for b in batch]).astype(np.float32)
            return np.asarray(keras_model.predict(arr, batch_size=len(batch), verbose=0))

        paths["Keras predict, fp32 (seed)"] = keras_run
        paths["Keras predict, fp32, decoded tensors"] = lambda batch: keras_model.predict(
            decoded[len(batch)].astype(np.float32), batch_size=len(batch), verbose=0
        )
    for numerics, folder in folders.items():
        for provider in providers:
            model = EmbeddingModel(folder, providers=[provider])

            def run_decoded(batch: list[bytes], model: EmbeddingModel = model) -> np.ndarray:
                return model.embed_arrays(decoded[len(batch)])

            paths[f"{SHORT[provider]}, {numerics}, decoded tensors"] = run_decoded
    paths["decoding alone (preprocess)"] = lambda batch: [preprocess(b) for b in batch]
    for numerics, model in default.items():
        paths[f"bare runtime, {numerics} (decode + run)"] = model.embed_images
    # fp32 on the other CPU runtime beside the default order's (onnxruntime's CPU provider for fp32; OpenVINO
    # where named), service and bare alike: which of them runs fp32 faster depends on the CPU
    fp32_default = default["fp32"].provider
    other = OPENVINO if fp32_default == CPU else CPU
    both = bool(args.int8) and OPENVINO in providers and fp32_default in (CPU, OPENVINO)
    on_other = f"fp32 on {SHORT[other]}"
    if both:
        paths[f"bare runtime, {on_other} (decode + run)"] = EmbeddingModel(
            args.model, providers=select_providers([other])
        ).embed_images

    # Each service runs in its own process, as deployed (a client in the same process would share its GIL).
    services = {numerics: _service(folder, args.batch) for numerics, folder in folders.items()}
    if both:
        services[on_other] = _service(args.model, args.batch, ",".join(select_providers([other])))
    clients = {
        numerics: EmbedderClient(f"127.0.0.1:{port}", timeout_s=120)
        for numerics, (_, port) in services.items()
    }
    try:
        for numerics, client in clients.items():
            client.wait_ready(120)
            paths[f"embedder service, {numerics} (gRPC)"] = client.embed
        latency: dict[str, list[float]] = {name: [] for name in paths}
        rates: dict[str, list[float]] = {name: [] for name in paths}
        cpu_rates: dict[str, list[float]] = {name: [] for name in paths}  # per CPU second of this process
        for run in paths.values():  # warm-up
            run(one)
            run(photos)
        for _ in range(args.latency_repeats):
            for name, run in paths.items():
                t0 = time.perf_counter()
                run(one)
                latency[name].append((time.perf_counter() - t0) * 1000)
        for _ in range(args.throughput_repeats):
            for name, run in paths.items():
                t0, c0 = time.perf_counter(), time.process_time()
                run(photos)
                rates[name].append(len(photos) / (time.perf_counter() - t0))
                cpu_rates[name].append(len(photos) / max(time.process_time() - c0, 1e-9))
    finally:
        for client in clients.values():
            client.close()
        for name, (proc, _) in services.items():
            stop_process(proc, f"the embedder ({name})")
    rows = {
        name: (*percentiles(latency[name]), statistics.median(rates[name]), max(rates[name]))
        for name in paths
    }

    print()
    print(
        f"| path | batch-1 p50 ms | batch-1 p99 ms | batch-{args.batch} img/s | "
        f"batch-{args.batch} img/s, fastest round |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, (p50, p99, rate, best) in rows.items():
        print(f"| {name} | {p50:.1f} | {p99:.1f} | {rate:.1f} | {best:.1f} |")
    rate = {name: row[2] for name, row in rows.items()}

    def ratio_row(label: str, value: float, ceiling: str, goal: str) -> None:
        print(f"| {label} | {value:.2f}× | {ceiling} | {goal} |")

    print()
    print(f"| ratio (batch-{args.batch} img/s, medians) | measured | ceiling | goal |")
    print("|---|---:|---:|---:|")
    fp32_cpu = rate[f"{SHORT[CPU]}, fp32, decoded tensors"]
    decode_rate = rate["decoding alone (preprocess)"]
    if args.int8:
        from embedder.cpus import SATURATING, int8_instructions

        isa = int8_instructions()
        # Multiply-adds per instruction, int8 against fp32's FMA: 4× with a dot-product instruction (VNNI,
        # AMX's tiles do more); without one, vpmaddubsw + vpmaddwd do 2× — and saturate.
        multiple = "2×" if isa.kind == SATURATING else "4×"
        ceiling = f"{multiple} ({isa.name}: int8 vs fp32 MACs per instruction)"
        print(f"| int8 instructions of this CPU | {isa.describe()} | | |")
        fp32_rates = {p: rate[f"{SHORT[p]}, fp32, decoded tensors"] for p in providers}
        fastest = max(fp32_rates, key=lambda p: fp32_rates[p])
        for provider in providers:
            int8 = rate[f"{SHORT[provider]}, int8, decoded tensors"]
            for label, fp32_provider, bound in (
                (f"int8 on {SHORT[provider]} / fp32 on onnxruntime CPU, decoded", CPU, ceiling),
                (f"int8 / fp32, both on {SHORT[provider]}, decoded", provider, multiple),
            ):
                judged = provider == OPENVINO and fastest == fp32_provider  # the goal: the faster fp32
                goal = "≥ 2.5× (against the faster fp32)" if judged else ""
                ratio_row(label, int8 / fp32_rates[fp32_provider], bound, goal)
        if OPENVINO in providers:  # CPU time is what other processes' load distorts least
            cpu_rate = {name: statistics.median(values) for name, values in cpu_rates.items()}
            ratio_row(
                f"same, per CPU second: int8 on {SHORT[OPENVINO]} / fp32 on onnxruntime CPU, decoded",
                cpu_rate[f"{SHORT[OPENVINO]}, int8, decoded tensors"]
                / cpu_rate[f"{SHORT[CPU]}, fp32, decoded tensors"],
                multiple,
                "",
            )
        int8_model = rate[f"{SHORT[default['int8'].provider]}, int8, decoded tensors"]
        fp32_model = rate[f"{SHORT[default['fp32'].provider]}, fp32, decoded tensors"]
        # Decoding costs both the same: the service ratio is bounded by (decode + fp32) / (decode + int8).
        # Each fp32 service by its row label: (its images/s, its model's images/s on decoded tensors).
        fp32_services = {
            f"fp32 on {SHORT[fp32_default]}" if both else "fp32": (
                rate["embedder service, fp32 (gRPC)"],
                fp32_model,
            )
        }
        if both:
            fp32_services[on_other] = (
                rate[f"embedder service, {on_other} (gRPC)"],
                rate[f"{SHORT[other]}, fp32, decoded tensors"],
            )
        faster = max(fp32_services, key=lambda label: fp32_services[label][0])
        goal = "≥ 1.8× (against the faster fp32)" if both else "≥ 1.8×"
        for label, (fp32_service, model_rate) in fp32_services.items():
            bound = (1 / decode_rate + 1 / model_rate) / (1 / decode_rate + 1 / int8_model)
            ratio_row(
                f"embedder service int8 / {label} (decode included)",
                rate["embedder service, int8 (gRPC)"] / fp32_service,
                f"{bound:.2f}× (decode + fp32 run / decode + int8 run)",
                goal if label == faster else "",
            )
        share = (1 / decode_rate) / (1 / decode_rate + 1 / int8_model)
        print(f"| decoding's share of a photo's work in the int8 service | {share * 100:.0f} % | | |")
        print(f"| decoding per photo, one thread | {1000 / decode_rate:.2f} ms | | |")
    for numerics in services:
        ratio_row(
            f"service / bare runtime, {numerics}",
            rate[f"embedder service, {numerics} (gRPC)"] / rate[f"bare runtime, {numerics} (decode + run)"],
            "1×",
            "≥ 0.95×",
        )
    if not args.skip_keras:
        keras_ceiling = fp32_cpu / rate["Keras predict, fp32, decoded tensors"]
        ratio_row(
            "information: fp32 service / Keras predict",
            rate["embedder service, fp32 (gRPC)"] / rate["Keras predict, fp32 (seed)"],
            f"{keras_ceiling:.2f}× (onnxruntime / Keras on decoded tensors)",
            "",
        )


if __name__ == "__main__":
    main()
