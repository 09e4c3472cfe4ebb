"""onnxruntime execution providers by name, in order of preference: plain data (settings load no runtime)."""

from __future__ import annotations

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"  # only in onnxruntime-openvino's build (the `openvino` extra)
CPU = "CPUExecutionProvider"
# Accelerators first, then OpenVINO, CPU last; select_providers keeps those the installed build offers.
DEFAULT_PROVIDERS: tuple[str, ...] = (TENSORRT, CUDA, OPENVINO, CPU)
