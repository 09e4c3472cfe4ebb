"""Indexing rate vs bare embedding, and ANN search at scale: Qdrant Edge HNSW vs numpy brute force.

One run, one report (Markdown), two parts:

(a) **Indexing rate** on the same photos: the bare embedding rate (read + ``preprocess`` + onnxruntime
    ``EmbeddingModel.embed_arrays`` in batches, nothing else) vs ``build_index`` into a fresh Qdrant Edge
    store with the in-process embedder (catalogue, decode pool, embed, payload, upsert, verify, optimise,
    alias swap — all of it). Target: indexing ≥ 0.85× bare. ``--repeats`` back-to-back pairs; the ratio
    is the median of the pair ratios (a shared machine's load swings more between pairs than within one).
(b) **ANN at scale** (:mod:`bench.ann`): N 512-D unit vectors from a mixture of clusters, numpy brute
    force vs Qdrant Edge HNSW through ``EdgeStore`` (float32 and int8): p50/p99, recall@10, the speedup
    at recall@10 ≥ 0.95 (targets ≥ 10× at 200k, ≥ 40× at 1M), build time and memory.

    python bench/index.py                                     # tiny model + generated photos, N=200k
    python bench/index.py --model models/lite0-raw-<version> --photos data/demo/recipes.csv --out bench.md
    python bench/index.py --large --skip-indexing             # ANN at N=1,000,000 (≈2 GB, long build)
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ann import bench_ann  # noqa: E402


# -- (a) indexing vs bare embedding --------------------------------------------------------------
def _generated_catalog(root: Path, n: int, size: tuple[int, int]) -> Path:
    from tests.indexer.conftest import write_kaggle_catalog

    return write_kaggle_catalog(root, n, size=size)


def _replicated_catalog(source: Path, copies: int, root: Path) -> Path:
    """A Kaggle CSV listing every photo of ``source`` ``copies`` times (symlinks, new recipe ids)."""
    import csv

    from indexer.catalog import read_catalog

    images = root / "images"
    images.mkdir(parents=True)
    csv_path = root / "recipes.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["Id", "Title", "Ingredients", "Instructions", "Image_Name", "Cleaned_Ingredients", "Category"]
        )
        for n, (recipe, image) in enumerate(read_catalog(source).photos()):
            for c in range(copies):
                name = f"p{n:06d}-c{c}"
                (images / f"{name}.jpg").symlink_to(Path(image).resolve())
                writer.writerow(
                    [
                        f"{recipe.id}~{n}~{c}",
                        recipe.title,
                        repr(recipe.ingredients),
                        recipe.instructions,
                        name,
                        repr(recipe.cleaned_ingredients),
                        recipe.category,
                    ]
                )
    return csv_path


def _bare_rate(model: object, paths: list[Path], batch: int) -> float:
    """Images/s of read + preprocess + embed_arrays, batch by batch, in this thread."""
    from embedder.preprocess import preprocess
    from embedder.runtime import EmbeddingModel

    assert isinstance(model, EmbeddingModel)
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        arrays = [preprocess(p.read_bytes(), size=model.image_size) for p in paths[i : i + batch]]
        model.embed_arrays(np.stack(arrays))
    return len(paths) / (time.perf_counter() - start)


def _component_rates(model: object, paths: list[Path], batch: int) -> tuple[float, float]:
    """Images/s of preprocess alone (one thread) and of embed_arrays alone."""
    from embedder.preprocess import preprocess
    from embedder.runtime import EmbeddingModel

    assert isinstance(model, EmbeddingModel)
    start = time.perf_counter()
    arrays = [preprocess(p.read_bytes(), size=model.image_size) for p in paths]
    decode = len(paths) / (time.perf_counter() - start)
    stacked = np.stack(arrays)
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        model.embed_arrays(stacked[i : i + batch])
    embed = len(paths) / (time.perf_counter() - start)
    return decode, embed


def _index_rate(catalog: Path, model_dir: Path, embedder: object, batch: int, work: Path) -> float:
    """Images/s of one full build_index into a fresh Qdrant Edge store."""
    from embedder.embedding import SyncEmbedder
    from indexer.build import build_index
    from indexer.store.edge import EdgeStore

    assert isinstance(embedder, SyncEmbedder)
    store_dir = Path(tempfile.mkdtemp(prefix="store-", dir=work))
    try:
        with EdgeStore(store_dir) as store:
            start = time.perf_counter()
            summary = build_index(
                catalog, model_dir, store, embedder=embedder, batch_size=batch, progress=False
            )
            seconds = time.perf_counter() - start
        # The quality check (verdict calibration + gate) is a fixed cost per build, not per photo.
        return summary.indexed / (seconds - summary.quality_seconds)
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)


def bench_indexing(args: argparse.Namespace, work: Path) -> list[str]:
    from embedder.model_folders import newest_model_folder
    from embedder.runtime import EmbeddingModel
    from indexer.build import open_embedder
    from indexer.catalog import read_catalog

    if args.model is None:
        from tests.support.tinymodel import write_tiny_model

        model_dir = work / "tiny-model"
        write_tiny_model(model_dir)
    else:
        model_dir = newest_model_folder(args.model)
    if args.photos is None:
        catalog = _generated_catalog(work / "catalog", args.n_photos, (args.photo_width, args.photo_height))
    else:
        catalog = args.photos
    if args.copies > 1:
        catalog = _replicated_catalog(catalog, args.copies, work / "replicated")
    photos = [Path(img) for _, img in read_catalog(catalog).photos()]
    if not photos:
        sys.exit(f"{catalog}: no photos")
    model = EmbeddingModel(model_dir)
    embedder = open_embedder(model_dir, None)
    print(
        f"(a) {len(photos)} photos from {catalog}; model {model.version} ({model.manifest.backbone}, "
        f"{model.dimension}-D) on {model.provider}; batch {args.batch}; {args.repeats} repeats",
        flush=True,
    )
    _bare_rate(model, photos[: args.batch], args.batch)  # warm-up: session, page cache
    bare: list[float] = []
    indexed: list[float] = []
    for r in range(args.repeats):  # alternate, so that load from other work hits both alike
        bare.append(_bare_rate(model, photos, args.batch))
        indexed.append(_index_rate(catalog, model_dir, embedder, args.batch, work))
        print(f"    repeat {r + 1}: bare {bare[-1]:.1f} img/s, indexing {indexed[-1]:.1f} img/s", flush=True)
    decode, embed = _component_rates(model, photos, args.batch)
    b, i = statistics.median(bare), statistics.median(indexed)
    # each repeat measures both back to back, so a pair shares the machine's load: median of pair ratios
    ratio = statistics.median(x / y for x, y in zip(indexed, bare, strict=True))
    verdict = "met" if ratio >= 0.85 else "NOT met"
    copies = f" ({len(photos) // args.copies} files, each listed {args.copies}×)" if args.copies > 1 else ""
    return [
        f"### (a) Indexing rate — {len(photos)} photos{copies}, model `{model.manifest.backbone}` "
        f"({model.dimension}-D), batch {args.batch}, median of {args.repeats}",
        "",
        "| path | images/s |",
        "|---|---:|",
        f"| preprocess alone (read + decode + resize, 1 thread) | {decode:.1f} |",
        f"| embed_arrays alone (onnxruntime) | {embed:.1f} |",
        f"| bare: preprocess + embed_arrays in batches | {b:.1f} |",
        f"| indexing: `build_index` → fresh Qdrant Edge store | {i:.1f} |",
        f"| **indexing / bare** (median of the {args.repeats} back-to-back pairs) | **{ratio:.2f}×** "
        f"(target ≥ 0.85×, {verdict}) |",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="model folder (default: a generated tiny model)"
    )
    parser.add_argument("--photos", type=Path, default=None, help="catalogue (default: generated Kaggle CSV)")
    parser.add_argument("--n-photos", type=int, default=384, help="generated photos (default 384)")
    parser.add_argument("--photo-width", type=int, default=320)
    parser.add_argument("--photo-height", type=int, default=240)
    parser.add_argument(
        "--copies", type=int, default=1, help="list every photo this many times (a longer build, same files)"
    )
    parser.add_argument("--batch", type=int, default=128, help="embedding/upsert batch (build_index default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=200_000, help="ANN collection size (default 200,000)")
    parser.add_argument("--large", action="store_true", help="ANN at N = 1,000,000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=3000)
    parser.add_argument(
        "--intrinsic-dim", type=int, default=16, help="dimension of each cluster's noise (0 = isotropic)"
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--oversampling",
        type=float,
        default=2.0,
        help="int8: rescore this many × top-k quantized candidates with the float32 vectors (default 2)",
    )
    parser.add_argument("--upload-batch", type=int, default=1024, help="points per EdgeStore.upsert")
    parser.add_argument("--skip-indexing", action="store_true")
    parser.add_argument("--skip-ann", action="store_true")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="bench-index-", dir=args.work))
    lines = [f"## bench/index.py — {os.cpu_count()} CPU(s), `{' '.join(sys.argv[1:]) or '(defaults)'}`", ""]
    try:
        if not args.skip_indexing:
            lines += bench_indexing(args, work)
        if not args.skip_ann:
            lines += bench_ann(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = "\n".join(lines)
    print()
    print(report)
    if args.out is not None:
        args.out.write_text(report + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
