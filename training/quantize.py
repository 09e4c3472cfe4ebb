"""Calibrated int8 twins of exported fp32 model folders (ONNX QDQ, per-channel int8 weights).

    folder = quantize_model(fp32_folder, catalog="data/demo/recipes.csv", out_dir="models")

1. **Photos** — from the catalogue, sampled round-robin across its categories (a stable shuffle within
   each): the first ``calibration_photos`` calibrate, the next ``evaluation_photos`` (never seen by the
   calibration) measure the agreement.
2. **Quantize** — ``onnxruntime.quantization.quantize_static`` on the fp32 ``model.onnx`` in QDQ format:
   int8 weights per output channel, uint8 activations with ranges from the calibration photos
   (``minmax``, ``percentile`` or ``entropy``), after the graph's preparation
   (:mod:`training.quantize_graph`): BatchNorm and zero Pads folded into the convolutions; the stem's
   output and the first block (``float_head_convs``; the stem convolution itself on int8,
   ``quantized_stem``) and the final L2 normalisation (``float_tail``) stay in float.
3. **Agreement** — the evaluation photos' clean views are the gallery, one strongly distorted view of
   each (:func:`training.evaluate.distort`) the queries. Both models embed both (the twin on every CPU
   runtime the build offers, :func:`cpu_runtimes`: each computes int8 its own way); recorded are the
   cosine between the twins' query vectors (min / mean) and the overlap of each query's top-10 gallery
   photos when each model searches its own gallery (mean / min), per runtime, with the CPU and its int8
   instructions (:func:`embedder.cpus.int8_instructions`) and the twin's speed-up on its serving
   runtime over fp32 on fp32's (onnxruntime's CPU provider:
   :data:`embedder.providers.FP32_DEFAULT_PROVIDERS`). Below a bound of :class:`Int8Settings` on any
   runtime the model is refused (:class:`QuantizationRefusedError`) and no folder is left.
4. **Folder** — ``<out>/<name>-int8-<version>`` with its own version (the content hash, so its vectors
   never mix with the fp32 twin's) and a manifest whose ``numerics`` is ``int8`` and whose
   ``quantization`` records the method, the calibration sample and the agreement.

No TensorFlow here: onnx, onnxruntime, numpy and Pillow only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from embedder.cpus import SATURATING, cpu_name, int8_instructions, native_bf16
from embedder.embedding import combine_views
from embedder.manifest import GALLERY_SIZES_KEY, MODEL_FILE, ModelManifest, read_manifest, write_manifest
from embedder.preprocess import ImageDecodeError, preprocess_file
from embedder.providers import CPU, OPENVINO
from embedder.runtime import cpu_runtimes, input_dtype, provider_options
from training.publish import publish_folder, staging_folder
from training.quantize_graph import (
    drop_qdq,
    float_head_nodes,
    float_tail_nodes,
    fold_conv_affine,
    fold_pad_into_conv,
    stem_nodes,
)

log = logging.getLogger(__name__)

TOP_K = 10
CALIBRATION_BATCH = 16
Method = Literal["minmax", "percentile", "entropy"]


class QuantizationError(RuntimeError):
    """The int8 model could not be made (no usable photos, a quantizer failure)."""


class QuantizationRefusedError(QuantizationError):
    """The int8 model agrees with its fp32 twin less than the settings require."""


class Int8Settings(BaseSettings):
    """How int8 twins are calibrated and how closely they must agree; ``RECIPELENS_INT8_*`` variables."""

    model_config = SettingsConfigDict(env_prefix="RECIPELENS_INT8_")

    calibration_photos: int = Field(
        default=96, ge=1, description="catalogue photos that calibrate the ranges"
    )
    evaluation_photos: int = Field(
        default=256, ge=TOP_K + 1, description="other catalogue photos: the agreement's gallery and queries"
    )
    method: Method = Field(default="minmax", description="activation range calibration")
    percentile: float = Field(default=99.999, gt=90, le=100, description="for method=percentile")
    float_head_convs: int = Field(
        default=3,
        ge=0,
        description="leading convolutions whose outputs stay float (Lite's stem and first block)",
    )
    quantized_stem: bool = Field(
        default=True,
        description="the first of them, the stem convolution, runs on int8 and writes float (stem_nodes)",
    )
    float_tail: bool = Field(
        default=True,
        description="leave the nodes after the last Conv/MatMul/pooling (the L2 normalisation) in float",
    )
    seed: int = 0
    min_cosine: float = Field(default=0.90, ge=-1, le=1, description="refuse below this worst-query cosine")
    min_mean_cosine: float = Field(default=0.98, ge=-1, le=1, description="refuse below this mean cosine")
    min_top10_overlap: float = Field(
        default=0.75, ge=0, le=1, description="refuse below this mean top-10 overlap"
    )
    min_speedup: float = Field(
        default=1.2,
        gt=0,
        description="the demo serves the twin only where it ran at least this much faster than fp32 here",
    )
    bf16_float_parts: bool = Field(
        default=False,
        description="on a CPU with bf16 arithmetic, measure the twin's float parts in bf16 on OpenVINO and "
        "keep them so where that runs min_bf16_gain × faster (off: the non-food verdict moved 2.5 points)",
    )
    min_bf16_gain: float = Field(
        default=1.05, gt=0, description="how much faster bf16 float parts must run to be kept"
    )


@dataclass(frozen=True)
class Agreement:
    """How an int8 model's vectors compare with its fp32 twin's on the same evaluation photos."""

    cosine_min: float
    cosine_mean: float
    top10_overlap_mean: float
    top10_overlap_min: float
    queries: int
    gallery: int

    def failures(self, settings: Int8Settings) -> list[str]:
        """The bounds this agreement misses (empty when it passes)."""
        checks = (
            ("cosine min", self.cosine_min, settings.min_cosine),
            ("cosine mean", self.cosine_mean, settings.min_mean_cosine),
            ("top-10 overlap mean", self.top10_overlap_mean, settings.min_top10_overlap),
        )
        return [f"{name} {value:.4f} < {bound:g}" for name, value, bound in checks if value < bound]

    def summary(self) -> str:
        return (
            f"cosine min {self.cosine_min:.4f} / mean {self.cosine_mean:.4f}, top-10 overlap mean "
            f"{self.top10_overlap_mean:.3f} / min {self.top10_overlap_min:.1f} "
            f"({self.queries} queries, {self.gallery} gallery photos)"
        )


@dataclass(frozen=True)
class CatalogSample:
    """Catalogue photos chosen across categories: calibration first, evaluation after (disjoint)."""

    calibration: list[Path]
    evaluation: list[Path]
    categories: int


def sample_photos(catalog: str | Path, calibration: int, evaluation: int, *, seed: int = 0) -> CatalogSample:
    """Round-robin over the catalogue's categories (stable shuffle within each); local files only."""
    from indexer.catalog import read_catalog

    cat = read_catalog(catalog)
    rng = np.random.default_rng(seed)
    by_category: dict[str, list[Path]] = {}
    for recipe, image in cat.photos():
        if isinstance(image, Path):
            by_category.setdefault(recipe.category or "", []).append(image)
    pools = []
    for name in sorted(by_category):
        files = by_category[name]
        pools.append([files[i] for i in rng.permutation(len(files))])
    ordered: list[Path] = []
    for depth in range(max((len(p) for p in pools), default=0)):
        ordered += [pool[depth] for pool in pools if depth < len(pool)]
    if len(ordered) < 2:
        raise QuantizationError(f"{catalog}: fewer than 2 local photos to calibrate and evaluate with")
    n_cal = min(calibration, len(ordered) // 2)
    return CatalogSample(ordered[:n_cal], ordered[n_cal : n_cal + evaluation], len(pools))


def _decode_all(files: Sequence[Path], size: int) -> tuple[np.ndarray, list[Path]]:
    """The photos that decode, and their files (a bad one is logged, named, and left out)."""
    arrays, kept = [], []
    for path in files:
        try:
            arrays.append(preprocess_file(path, size=size))
            kept.append(Path(path))
        except ImageDecodeError as exc:
            log.warning("skipping %s", exc)
    if not arrays:
        raise QuantizationError("none of the sampled photos could be decoded")
    return np.stack(arrays), kept


def _query_views(files: Sequence[Path], size: int, seed: int) -> np.ndarray:
    from embedder.preprocess import preprocess
    from training.evaluate import distort

    rng = np.random.default_rng(seed)
    return np.stack([preprocess(distort(Path(f).read_bytes(), rng, "strong"), size=size) for f in files])


class _Batches:
    """``onnxruntime.quantization.CalibrationDataReader``: the calibration photos in batches."""

    def __init__(self, input_name: str, images: np.ndarray, dtype: type[np.generic]) -> None:
        self.input_name = input_name
        self._iter: Iterator[np.ndarray] = iter(
            [
                images[i : i + CALIBRATION_BATCH].astype(dtype)
                for i in range(0, len(images), CALIBRATION_BATCH)
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {self.input_name: batch}


def _copy_gallery_sizes(fp32_path: Path, int8_path: Path) -> None:
    """The fp32 graph's gallery sizes (its metadata) onto the int8 graph, so that its version covers them."""
    import onnx

    recorded = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    if GALLERY_SIZES_KEY not in recorded:
        return
    proto = onnx.load(str(int8_path))
    onnx.helper.set_model_props(
        proto,
        {**{p.key: p.value for p in proto.metadata_props}, GALLERY_SIZES_KEY: recorded[GALLERY_SIZES_KEY]},
    )
    onnx.save(proto, str(int8_path))


def _session(
    path: Path, provider: str = CPU, numerics: str = "fp32", float_parts: str = "fp32"
) -> ort.InferenceSession:
    options = provider_options(provider, numerics=numerics, float_parts=float_parts)
    return ort.InferenceSession(str(path), providers=[(provider, options)])


def choose_float_parts(
    twin: ort.InferenceSession, path: Path, images: np.ndarray, settings: Int8Settings
) -> tuple[ort.InferenceSession, str, float | None]:
    """OpenVINO's twin session with its float parts in bf16 where ``settings.bf16_float_parts`` asks for
    it, this CPU has bf16 arithmetic and that ran at least ``settings.min_bf16_gain`` × the fp32-float-parts
    session's images/s; else ``twin``.
    Returns the session, its float parts and the measured gain (``None``: not measured — the setting is
    off, or this CPU has no bf16)."""
    if not (settings.bf16_float_parts and native_bf16()):
        return twin, "fp32", None
    bf16 = _session(path, OPENVINO, "int8", float_parts="bf16")
    gain = measure_speedup(twin, bf16, images)
    return (bf16, "bf16", gain) if gain >= settings.min_bf16_gain else (twin, "fp32", gain)


def _embed(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    name, dtype = session.get_inputs()[0].name, input_dtype(session)
    out = [session.run(None, {name: images[i : i + 32].astype(dtype)})[0] for i in range(0, len(images), 32)]
    vectors = np.concatenate(out).astype(np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def measure_speedup(fp32: ort.InferenceSession, int8: ort.InferenceSession, images: np.ndarray) -> float:
    """int8 / fp32 images/s on batches of 32 of ``images``: median of 3 interleaved rounds, after a warm-up
    (the ratio whatever else the machine does, as bench/embed.py measures it)."""
    batch = images[:64]
    _embed(fp32, batch[:32])
    _embed(int8, batch[:32])
    ratios = []
    for _ in range(3):
        t0 = time.perf_counter()
        _embed(fp32, batch)
        t1 = time.perf_counter()
        _embed(int8, batch)
        t2 = time.perf_counter()
        ratios.append((t1 - t0) / max(t2 - t1, 1e-9))
    return float(np.median(ratios))


def measure_agreement(
    reference: np.ndarray, candidate: np.ndarray, reference_gallery: np.ndarray, candidate_gallery: np.ndarray
) -> Agreement:
    """Cosine of paired query vectors, and top-10 overlap when each model searches its own gallery."""
    cosine = np.sum(reference * candidate, axis=1)
    k = min(TOP_K, len(reference_gallery))
    top_ref = np.argsort(-(reference @ reference_gallery.T), axis=1, kind="stable")[:, :k]
    top_cand = np.argsort(-(candidate @ candidate_gallery.T), axis=1, kind="stable")[:, :k]
    overlap = np.array(
        [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top_ref, top_cand, strict=True)]
    )
    return Agreement(
        cosine_min=float(cosine.min()),
        cosine_mean=float(cosine.mean()),
        top10_overlap_mean=float(overlap.mean()),
        top10_overlap_min=float(overlap.min()),
        queries=len(reference),
        gallery=len(reference_gallery),
    )


def quantize_onnx(
    fp32_path: Path, int8_path: Path, calibration: np.ndarray, settings: Int8Settings
) -> dict[str, Any]:
    """Write the QDQ int8 graph of ``fp32_path`` to ``int8_path``; return what was done (for the manifest)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_session = _session(fp32_path)
    input_name, dtype = fp32_session.get_inputs()[0].name, input_dtype(fp32_session)
    # onnxruntime's own graph optimisations first (BatchNorm-style Mul/Add folded into the Conv before it),
    # so every remaining tensor is quantized once, as it will run.
    prepared = int8_path.with_name("prepared.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        import onnx

        proto = onnx.load(str(prepared))
        folds = fold_conv_affine(proto)
        pad_folds = fold_pad_into_conv(proto)
        for index, node in enumerate(proto.graph.node):  # nodes are excluded by name: every one needs one
            node.name = node.name or f"{node.op_type}_{index}"
        onnx.save(proto, str(prepared))
    except Exception as exc:
        raise QuantizationError(f"onnxruntime could not prepare {fp32_path} for quantization: {exc}") from exc
    excluded = float_head_nodes(prepared, settings.float_head_convs)
    int8_head, stem_tensors = stem_nodes(prepared) if settings.quantized_stem and excluded else ([], [])
    excluded = [name for name in excluded if name not in int8_head]
    excluded += float_tail_nodes(prepared) if settings.float_tail else []
    extra: dict[str, Any] = {"CalibMovingAverage": False}
    if settings.method == "percentile":
        extra["CalibPercentile"] = settings.percentile
    try:
        quantize_static(
            str(prepared),
            str(int8_path),
            _Batches(input_name, calibration, dtype),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=methods[settings.method],
            extra_options=extra,
        )
        float_tensors: list[str] = []
        if stem_tensors:
            import onnx

            proto = onnx.load(str(int8_path))
            float_tensors = drop_qdq(proto, stem_tensors)
            onnx.save(proto, str(int8_path))
    except Exception as exc:
        raise QuantizationError(f"onnxruntime could not quantize {fp32_path}: {exc}") from exc
    finally:
        prepared.unlink(missing_ok=True)
    return {
        "format": "QDQ",
        "weights": "int8, symmetric, per output channel",
        "activations": "uint8, per tensor",
        "method": settings.method,
        **({"percentile": settings.percentile} if settings.method == "percentile" else {}),
        "folded_into_conv": folds,
        "pads_folded_into_conv": pad_folds,
        "float_head_convs": settings.float_head_convs,
        "quantized_stem": bool(stem_tensors),
        "float_nodes": excluded,
        "float_tensors": float_tensors,
        "prepared": "onnxruntime.quantization.quant_pre_process (graph optimisations, shape inference)",
        "tool": f"onnxruntime.quantization {ort.__version__}",
    }


def quantize_model(
    fp32_folder: str | Path,
    *,
    catalog: str | Path,
    out_dir: str | Path | None = None,
    settings: Int8Settings | None = None,
) -> Path:
    """Make, check and publish the int8 twin of ``fp32_folder``; return its folder (see module docstring)."""
    settings = settings or Int8Settings()
    fp32_folder = Path(fp32_folder)
    out = Path(out_dir) if out_dir is not None else fp32_folder.parent
    fp32: ModelManifest = read_manifest(fp32_folder)
    if fp32.numerics != "fp32":
        raise QuantizationError(f"{fp32_folder}: already {fp32.numerics}; quantize the fp32 model")
    size = fp32.input.image_size
    started = time.perf_counter()
    sample = sample_photos(
        catalog, settings.calibration_photos, settings.evaluation_photos, seed=settings.seed
    )
    calibration, _ = _decode_all(sample.calibration, size)
    gallery_images, evaluation_files = _decode_all(sample.evaluation, size)
    queries = _query_views(evaluation_files, size, settings.seed)
    # The gallery side as the indexer stores it: each photo at every gallery size, combined.
    gallery_views = [gallery_images] + [
        np.stack([preprocess_file(path, size=s) for path in evaluation_files]) for s in fp32.gallery_views[1:]
    ]
    log.info(
        "int8: calibrating %s on %d photos from %d categories (%s), agreement on %d others",
        fp32.version,
        len(calibration),
        sample.categories,
        settings.method,
        len(gallery_images),
    )
    out.mkdir(parents=True, exist_ok=True)
    with staging_folder(out, f"{fp32.name}-int8") as staging:
        numerics = quantize_onnx(fp32_folder / MODEL_FILE, staging / MODEL_FILE, calibration, settings)
        _copy_gallery_sizes(fp32_folder / MODEL_FILE, staging / MODEL_FILE)
        # The reference: fp32 on onnxruntime's CPU provider. The twin: on every CPU runtime this build
        # offers, since each computes int8 its own way (on a CPU without VNNI, OpenVINO's vectors of the
        # demo's twin fell to cosine 0.58 while onnxruntime's CPU provider's kept 0.94).
        ref = _session(fp32_folder / MODEL_FILE)
        ref_queries = _embed(ref, queries)
        ref_gallery = combine_views([_embed(ref, views) for views in gallery_views])
        runtimes = cpu_runtimes()
        twins = {provider: _session(staging / MODEL_FILE, provider, "int8") for provider in runtimes}
        float_parts, bf16_gain = "fp32", None
        if OPENVINO in twins:  # its float parts in bf16, where asked for and faster here (embedder.runtime)
            twins[OPENVINO], float_parts, bf16_gain = choose_float_parts(
                twins[OPENVINO], staging / MODEL_FILE, queries, settings
            )
            if bf16_gain is not None:
                log.info(
                    "int8: on %s the float parts in bf16 (%s) ran %.2f× their fp32 images/s: %s",
                    OPENVINO,
                    native_bf16(),
                    bf16_gain,
                    "bf16 it is"
                    if float_parts == "bf16"
                    else f"staying fp32 (RECIPELENS_INT8_MIN_BF16_GAIN {settings.min_bf16_gain:g})",
                )
        by_runtime = {
            provider: measure_agreement(
                ref_queries,
                _embed(twin, queries),
                ref_gallery,
                combine_views([_embed(twin, views) for views in gallery_views]),
            )
            for provider, twin in twins.items()
        }
        instructions = int8_instructions()
        failures = [
            f"{provider}: {', '.join(missed)}"
            for provider, agreement in by_runtime.items()
            if (missed := agreement.failures(settings))
        ]
        if failures:
            measured = "; ".join(f"{p}: {a.summary()}" for p, a in by_runtime.items())
            advice = (
                "this CPU's int8 products saturate (no VNNI): serve the fp32 model here"
                if instructions.kind == SATURATING
                else "try RECIPELENS_INT8_METHOD=percentile or more calibration photos"
            )
            raise QuantizationRefusedError(
                f"int8 twin of {fp32.version} refused on this CPU ({instructions.describe()}): "
                f"{'; '.join(failures)} ({measured}); {advice}"
            )
        serving = runtimes[0]
        agreement = by_runtime[serving]
        # The twin on its serving runtime against fp32 on its own — onnxruntime's CPU provider, where the
        # default order runs fp32 models on every CPU build (embedder.providers.FP32_DEFAULT_PROVIDERS):
        # the reference session above.
        fp32_runtime = ref.get_providers()[0]
        speedup = measure_speedup(ref, twins[serving], queries)
        manifest = write_manifest(
            staging,
            name=f"{fp32.name}-int8",
            backbone=fp32.backbone,
            input=fp32.input,
            output_name=fp32.output_name,
            embedding_dim=fp32.embedding_dim,
            numerics="int8",
            gallery_sizes=fp32.gallery_sizes,
            source={**fp32.source, "fp32_version": fp32.version, "fp32_name": fp32.name},
            quantization={
                **numerics,
                "calibration": {
                    "catalog": str(catalog),
                    "photos": len(calibration),
                    "categories": sample.categories,
                    "seed": settings.seed,
                },
                "agreement": {
                    **agreement.__dict__,
                    "runtime": serving,
                    "queries_kind": "one strong distortion per evaluation photo (training.evaluate.distort)",
                },
                "agreement_by_runtime": {p: a.__dict__ for p, a in by_runtime.items()},
                # Where the agreement holds: int8 numerics depend on the CPU's int8 instructions, and a
                # model loads only on a CPU whose int8 products are of the same kind (embedder.runtime).
                "measured_on": {
                    "cpu": cpu_name(),
                    "int8_instructions": instructions.name,
                    "int8_products": instructions.kind,
                    "onnxruntime": ort.__version__,
                    # OpenVINO's precision for the twin's float parts (embedder.runtime.int8_float_parts)
                    "int8_float_parts": float_parts,
                    **({"bf16_float_parts_speedup": round(bf16_gain, 3)} if bf16_gain is not None else {}),
                },
                "speedup": {
                    "runtime": serving,
                    "fp32_runtime": fp32_runtime,
                    "int8_over_fp32": round(speedup, 3),
                    "batch": 32,
                },
                "bounds": {
                    "min_cosine": settings.min_cosine,
                    "min_mean_cosine": settings.min_mean_cosine,
                    "min_top10_overlap": settings.min_top10_overlap,
                },
            },
        )
        final, new = publish_folder(staging, out, manifest)
        if not new:
            return final
        log.info(
            "int8 twin %s of %s: %s; %.2f× fp32's images/s, on %s against fp32 on %s (%s); %.0f s → %s",
            manifest.version,
            fp32.version,
            agreement.summary(),
            speedup,
            serving,
            fp32_runtime,
            instructions.describe(),
            time.perf_counter() - started,
            final,
        )
        return final


def serving_choice(
    fp32_folder: str | Path, int8_folder: str | Path, settings: Int8Settings
) -> tuple[Path, str]:
    """Which twin to serve on this machine, and why: the int8 one where it ran at least
    ``settings.min_speedup`` × fp32's images/s when it was made (its manifest's ``speedup``), else fp32 —
    on a CPU without VNNI int8 is no faster, and its numerics are the weaker ones."""
    manifest = read_manifest(int8_folder)
    speedup = manifest.int8_speedup()
    where = manifest.quantization_record("measured_on").get("int8_instructions", "this CPU")
    if speedup is None:
        return Path(int8_folder), "the twin records no speed-up (made before it was measured, or edited)"
    if speedup >= settings.min_speedup:
        return Path(int8_folder), f"int8 ran {speedup:.2f}× fp32's images/s here ({where})"
    return Path(fp32_folder), (
        f"int8 ran only {speedup:.2f}× fp32's images/s here ({where}; RECIPELENS_INT8_MIN_SPEEDUP "
        f"{settings.min_speedup:g}): serving fp32"
    )
