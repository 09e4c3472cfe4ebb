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
# What the default order means for an fp32 model: OpenVINO left out, so that on the `openvino` build fp32
# runs on onnxruntime's own CPU provider — what the `cpu` extra runs — and that build is never the slower
# one for fp32. Measured with bench/embed.py at batch 32: OpenVINO's fp32 148 against 163 img/s on the AMD
# Zen 4 kind, 122 against 141 on the Intel Xeon, about equal on Zen 5. An int8 twin keeps OpenVINO first:
# that is where its export measured its speed-up. A provider list that is named keeps its order.
FP32_DEFAULT_PROVIDERS: tuple[str, ...] = tuple(p for p in DEFAULT_PROVIDERS if p != OPENVINO)


def default_order_for(numerics: str, providers: Sequence[str]) -> tuple[str, ...]:
    """``providers`` as a model of ``numerics`` uses them: the default order for fp32 is
    :data:`FP32_DEFAULT_PROVIDERS`; any other list (or numerics) is kept as it is."""
    if numerics == "fp32" and tuple(providers) == DEFAULT_PROVIDERS:
        return FP32_DEFAULT_PROVIDERS
    return tuple(providers)


class RuntimeOptions(TypedDict, total=False):
    """:class:`embedder.runtime.EmbeddingModel`'s keywords for how onnxruntime runs it, as the loaders and
    the services' settings (:meth:`embedder.settings.EmbeddingSettings.runtime_options`) pass them on."""

    providers: Sequence[str]
    intra_op_threads: int
    spinning: bool
