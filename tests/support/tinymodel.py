"""A tiny but real ONNX embedding model for fast service tests (no TensorFlow needed).

Graph: NHWC float 0..255 → NCHW → 28×28 average pool (an 8×8 colour layout) → fixed random projection
→ L2 normalisation. Same input/output contract as an exported EfficientNet model folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from embedder.manifest import MODEL_FILE, write_manifest


def write_tiny_model(folder: Path, *, dim: int = 64, seed: int = 0, name: str = "tiny") -> str:
    """Write a model folder; return its version. Different seeds give different versions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((192, dim)).astype(np.float32)
    centre = np.full((1, 192), 0.5, dtype=np.float32)
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
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
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 224, 224, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        initializer=[
            numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
            numpy_helper.from_array(np.array([-1, 192], dtype=np.int64), "flat_shape"),
            numpy_helper.from_array(centre, "centre"),
            numpy_helper.from_array(proj, "proj"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (folder / MODEL_FILE).write_bytes(model.SerializeToString())
    manifest = write_manifest(
        folder,
        name=name,
        backbone="tiny-colour-layout",
        embedding_dim=dim,
        source={"seed": seed, "kind": "test model"},
    )
    json.loads((folder / "manifest.json").read_text())
    return manifest.version
