"""Embedding throughput and latency, side by side in one run on the same photos.

Keras ``predict`` of the model (the seed's way) vs a bare onnxruntime session on its ONNX export vs the
embedder service over gRPC on loopback, each from encoded photos. Prints batch-1 latency p50/p99 and
batch-32 images/s (median and fastest round), and the ratios the targets are stated in (service ≥ 2.5×
Keras predict, ≥ 0.9× bare onnxruntime at batch 32). Two more rows run Keras and onnxruntime on the
already-decoded tensors: their ratio is the ceiling of service / Keras predict, since decoding costs both
sides the same.

    python bench/embed.py --model models/lite0-raw-<version> --photos data/demo/images
"""

from __future__ import annotations

import argparse
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

from bench.common import free_port, load_photos, percentiles


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="an exported model folder")
    parser.add_argument("--photos", type=Path, default=None, help="folder of photos (default: generated)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--latency-repeats", type=int, default=40)
    parser.add_argument("--throughput-repeats", type=int, default=7)
    parser.add_argument("--skip-keras", action="store_true")
    args = parser.parse_args()

    from embedder.client import EmbedderClient
    from embedder.preprocess import preprocess
    from embedder.runtime import EmbeddingModel

    photos = load_photos(args.photos, args.batch)
    one = [photos[0]]
    decoded = {len(batch): np.stack([preprocess(b) for b in batch]) for batch in (one, photos)}
    model = EmbeddingModel(args.model)
    print(f"model {model.version} ({model.manifest.backbone}, {model.dimension}-D) on {model.provider}")

    paths: dict[str, Callable[[list[bytes]], object]] = {}
    if not args.skip_keras:
        from training.models import load_keras_for_manifest

        keras_model = load_keras_for_manifest(args.model)

        def keras_run(batch: list[bytes]) -> np.ndarray:
            arr = np.stack([preprocess(b) for b in batch]).astype(np.float32)
            return np.asarray(keras_model.predict(arr, batch_size=len(batch), verbose=0))

        paths["Keras predict (seed)"] = keras_run
        paths["Keras predict, decoded tensors"] = lambda batch: keras_model.predict(
            decoded[len(batch)].astype(np.float32), batch_size=len(batch), verbose=0
        )
    paths["bare onnxruntime"] = model.embed_images
    paths["onnxruntime, decoded tensors"] = lambda batch: model.embed_arrays(decoded[len(batch)])

    # The service runs in its own process, as deployed (a client in the same process would share its GIL).
    port = free_port()
    env = dict(
        os.environ,
        RECIPELENS_EMBEDDER_MODEL_DIR=str(args.model),
        RECIPELENS_EMBEDDER_PORT=str(port),
        RECIPELENS_EMBEDDER_MAX_BATCH_SIZE=str(args.batch),
        RECIPELENS_EMBEDDER_LOG_LEVEL="WARNING",
    )
    service = subprocess.Popen([sys.executable, "-m", "embedder"], env=env, stderr=subprocess.DEVNULL)
    latency: dict[str, list[float]] = {name: [] for name in [*paths, "embedder service (gRPC)"]}
    rates: dict[str, list[float]] = {name: [] for name in latency}
    try:
        with EmbedderClient(f"127.0.0.1:{port}", timeout_s=120) as client:
            client.wait_ready(60)
            paths["embedder service (gRPC)"] = client.embed
            for run in paths.values():  # warm-up
                run(one)
                run(photos)
            # Interleaved rounds, so that whatever else the machine does slows every path alike.
            for _ in range(args.latency_repeats):
                for name, run in paths.items():
                    t0 = time.perf_counter()
                    run(one)
                    latency[name].append((time.perf_counter() - t0) * 1000)
            for _ in range(args.throughput_repeats):
                for name, run in paths.items():
                    t0 = time.perf_counter()
                    run(photos)
                    rates[name].append(len(photos) / (time.perf_counter() - t0))
    finally:
        service.terminate()
        service.wait(timeout=30)
    rows = {
        name: (*percentiles(latency[name]), statistics.median(rates[name]), max(rates[name]))
        for name in latency
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
    service = rate["embedder service (gRPC)"]
    print()
    print(f"| ratio (batch-{args.batch} img/s, medians) | measured | target |")
    print("|---|---:|---:|")
    if "Keras predict (seed)" in rows:
        print(f"| service / Keras predict | {service / rate['Keras predict (seed)']:.2f}× | ≥ 2.5× |")
    print(f"| service / bare onnxruntime | {service / rate['bare onnxruntime']:.2f}× | ≥ 0.9× |")
    if "Keras predict (seed)" in rows:
        ceiling = rate["onnxruntime, decoded tensors"] / rate["Keras predict, decoded tensors"]
        print(f"| ceiling: onnxruntime / Keras on decoded tensors | {ceiling:.2f}× | |")


if __name__ == "__main__":
    main()
