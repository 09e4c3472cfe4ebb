"""One ONNX model folder loaded into an onnxruntime session."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from embedder.cpus import EXACT, SATURATING, available_cpus, int8_instructions, native_bf16
from embedder.manifest import (
    GALLERY_SIZES_KEY,
    MODEL_FILE,
    ModelIntegrityError,
    ModelManifest,
    gallery_metadata,
    read_manifest,
)
from embedder.preprocess import DEFAULT_MAX_PIXELS, preprocess
from embedder.providers import CPU, DEFAULT_PROVIDERS, OPENVINO, TENSORRT, default_order_for

log = logging.getLogger(__name__)

# onnxruntime's session option: stop the intra-op threads' spinning once a run ends.
STOP_SPINNING = "session.force_spinning_stop"


class Int8CpuMismatchError(ModelIntegrityError):
    """An int8 model on a CPU whose int8 products are not of the kind its agreement was measured with."""


def check_int8_cpu(manifest: ModelManifest, folder: Path) -> str:
    """Refuse an int8 model whose agreement to fp32 was measured on a CPU with the other kind of int8
    products (:class:`embedder.cpus.Int8Instructions`): the same file computes other vectors there — on a
    CPU without VNNI they saturate — so neither its recorded agreement nor an index it filled elsewhere
    holds. Returns this CPU's int8 instructions in words (empty for fp32 models); a model whose manifest
    does not say where it was measured (made before this was recorded) loads, and the log says so."""
    if manifest.numerics != "int8":
        return ""
    here = int8_instructions()
    measured = manifest.quantization_record("measured_on")
    kind = measured.get("int8_products")
    if kind in (EXACT, SATURATING) and here.kind in (EXACT, SATURATING) and kind != here.kind:
        fp32 = manifest.source.get("fp32_version", "its fp32 twin")
        raise Int8CpuMismatchError(
            f"{folder}: int8 model {manifest.version} was checked against fp32 on a CPU with {kind} int8 "
            f"products ({measured.get('int8_instructions', '?')}, {measured.get('cpu', '?')}); this CPU's "
            f"are {here.kind} ({here.name}), where the same file computes other vectors. Make the twin "
            f"on a machine like this one (recipelens-model int8) or serve fp32 {fp32}"
        )
    if kind is None:
        log.warning(
            "%s: int8 model %s does not record the CPU its agreement was measured on; this one has %s",
            folder,
            manifest.version,
            here.describe(),
        )
    return here.describe()


def input_dtype(session: ort.InferenceSession) -> type[np.generic]:
    """What the graph's one input takes: uint8 pixels (exports since the input cast moved into the graph)
    or float32 (earlier exports, and training's own conversions)."""
    return np.uint8 if session.get_inputs()[0].type == "tensor(uint8)" else np.float32


def select_providers(preferred: Sequence[str], available: Sequence[str] | None = None) -> list[str]:
    """Keep the preferred providers that this onnxruntime build offers, in order; CPU is always last."""
    offered = list(ort.get_available_providers() if available is None else available)
    chosen = [p for p in preferred if p in offered]
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def cpu_runtimes() -> list[str]:
    """The CPU runtimes this onnxruntime build offers, in the order serving prefers them: OpenVINO (where
    installed), then onnxruntime's own CPU provider. An int8 twin must agree with fp32 on each, and the
    benches run fp32 on each."""
    return select_providers([OPENVINO, CPU])


def provider_options(
    provider: str, *, numerics: str = "fp32", threads: int = 0, float_parts: str = "fp32"
) -> dict[str, str]:
    """Options for one execution provider, by the model's numerics (``fp32`` or ``int8``).

    TensorRT builds fp16 engines from fp32 models and int8 engines from QDQ models (their scales are in
    the graph), cached next to nothing else; OpenVINO runs on the CPU device with ``threads`` streams'
    worth of threads: an fp32 model in fp32, an int8 QDQ graph as int8 kernels with its float parts (the
    layers left out of quantization, pooling, the head) in ``float_parts`` — ``fp32``, or ``bf16`` where
    the twin's export measured them faster so on a CPU with bf16 arithmetic (:func:`int8_float_parts`).
    """
    if provider == TENSORRT:
        return {
            "trt_fp16_enable": "True",
            "trt_int8_enable": "True" if numerics == "int8" else "False",
            "trt_engine_cache_enable": "True",
        }
    if provider == OPENVINO:
        options = {"device_type": "CPU", "precision": "ACCURACY" if numerics == "int8" else "FP32"}
        if numerics == "int8" and float_parts == "bf16":
            del options["precision"]  # its ACCURACY would pin the float parts to fp32
            options["load_config"] = json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}})
        if threads > 0:
            options["num_of_threads"] = str(threads)
        return options
    return {}


def int8_float_parts(manifest: ModelManifest) -> str:
    """What OpenVINO runs an int8 model's float parts in here: ``bf16`` where its export was asked to try
    them so and measured them faster (``measured_on.int8_float_parts``, ``RECIPELENS_INT8_BF16_FLOAT_PARTS``)
    and this CPU has bf16 arithmetic (AVX512-BF16, AMX-BF16: elsewhere bf16 is emulated, and slower), else
    ``fp32``. On a Zen 4 with the demo's twin: 394 / 475 against 343 / 362 img/s at batch 8 / 32,
    strong-query R@1 int8 − fp32 +0.6 against +0.8 points, but the verdict's non-food rate −2.5 against
    −1.0 points of fp32's (goal: within 2) — hence opt-in (README, "int8 twins")."""
    if manifest.numerics != "int8":
        return "fp32"
    recorded = manifest.quantization_record("measured_on").get("int8_float_parts")
    return "bf16" if recorded == "bf16" and native_bf16() else "fp32"


class EmbeddingModel:
    """An exported embedding model: ``(N, H, W, 3)`` uint8 RGB → ``(N, D)`` float32 unit vectors.

    ``providers`` in order of preference (those the build lacks skipped, CPU always last); the default
    order runs fp32 models without OpenVINO (:data:`embedder.providers.FP32_DEFAULT_PROVIDERS`), int8 twins
    with it first.
    ``intra_op_threads`` 0 means one per CPU this process may use (:func:`embedder.cpus.available_cpus`:
    its affinity and its container's CPU quota), never onnxruntime's own default; OpenVINO gets a thread
    count only when one is given. ``spinning`` lets onnxruntime's threads go on spin-waiting between
    runs (as onnxruntime does by default): back-to-back runs start a little sooner on cores that nothing
    else needs, and everything else on those cores loses the time. Off, they still spin within a run.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
        intra_op_threads: int = 0,
        spinning: bool = False,
        verify: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.manifest: ModelManifest = read_manifest(self.folder, verify=verify)
        # What callers read of the manifest, fixed for the model's life (a changed folder is a new model).
        self.version: str = self.manifest.version
        self.numerics: str = self.manifest.numerics
        self.dimension: int = self.manifest.embedding_dim
        self.image_size: int = self.manifest.input.image_size
        # Sizes catalogue photos are embedded at (``embed_arrays`` takes batches of any of them).
        self.gallery_views: tuple[int, ...] = self.manifest.gallery_views
        self.int8_instructions = check_int8_cpu(self.manifest, self.folder)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Always a number: left at 0, onnxruntime counts physical cores (not a container's CPU quota) and
        # pins its threads one per core, so a pinned thread waits whenever its core decodes or answers
        # gRPC (the README's Configuration: bench/search.py's 16 clients, pinned against not).
        self.intra_op_threads: int = intra_op_threads or available_cpus()
        options.intra_op_num_threads = self.intra_op_threads
        if not spinning:
            # Threads spin within a run (between its kernels), then sleep: left spinning after the run,
            # they take the very cores that decode the next photos and answer gRPC (bench/embed.py here:
            # batch-1 p50 through the embedder 12.5 → 9.5 ms).
            options.add_session_config_entry(STOP_SPINNING, "1")
        numerics = self.numerics
        chosen = select_providers(default_order_for(numerics, providers))
        if OPENVINO in select_providers(providers) and OPENVINO not in chosen:
            log.info(
                "%s: fp32 model %s on onnxruntime's CPU provider, as the default provider order runs fp32 "
                "(the cpu extra's runtime, never the slower one; OpenVINO runs int8 twins); name "
                "OpenVINOExecutionProvider in the providers setting to run fp32 there",
                self.folder,
                self.version,
            )
        float_parts = int8_float_parts(self.manifest)
        self.session = ort.InferenceSession(
            str(self.folder / MODEL_FILE),
            sess_options=options,
            providers=[
                (p, provider_options(p, numerics=numerics, threads=intra_op_threads, float_parts=float_parts))
                for p in chosen
            ],
        )
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(
                f"{self.folder}: the ONNX graph must have exactly one input, found {len(inputs)}"
            )
        self.input_name: str = inputs[0].name
        self.input_dtype = input_dtype(self.session)
        self._check_gallery_metadata()
        self.provider: str = self.session.get_providers()[0]
        measured_runtimes = self.manifest.quantization_record("agreement_by_runtime")
        if measured_runtimes and self.provider not in measured_runtimes:
            log.warning(
                "%s: int8 model %s runs on %s here, but its agreement to fp32 was measured on %s only",
                self.folder,
                self.version,
                self.provider,
                ", ".join(measured_runtimes),
            )
        # What runs, in words: ``int8 on OpenVINOExecutionProvider`` (+ where its float parts run in bf16).
        self.float_parts = float_parts if self.provider == OPENVINO else "fp32"
        bf16 = " (float parts in bf16)" if self.float_parts == "bf16" else ""
        self.runs_on = f"{numerics} on {self.provider}{bf16}"
        measured = self.manifest.quantization_record("measured_on").get("int8_float_parts")
        if measured == "bf16" and self.provider == OPENVINO and self.float_parts != "bf16":
            log.warning(
                "%s: int8 model %s was measured with its float parts in bf16, which this CPU lacks: they "
                "run in fp32 here (vectors differ a little from the exporting machine's)",
                self.folder,
                self.version,
            )
        threads = (
            "OpenVINO's own thread count"
            if self.provider == OPENVINO and not intra_op_threads
            else f"{self.intra_op_threads} threads"
        )
        log.info(
            "loaded model %s (%s, %s-D, %s, queries at %d px, gallery at %s px) from %s on %s, %s",
            self.version,
            self.manifest.backbone,
            self.dimension,
            f"{numerics} on {self.int8_instructions}" if self.int8_instructions else numerics,
            self.image_size,
            "+".join(map(str, self.gallery_views)),
            self.folder,
            self.provider,
            threads,
        )

    def _check_gallery_metadata(self) -> None:
        """The manifest's gallery sizes must be the graph's own (its metadata), which the version covers."""
        recorded = self.session.get_modelmeta().custom_metadata_map.get(GALLERY_SIZES_KEY, "")
        expected = gallery_metadata(self.gallery_views)
        if recorded != expected:
            raise ModelIntegrityError(
                f"{self.folder}: the manifest's gallery sizes ({expected or 'none'}) are not the ones "
                f"recorded in {MODEL_FILE} ({recorded or 'none'}); the manifest was edited"
            )

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """``(N, S, S, 3)`` uint8 (or float 0..255) → ``(N, D)`` float32, re-normalised to unit length.

        ``S`` is the model's size or, for gallery photos, one of its other ``gallery_views``. A graph with a
        uint8 input gets uint8 batches as they are (floats rounded and clipped to 0..255); a float32 one,
        the batch as float32.
        """
        if batch.ndim != 4 or batch.shape[3] != 3 or batch.shape[1] != batch.shape[2]:
            raise ValueError(f"expected a (N, S, S, 3) batch, got {tuple(batch.shape)}")
        if batch.shape[1] not in self.gallery_views:
            sizes = " or ".join(map(str, self.gallery_views))
            raise ValueError(f"expected a (N, S, S, 3) batch with S = {sizes}, got {tuple(batch.shape)}")
        if len(batch) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.input_dtype is np.uint8 and batch.dtype != np.uint8:
            batch = np.clip(np.rint(batch), 0, 255)
        (out,) = self.session.run(None, {self.input_name: batch.astype(self.input_dtype, copy=False)})
        vectors = np.asarray(out, dtype=np.float32).reshape(len(batch), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def embed_images(self, images: Sequence[bytes], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Encoded image files → ``(N, D)`` vectors; raises ``ImageDecodeError`` on the first bad one."""
        arrays = [preprocess(data, size=self.image_size, max_pixels=max_pixels) for data in images]
        if not arrays:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self.embed_arrays(np.stack(arrays))
