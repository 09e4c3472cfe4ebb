"""A tiny but real ONNX embedding model for fast service tests (no TensorFlow needed).

Graph: NHWC float 0..255 → NCHW → 28×28 average pool (an 8×8 colour layout) → fixed random projection
→ L2 normalisation. Same input/output contract as an exported EfficientNet model folder.

With ``gallery_sizes`` the graph takes any height and width of at least 224 (it pools the top-left
224 × 224 pixels: a larger view is a zoomed-in one) and records the sizes in its metadata, as an export
with gallery sizes does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from embedder.manifest import GALLERY_SIZES_KEY, MODEL_FILE, gallery_metadata, write_manifest


def write_tiny_model(
    folder: Path, *, dim: int = 64, seed: int = 0, name: str = "tiny", gallery_sizes: Sequence[int] = ()
) -> str:
    """Write a model folder; return its version. Different seeds give different versions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((192, dim)).astype(np.float32)
    centre = np.full((1, 192), 0.5, dtype=np.float32)
    free = len(gallery_sizes) > 1
    crop = [helper.make_node("Slice", ["nchw_any", "zeros", "side", "hw_axes"], ["nchw"])]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw_any" if free else "nchw"], perm=[0, 3, 1, 2]),
        *(crop if free else []),
        helper.make_node("Div", ["nchw", "scale"], ["scaled"]),
        helper.make_node("AveragePool", ["scaled"], ["pooled"], kernel_shape=[28, 28], strides=[28, 28]),
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"]),
        helper.make_node("Sub", ["flat", "centre"], ["centred"]),
        helper.make_node("MatMul", ["centred", "proj"], ["raw"]),
        helper.make_node("LpNormalization", ["raw"], ["embedding"], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [
            helper.make_tensor_value_info(
                "image",
                TensorProto.FLOAT,
                ["batch", "height", "width", 3] if free else ["batch", 224, 224, 3],
            )
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        initializer=[
            numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
            numpy_helper.from_array(np.array([-1, 192], dtype=np.int64), "flat_shape"),
            numpy_helper.from_array(centre, "centre"),
            numpy_helper.from_array(proj, "proj"),
            *(
                [
                    numpy_helper.from_array(np.array([0, 0], dtype=np.int64), "zeros"),
                    numpy_helper.from_array(np.array([224, 224], dtype=np.int64), "side"),
                    numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "hw_axes"),
                ]
                if free
                else []
            ),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if free:
        onnx.helper.set_model_props(model, {GALLERY_SIZES_KEY: gallery_metadata(tuple(gallery_sizes))})
    onnx.checker.check_model(model)
    (folder / MODEL_FILE).write_bytes(model.SerializeToString())
    manifest = write_manifest(
        folder,
        name=name,
        backbone="tiny-colour-layout",
        embedding_dim=dim,
        source={"seed": seed, "kind": "test model"},
        gallery_sizes=list(gallery_sizes) if free else [],
    )
    json.loads((folder / "manifest.json").read_text())
    return manifest.version
