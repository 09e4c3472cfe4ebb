"""Embedding throughput and latency, side by side in one run on the same photos.

Keras ``predict`` of the model (the seed's way) vs a bare onnxruntime session on its ONNX export vs the
embedder service over gRPC on loopback. Prints batch-1 latency p50/p99 and batch-32 images/s, and the
ratios the targets are stated in (service ≥ 2.5× Keras predict, ≥ 0.9× bare onnxruntime at batch 32).

    python bench/embed.py --model models/lite0-raw-<version> --photos data/demo/images
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _photos(folder: Path | None, n: int) -> list[bytes]:
    if folder is not None:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
        if not files:
            sys.exit(f"{folder}: no photos found")
        return [files[i % len(files)].read_bytes() for i in range(n)]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.imagegen import encode, synthetic_photo

    return [encode(synthetic_photo(i, (640, 480))) for i in range(n)]


def _latencies(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]


def _throughput(fn: Callable[[], object], images_per_call: int, repeats: int) -> float:
    fn()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        rates.append(images_per_call / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="an exported model folder")
    parser.add_argument("--photos", type=Path, default=None, help="folder of photos (default: generated)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--latency-repeats", type=int, default=50)
    parser.add_argument("--throughput-repeats", type=int, default=5)
    parser.add_argument("--skip-keras", action="store_true")
    args = parser.parse_args()

    from embedder.client import EmbedderClient
    from embedder.preprocess import preprocess
    from embedder.runtime import EmbeddingModel
    from embedder.server import start_server
    from embedder.settings import EmbedderSettings

    photos = _photos(args.photos, args.batch)
    one = [photos[0]]
    model = EmbeddingModel(args.model)
    print(f"model {model.version} ({model.manifest.backbone}, {model.dimension}-D) on {model.provider}")

    rows: dict[str, tuple[float, float, float]] = {}

    if not args.skip_keras:
        from training.models import load_keras_for_manifest

        keras_model = load_keras_for_manifest(args.model)

        def keras_run(batch: list[bytes]) -> np.ndarray:
            arr = np.stack([preprocess(b) for b in batch]).astype(np.float32)
            return np.asarray(keras_model.predict(arr, batch_size=len(batch), verbose=0))

        p50, p99 = _latencies(lambda: keras_run(one), max(10, args.latency_repeats // 3))
        rate = _throughput(lambda: keras_run(photos), len(photos), args.throughput_repeats)
        rows["Keras predict (seed)"] = (p50, p99, rate)

    p50, p99 = _latencies(lambda: model.embed_images(one), args.latency_repeats)
    rate = _throughput(lambda: model.embed_images(photos), len(photos), args.throughput_repeats)
    rows["bare onnxruntime"] = (p50, p99, rate)

    settings = EmbedderSettings(model_dir=args.model, port=0, max_batch_size=args.batch)
    with start_server(settings) as server, EmbedderClient(server.address, timeout_s=120) as client:
        p50, p99 = _latencies(lambda: client.embed(one), args.latency_repeats)
        rate = _throughput(lambda: client.embed(photos), len(photos), args.throughput_repeats)
        rows["embedder service (gRPC)"] = (p50, p99, rate)

    print()
    print(f"| path | batch-1 p50 ms | batch-1 p99 ms | batch-{args.batch} img/s |")
    print("|---|---:|---:|---:|")
    for name, (p50, p99, rate) in rows.items():
        print(f"| {name} | {p50:.1f} | {p99:.1f} | {rate:.1f} |")
    service = rows["embedder service (gRPC)"][2]
    print()
    print("| ratio (batch-32 img/s) | measured | target |")
    print("|---|---:|---:|")
    if "Keras predict (seed)" in rows:
        print(f"| service / Keras predict | {service / rows['Keras predict (seed)'][2]:.2f}× | ≥ 2.5× |")
    print(f"| service / bare onnxruntime | {service / rows['bare onnxruntime'][2]:.2f}× | ≥ 0.9× |")


if __name__ == "__main__":
    main()
