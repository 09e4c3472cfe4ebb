"""onnxruntime execution providers by name, in order of preference: plain data (settings load no runtime)."""

from __future__ import annotations

DEFAULT_PROVIDERS: tuple[str, ...] = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
