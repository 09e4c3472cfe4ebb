"""Indexing rate vs bare embedding, and ANN search at scale: Qdrant Edge HNSW vs numpy brute force.

One run, one report (Markdown), two parts:

(a) **Indexing rate** on the same photos: the bare embedding rate (read + ``preprocess`` + onnxruntime
    ``EmbeddingModel.embed_arrays`` in batches, nothing else) vs ``build_index`` into a fresh Qdrant Edge
    store with the in-process embedder (catalogue, decode pool, embed, payload, upsert, verify, optimise,
    alias swap — all of it). Target: indexing ≥ 0.85× bare. ``--repeats`` back-to-back pairs; the ratio
    is the median of the pair ratios (a shared machine's load swings more between pairs than within one).
(b) **ANN at scale**: N 512-D unit vectors from a mixture of a few thousand clusters (random unit centres,
    points = centre + Gaussian noise of low intrinsic dimension, renormalised — see :func:`mixture`;
    uniform random vectors are HNSW's worst case and unlike real embeddings), 200 held-out queries from
    the same mixture. numpy brute force (the seed's cosine
    similarity: one float32 matrix product + ``argpartition``) vs collections written through
    ``EdgeStore`` (our store, its defaults: HNSW m=16, ef_construct=100; with and without int8 scalar
    quantization, rescored from 2× oversampling), searched one query at a time: p50/p99 latency,
    recall@10 against brute force, ``hnsw_ef`` raised until recall@10 ≥ 0.95, speedup there (targets
    ≥ 10× at 200k, ≥ 40× at 1M), build time (upload + optimise) and memory (on-disk size, and RSS
    growth of loading + querying the shard). ``EdgeStore.search`` itself (payload, default ef, no
    oversampling) is measured too.

    python bench/index.py                                     # tiny model + generated photos, N=200k
    python bench/index.py --model models/lite0-raw-<version> --photos data/demo/recipes.csv --out bench.md
    python bench/index.py --large --skip-indexing             # ANN at N=1,000,000 (≈2 GB, long build)
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import percentiles  # noqa: E402

RECALL_TARGET = 0.95
EF_SWEEP = (16, 32, 64, 128, 256, 512, 1024)


# -- helpers -------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


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


# -- (b) ANN at scale ----------------------------------------------------------------------------
def mixture(n: int, dim: int, clusters: int, seed: int, intrinsic_dim: int = 16) -> np.ndarray:
    """``n`` unit vectors from a Gaussian mixture on the sphere.

    Centres are random unit vectors and cluster sizes vary (log-normal weights). A point is its centre
    plus Gaussian noise, renormalised. With ``intrinsic_dim`` k > 0 the noise lies mostly in a random
    k-dimensional subspace of its cluster (norm ≈ 0.6, scaled 0.7–1.3 per cluster) plus a little
    isotropic noise (norm 0.3): like real embeddings, neighbourhoods have a low intrinsic dimension, so
    the 1st neighbour is clearly nearer than the 10th (mean cosine ≈ 0.84 vs 0.77 at N = 200k). With
    k = 0 the noise is isotropic (norm 0.45–0.8): in 512-D that makes all cluster-mates almost equally
    near (≈ 0.76 vs 0.74), a harder and less realistic case.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, 0.5, clusters)
    labels = rng.choice(clusters, size=n, p=weights / weights.sum())
    out = np.empty((n, dim), dtype=np.float32)
    if intrinsic_dim <= 0:
        sigma = (rng.uniform(0.45, 0.8, clusters) / np.sqrt(dim)).astype(np.float32)
        for start in range(0, n, 65536):
            lab = labels[start : start + 65536]
            chunk = centres[lab] + rng.standard_normal((len(lab), dim), dtype=np.float32) * sigma[lab, None]
            out[start : start + len(lab)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
        return out
    pool = rng.standard_normal((8192, dim), dtype=np.float32)  # subspace directions, shared sparingly
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    basis = rng.integers(0, len(pool), (clusters, intrinsic_dim))
    scale = (rng.uniform(0.7, 1.3, clusters) * 0.6 / np.sqrt(intrinsic_dim)).astype(np.float32)
    for start in range(0, n, 2048):
        lab = labels[start : start + 2048]
        z = rng.standard_normal((len(lab), intrinsic_dim), dtype=np.float32) * scale[lab, None]
        iso = rng.standard_normal((len(lab), dim), dtype=np.float32) * np.float32(0.3 / np.sqrt(dim))
        chunk = centres[lab] + np.einsum("nk,nkd->nd", z, pool[basis[lab]]) + iso
        out[start : start + len(lab)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def brute_force_top(data: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """The seed's cosine similarity: unit vectors, one matrix product, argpartition, sort the top k."""
    scores = data @ query
    top = np.argpartition(scores, -k)[-k:]
    return top[np.argsort(-scores[top])]


def exact_neighbours(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 50):
        scores = queries[start : start + 50] @ data.T
        top = np.argpartition(scores, -k, axis=1)[:, -k:]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start : start + 50] = np.take_along_axis(top, order, axis=1)
    return out


def _timed(fn: Callable[[np.ndarray], list[int]], queries: np.ndarray) -> tuple[list[list[int]], list[float]]:
    fn(queries[0])
    results, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        results.append(fn(q))
        times.append((time.perf_counter() - t0) * 1000)
    return results, times


def _recall(found: list[list[int]], truth: np.ndarray, k: int) -> float:
    return float(
        np.mean([len(set(f[:k]) & set(t[:k].tolist())) / k for f, t in zip(found, truth, strict=True)])
    )


@dataclass
class AnnRow:
    name: str
    ef: str
    p50: float
    p99: float
    recall: float
    speedup: float
    build_s: str = ""
    memory: str = ""


def _vid(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def _edge_collection(
    data: np.ndarray, quantization: str | None, work: Path, batch: int
) -> tuple[Path, float, float]:
    """Write ``data`` through EdgeStore; (shard folder, upload seconds, optimise seconds)."""
    from indexer.store.base import RecipePoint
    from indexer.store.edge import SHARD_DIR, EdgeStore

    root = work / f"ann-{quantization or 'f32'}"
    name = "ann"
    with EdgeStore(root) as store:
        start = time.perf_counter()
        store.create_collection(
            name, dimension=data.shape[1], model_version="bench", quantization=quantization
        )
        for s in range(0, len(data), batch):
            points = [
                RecipePoint(_vid(i), data[i], {"recipe_id": str(i)})
                for i in range(s, min(s + batch, len(data)))
            ]
            store.upsert(name, points, model_version="bench")
        uploaded = time.perf_counter()
        store.mark_complete(name)  # optimize(): builds the HNSW graph (and the int8 copy)
        indexed = time.perf_counter()
    return root / "collections" / name / SHARD_DIR, uploaded - start, indexed - uploaded


def bench_ann(args: argparse.Namespace, work: Path) -> list[str]:
    import qdrant_edge as qe

    from indexer.store.edge import EdgeStore

    n = 1_000_000 if args.large else args.n
    k = 10
    start = time.perf_counter()
    vectors = mixture(n + args.queries, args.dim, args.clusters, seed=0, intrinsic_dim=args.intrinsic_dim)
    data, queries = vectors[:n], vectors[n:].copy()
    del vectors
    made = time.perf_counter() - start
    print(f"(b) {n:,} × {args.dim}-D vectors, {args.clusters} clusters, made in {made:.1f}s")
    truth = exact_neighbours(data, queries, k)
    nn1 = float(np.mean(np.einsum("ij,ij->i", queries, data[truth[:, 0]])))
    nn10 = float(np.mean(np.einsum("ij,ij->i", queries, data[truth[:, -1]])))
    print(f"    mean cosine of a query to its 1st / 10th neighbour: {nn1:.3f} / {nn10:.3f}", flush=True)

    found, times = _timed(lambda q: brute_force_top(data, q, k).tolist(), queries)
    brute_p50, brute_p99 = percentiles(times)
    rows = [
        AnnRow(
            "numpy brute force (float32 matmul + argpartition)",
            "—",
            brute_p50,
            brute_p99,
            _recall(found, truth, k),
            1.0,
            "0 s (none)",
            f"{_mib(data.nbytes)} (the matrix, RAM)",
        )
    ]
    print(f"    brute force p50 {brute_p50:.2f} ms", flush=True)
    headline: dict[str, tuple[int, float, float]] = {}
    headline_order: list[str] = []
    for quant in (None, "int8"):
        label = "Qdrant Edge HNSW" + (
            f" + int8 SQ (rescored, oversampling {args.oversampling:g})" if quant else " float32"
        )
        headline_order.append(label)
        shard_dir, upload_s, index_s = _edge_collection(data, quant, work, args.upload_batch)
        disk = _dir_bytes(shard_dir)
        print(
            f"    {label}: upload {upload_s:.1f}s, optimise {index_s:.1f}s, {_mib(disk)} on disk", flush=True
        )
        gc.collect()
        rss0 = _rss_bytes()
        shard = qe.EdgeShard.load(str(shard_dir))
        info = shard.info()
        print(
            f"    {info.points_count:,} points in {info.segments_count} segment(s), "
            f"{info.indexed_vectors_count:,} in HNSW",
            flush=True,
        )
        quant_params = (
            qe.QuantizationSearchParams(rescore=True, oversampling=args.oversampling) if quant else None
        )

        def search(
            q: np.ndarray, ef: int, shard: qe.EdgeShard = shard, qp: object = quant_params
        ) -> list[int]:
            request = qe.QueryRequest(
                limit=k,
                query=qe.Query.Nearest(q.tolist()),
                with_payload=False,
                params=qe.SearchParams(hnsw_ef=ef, quantization=qp),  # type: ignore[arg-type]
            )
            return [uuid.UUID(str(p.id)).int - 1 for p in shard.query(request)]

        for q in queries:  # one untimed pass: the shard's mmapped pages in RAM, like brute force's matrix
            search(q, EF_SWEEP[2])
        first = True
        for ef in EF_SWEEP:
            found, times = _timed(lambda q, ef=ef: search(q, ef), queries)  # type: ignore[misc]
            p50, p99 = percentiles(times)
            recall = _recall(found, truth, k)
            row = AnnRow(label, str(ef), p50, p99, recall, brute_p50 / p50)
            if first:
                row.build_s = f"{upload_s + index_s:.0f} s ({upload_s:.0f} upload + {index_s:.0f} index)"
                row.memory = f"{_mib(disk)} on disk; +{_mib(_rss_bytes() - rss0)} RSS"
                first = False
            rows.append(row)
            print(f"    ef={ef}: recall@10 {recall:.3f}, p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
            if recall >= RECALL_TARGET:
                headline[label] = (ef, recall, brute_p50 / p50)
                break
        # the production path: EdgeStore.search (payload, default ef) on the same collection
        store = EdgeStore(shard_dir.parent.parent.parent)
        found, times = _timed(
            lambda q, store=store: [  # type: ignore[misc]
                int(h.payload["recipe_id"]) for h in store.search("ann", q, limit=k, model_version="bench")
            ],
            queries,
        )
        p50, p99 = percentiles(times)
        rows.append(
            AnnRow(
                f"Qdrant Edge HNSW {'+ int8 SQ' if quant else 'float32'} via EdgeStore.search (payload)",
                "default",
                p50,
                p99,
                _recall(found, truth, k),
                brute_p50 / p50,
            )
        )
        store.close()
        shard.close()
        shutil.rmtree(shard_dir.parent.parent.parent, ignore_errors=True)

    target = 40 if n >= 1_000_000 else 10
    noise = (
        f"noise of intrinsic dimension {args.intrinsic_dim}" if args.intrinsic_dim > 0 else "isotropic noise"
    )
    lines = [
        f"### (b) ANN at scale — N = {n:,} × {args.dim}-D, {args.clusters} clusters ({noise}; mean cosine "
        f"of a query to its 1st / 10th neighbour {nn1:.2f} / {nn10:.2f}), {args.queries} held-out queries, "
        f"top-{k}, one query at a time",
        "",
        "| method | hnsw_ef | p50 ms | p99 ms | recall@10 | speedup (p50) | build | memory |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    lines += [
        f"| {r.name} | {r.ef} | {r.p50:.2f} | {r.p99:.2f} | {r.recall:.4f} | {r.speedup:.1f}× "
        f"| {r.build_s} | {r.memory} |"
        for r in rows
    ]
    lines.append("")
    for label in headline_order:
        if label in headline:
            ef, recall, speedup = headline[label]
            verdict = "met" if speedup >= target else "NOT met"
            lines.append(
                f"* {label}: recall@10 {recall:.4f} at hnsw_ef={ef} → **{speedup:.1f}×** brute force "
                f"(target ≥ {target}×, {verdict})"
            )
        else:
            lines.append(f"* {label}: recall@10 stayed below {RECALL_TARGET} up to hnsw_ef={EF_SWEEP[-1]}")
    lines += [
        "",
        "Memory: on-disk size of the shard folder; RSS = growth of this process's resident set from loading "
        "the shard and running the queries (mmapped pages count once touched). Brute force holds the whole "
        "float32 matrix in RAM.",
        "",
    ]
    return lines


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
