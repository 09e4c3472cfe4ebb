"""The int8 graph's preparation: BatchNorm folded into convolutions, and the nodes left in float.

Split from :mod:`training.quantize` (which calibrates, measures and publishes): these functions only read
or rewrite an ONNX graph.

* :func:`fold_conv_affine` — tf2onnx's BatchNorm ``Mul`` / ``Add`` after Lite's depthwise convolutions,
  folded into them so one uint8 range per tensor is not shared by channels 100× apart;
* :func:`fold_pad_into_conv` — tf2onnx's zero ``Pad`` before strided convolutions moved into their
  ``pads`` (onnxruntime's CPU provider does this itself; between Q/DQ nodes nothing does);
* :func:`float_head_nodes` — the stem's output and the first block left in float (why: its docstring,
  with the measurement); :func:`stem_nodes` and :func:`drop_qdq` — the stem convolution itself on int8;
* :func:`float_tail_nodes` — the output's L2 normalisation left in float.

No TensorFlow here: onnx and numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _index(graph: Any) -> tuple[dict[str, Any], dict[str, list[Any]], set[str]]:
    """A graph's initializers by name, each tensor's reading nodes, and its output names."""
    inits = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return inits, consumers, {o.name for o in graph.output}


def _keep_nodes(graph: Any, kept: Sequence[Any]) -> None:
    """Make ``kept`` the graph's nodes, in that order, and drop the initializers no node reads any more."""
    nodes = list(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)


def fold_conv_affine(model: Any) -> int:
    """Fold per-channel ``Mul`` / ``Add`` constants that follow a Conv into its weights and bias, in place.

    tf2onnx leaves the BatchNorm after Lite's depthwise convolutions as Mul + Add, and onnxruntime's own
    fusions skip them. Quantized unfolded, the Conv's output is one uint8 range shared by channels that
    the BatchNorm scale then sets 100× apart — cosine to fp32 falls to 0.8. Returns the folds made.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits, consumers, graph_outputs = _index(graph)
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
        _keep_nodes(graph, [node for node in graph.node if id(node) not in removed])
    return folds


def _attribute(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def fold_pad_into_conv(model: Any) -> int:
    """Fold constant-zero ``Pad`` nodes of the spatial axes into the one Conv that reads each, in place.

    tf2onnx writes TensorFlow's asymmetric "SAME" padding of Lite's strided depthwise convolutions as a
    Pad before the Conv. In the int8 graph it sits between quantization nodes, where no runtime fuses it:
    OpenVINO runs it with its reference kernel, about 5 % of the int8 model's time. A Conv's own ``pads``
    (begin and end per spatial axis) pad with zeros the same way, so the fold is exact. Returns the folds.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits, consumers, graph_outputs = _index(graph)
    removed: set[str] = set()
    for pad in list(graph.node):
        if pad.op_type != "Pad" or len(pad.input) < 2 or pad.input[1] not in inits:
            continue
        if _attribute(pad, "mode", b"constant") not in (b"constant", "constant"):
            continue
        value = pad.input[2] if len(pad.input) > 2 else ""
        if value and (value not in inits or np.any(numpy_helper.to_array(inits[value]) != 0)):
            continue
        if len(pad.input) > 3 and pad.input[3]:
            continue  # padding chosen axes: not of the form we fold
        users = consumers.get(pad.output[0], [])
        if pad.output[0] in graph_outputs or len(users) != 1 or users[0].op_type != "Conv":
            continue
        conv = users[0]
        if conv.input[0] != pad.output[0]:
            continue
        if _attribute(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        amounts = numpy_helper.to_array(inits[pad.input[1]]).astype(np.int64).reshape(-1)
        rank = len(amounts) // 2
        begin, end = amounts[:rank], amounts[rank:]
        if rank < 3 or np.any(amounts < 0) or np.any(begin[:2] != 0) or np.any(end[:2] != 0):
            continue
        spatial = rank - 2
        current = list(_attribute(conv, "pads", [0] * (2 * spatial)))
        merged = [int(current[i] + begin[2 + i]) for i in range(spatial)] + [
            int(current[spatial + i] + end[2 + i]) for i in range(spatial)
        ]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend([*kept, helper.make_attribute("pads", merged)])
        conv.input[0] = pad.input[0]
        removed.add(pad.output[0])
    if removed:
        _keep_nodes(graph, [node for node in graph.node if node.output[0] not in removed])
    return len(removed)


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


def stem_nodes(model_path: Path) -> tuple[list[str], list[str]]:
    """The nodes up to and including the first Conv (the stem), and the tensor that Conv writes.

    :func:`float_head_nodes` leaves the stem in float for what its output needs; the stem convolution
    itself can still run on int8, because its input — pixels shifted by 127 — is exact in uint8 (scale 1
    when the calibration photos span 0…255, as photos do). Quantizing these nodes and then removing the
    quantization of the Conv's output (:func:`drop_qdq`) gives an int8 convolution that writes float.
    """
    import onnx

    nodes = list(onnx.load(str(model_path), load_external_data=False).graph.node)
    first = next((i for i, node in enumerate(nodes) if node.op_type == "Conv"), None)
    if first is None:
        return [], []
    return [node.name for node in nodes[: first + 1]], [nodes[first].output[0]]


def drop_qdq(model: Any, tensors: Sequence[str]) -> list[str]:
    """Remove the QuantizeLinear → DequantizeLinear pairs on ``tensors``, in place: they stay in float.

    The DequantizeLinear's readers read the tensor itself. Returns the tensors that had a pair.
    """
    graph = model.graph
    wanted = set(tensors)
    quantize = {
        node.output[0]: node.input[0]
        for node in graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] in wanted
    }
    replaced: dict[str, str] = {}
    dropped: set[str] = set(quantize)
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in quantize:
            replaced[node.output[0]] = quantize[node.input[0]]
            dropped.add(node.output[0])
    kept = [node for node in graph.node if node.output[0] not in dropped]
    for node in kept:
        for index, name in enumerate(node.input):
            if name in replaced:
                node.input[index] = replaced[name]
    _keep_nodes(graph, kept)
    return sorted(set(quantize.values()))


def float_head_nodes(model_path: Path, convs: int) -> list[str]:
    """Names of the nodes up to the ``convs``-th Conv and its activation; never all of a model's convolutions.

    For Lite0, three: the stem on raw pixels, the first block's depthwise convolution and its projection,
    all at 112 × 112. The stem's 32 ReLU6 channels mix colour levels (mean ≈ 3 of 6) with edge responses
    that stay under 0.5 on low-contrast texture; one uint8 range per tensor gives those edges 7–20 levels,
    and photos of grass or gravel lost what tells them apart from food (cosine to fp32 0.89–0.96, against
    0.99 for food; their match verdict flipped from "none": non-food "none" 4.4 points below fp32).

    What each part costs and keeps (demo Lite0 on OpenVINO, batch 32, one run side by side; mean cosine
    to fp32 on scikit-image's real photos): all quantized 738 img/s, 0.977; these three convolutions in
    float 542, 0.992; the same with the stem convolution on int8 writing float (:func:`stem_nodes`, the
    default) 642, 0.991; with the projection quantized too 688, 0.988 (non-food "none" 2.0 points below
    fp32 — at the twin goal's bound).
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
