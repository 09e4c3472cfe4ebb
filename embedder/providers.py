"""onnxruntime execution providers by name, in order of preference, and the keywords for how a model runs:
plain data (settings load no runtime)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"  # only in onnxruntime-openvino's build (the `openvino` extra)
CPU = "CPUExecutionProvider"
# Accelerators first, then OpenVINO, CPU last; select_providers keeps those the installed build offers.
DEFAULT_PROVIDERS: tuple[str, ...] = (TENSORRT, CUDA, OPENVINO, CPU)


class RuntimeOptions(TypedDict, total=False):
    """:class:`embedder.runtime.EmbeddingModel`'s keywords for how onnxruntime runs it, as the loaders and
    the services' settings (:meth:`embedder.settings.EmbeddingSettings.runtime_options`) pass them on."""

    providers: Sequence[str]
    intra_op_threads: int
    spinning: bool
