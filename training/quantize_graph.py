"""The int8 graph's preparation: BatchNorm folded into convolutions, and the nodes left in float.

Split from :mod:`training.quantize` (which calibrates, measures and publishes): these functions only read
or rewrite an ONNX graph.

* :func:`fold_conv_affine` — tf2onnx's BatchNorm ``Mul`` / ``Add`` after Lite's depthwise convolutions,
  folded into them so one uint8 range per tensor is not shared by channels 100× apart;
* :func:`float_head_nodes` — the stem left in float (why: its docstring, with the measurement);
* :func:`float_tail_nodes` — the output's L2 normalisation left in float.

No TensorFlow here: onnx and numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def fold_conv_affine(model: Any) -> int:
    """Fold per-channel ``Mul`` / ``Add`` constants that follow a Conv into its weights and bias, in place.

    tf2onnx leaves the BatchNorm after Lite's depthwise convolutions as Mul + Add, and onnxruntime's own
    fusions skip them. Quantized unfolded, the Conv's output is one uint8 range shared by channels that
    the BatchNorm scale then sets 100× apart — cosine to fp32 falls to 0.8. Returns the folds made.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    folds = 0
    removed: set[int] = set()
    for conv in list(graph.node):
        if conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float32)
        channels = weight.shape[0]
        bias = (
            numpy_helper.to_array(inits[conv.input[2]]).astype(np.float32)
            if len(conv.input) > 2 and conv.input[2] in inits
            else np.zeros(channels, np.float32)
        )
        changed = False
        while True:
            out = conv.output[0]
            users = consumers.get(out, [])
            if len(users) != 1 or out in graph_outputs or users[0].op_type not in ("Mul", "Add"):
                break
            nxt = users[0]
            others = [name for name in nxt.input if name != out]
            if len(others) != 1 or others[0] not in inits:
                break
            const = numpy_helper.to_array(inits[others[0]]).astype(np.float32)
            if const.size not in (1, channels) or (
                const.size == channels
                and const.ndim > 1
                and const.shape[-3:] != (channels, 1, 1)[-const.ndim :]
            ):
                break
            values = np.broadcast_to(const.reshape(-1), (channels,))
            if nxt.op_type == "Mul":
                weight = weight * values.reshape(-1, *([1] * (weight.ndim - 1)))
                bias = bias * values
            else:
                bias = bias + values
            conv.output[0] = nxt.output[0]
            consumers[nxt.output[0]] = consumers.get(nxt.output[0], [])
            removed.add(id(nxt))
            folds += 1
            changed = True
        if changed:
            w_name, b_name = f"{conv.name}_folded_w", f"{conv.name}_folded_b"
            graph.initializer.extend(
                [
                    numpy_helper.from_array(weight, w_name),
                    numpy_helper.from_array(bias.astype(np.float32), b_name),
                ]
            )
            del conv.input[1:]
            conv.input.extend([w_name, b_name])
    if removed:
        kept = [node for node in graph.node if id(node) not in removed]
        del graph.node[:]
        graph.node.extend(kept)
        used = {name for node in graph.node for name in node.input}
        unused = [init for init in graph.initializer if init.name not in used]
        for init in unused:
            graph.initializer.remove(init)
    return folds


TAIL_START_OPS = frozenset({"Conv", "MatMul", "Gemm", "GlobalAveragePool"})


def float_tail_nodes(model_path: Path) -> list[str]:
    """Names of the nodes after the last Conv / MatMul / Gemm / pooling: the output normalisation.

    Quantized, its squares and reciprocal lose most of their precision for nothing: it is a handful of
    operations on one vector per photo.
    """
    import onnx

    nodes = list(onnx.load(str(model_path), load_external_data=False).graph.node)
    last = max((i for i, node in enumerate(nodes) if node.op_type in TAIL_START_OPS), default=len(nodes))
    return [node.name for node in nodes[last + 1 :]]


ACTIVATIONS = frozenset({"Clip", "Relu"})


def float_head_nodes(model_path: Path, convs: int) -> list[str]:
    """Names of the nodes up to the ``convs``-th Conv and its activation; never all of a model's convolutions.

    For Lite0, three: the stem on raw pixels, the first block's depthwise convolution and its projection,
    all at 112 × 112. The stem's 32 ReLU6 channels mix colour levels (mean ≈ 3 of 6) with edge responses
    that stay under 0.5 on low-contrast texture; one uint8 range per tensor gives those edges 7–20 levels,
    and photos of grass or gravel lost what tells them apart from food (cosine to fp32 0.89–0.96, against
    0.99 for food; their match verdict flipped from "none"). Left in float (about 5 % of the multiply-adds,
    14–18 % more CPU per photo on OpenVINO), the demo twin's non-food "none" rate is 0.5–1.0 points below
    fp32's instead of 4.4 (README, "int8 twins").
    """
    import onnx

    nodes = list(onnx.load(str(model_path), load_external_data=False).graph.node)
    conv_at = [i for i, node in enumerate(nodes) if node.op_type == "Conv"]
    count = min(convs, len(conv_at) - 1)
    if count <= 0:
        return []
    last = conv_at[count - 1]
    while last + 1 < len(nodes) and nodes[last + 1].op_type in ACTIVATIONS:
        last += 1
    return [node.name for node in nodes[: last + 1]]
