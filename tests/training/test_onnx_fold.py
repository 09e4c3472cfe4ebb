"""Folding the stem's input scaling into the first Conv: same outputs, fewer passes, others untouched."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from training.onnx_fold import fold_input_scaling, uint8_input

RNG = np.random.default_rng(7)


Ops = list[tuple[str, np.ndarray, bool]]  # (op type, constant, constant is the first operand)


def _stem(ops: Ops, *, pads: tuple[int, ...] = (0, 0, 1, 1), share_weight: bool = False) -> onnx.ModelProto:
    """``image`` (N, 8, 8, 3) → ops → Transpose → Conv(3→4, 3×3, stride 2) → Relu."""
    inits = [
        numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(RNG.normal(size=(4,)).astype(np.float32), "b"),
    ]
    nodes = []
    tensor = "image"
    for index, (op, value, constant_first) in enumerate(ops):
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"k{index}"))
        operands = [f"k{index}", tensor] if constant_first else [tensor, f"k{index}"]
        nodes.append(helper.make_node(op, operands, [f"s{index}"]))
        tensor = f"s{index}"
    nodes.append(helper.make_node("Transpose", [tensor], ["nchw"], perm=[0, 3, 1, 2]))
    nodes.append(helper.make_node("Conv", ["nchw", "w", "b"], ["c"], strides=[2, 2], pads=list(pads)))
    outputs = ["c"]
    if share_weight:
        nodes.append(helper.make_node("Conv", ["nchw", "w"], ["c2"], pads=[1, 1, 1, 1]))
        outputs.append("c2")
    nodes.append(helper.make_node("Relu", ["c"], ["out"]))
    graph = helper.make_graph(
        nodes,
        "stem",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 8, 8, 3])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, list("nchw"))
            for name in ("out", *outputs[1:])
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, batch: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, {"image": batch})]


def _batch() -> np.ndarray:
    return RNG.integers(0, 256, size=(3, 8, 8, 3)).astype(np.float32)


LITE0 = [  # Keras' Rescaling(1/255) → Normalization, as tf2onnx writes it for Lite0's (x - 127) / 128
    ("Mul", np.array(1 / 255), False),
    ("Add", np.full((1, 1, 1, 3), -127 / 255), False),
    ("Mul", np.full((1, 1, 1, 3), 255 / 128), False),
]
IMAGENET = [  # per-channel mean / std, written as Sub and Div, constant-first Mul
    ("Mul", np.array(1 / 255), True),
    ("Sub", np.array([0.485, 0.456, 0.406]), False),
    ("Div", np.array([[[[0.229, 0.224, 0.225]]]]), False),
]


@pytest.mark.parametrize(
    ("ops", "pads"),
    [(LITE0, (0, 0, 1, 1)), (IMAGENET, (1, 1, 1, 1)), (IMAGENET, (0, 0, 0, 0))],
    ids=["lite0-asymmetric-pads", "imagenet-same-pads", "imagenet-no-pads"],
)
def test_folded_stem_gives_the_same_outputs_with_one_add(ops: Ops, pads: tuple[int, ...]) -> None:
    model = _stem(ops, pads=pads)
    batch = _batch()
    (want,) = _run(model, batch)
    assert fold_input_scaling(model, "image")
    onnx.checker.check_model(model)
    assert [node.op_type for node in model.graph.node] == ["Transpose", "Add", "Conv", "Relu"]
    assert {init.name for init in model.graph.initializer} == {"w", "b", "image_shift"}
    (got,) = _run(model, batch)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_a_pure_scale_leaves_no_element_wise_pass() -> None:
    model = _stem([("Mul", np.array(1 / 255), False), ("Div", np.array(2.0), False)])
    batch = _batch()
    (want,) = _run(model, batch)
    assert fold_input_scaling(model, "image")
    assert [node.op_type for node in model.graph.node] == ["Transpose", "Conv", "Relu"]
    (got,) = _run(model, batch)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("ops", "share_weight"),
    [
        ([("Sub", np.array(127.0), True)], False),  # 127 - x: not a scaling of x we fold
        ([("Mul", np.zeros(3), False)], False),  # a zero scale cannot move into the weights
        ([("Mul", np.ones((2, 1, 1, 3)), False)], False),  # broadcasts over more than the channels
        ([], False),  # nothing to fold
        (LITE0, True),  # the weights also serve another Conv
    ],
    ids=["constant-minus-x", "zero-scale", "not-per-channel", "no-scaling", "shared-weights"],
)
def test_other_graphs_are_left_exactly_as_they_were(ops: Ops, share_weight: bool) -> None:
    model = _stem(ops, share_weight=share_weight)
    before = model.SerializeToString()
    assert not fold_input_scaling(model, "image")
    assert model.SerializeToString() == before


@pytest.mark.parametrize("ops", [LITE0, []], ids=["at-the-input", "after-the-transpose"])
def test_uint8_input_casts_inside_and_gives_the_same_outputs(ops: Ops) -> None:
    model = _stem(ops)
    batch = _batch()
    before = _run(model, batch)
    uint8_input(model, "image")
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    kinds = [node.op_type for node in model.graph.node]
    # the cast follows the input's one reader when that is the NHWC → NCHW transpose
    assert kinds.index("Cast") == (1 if not ops else 0)
    got = _run(model, batch.astype(np.uint8))
    np.testing.assert_array_equal(got[0], before[0])  # exact: every uint8 value is a float32


def test_uint8_input_refuses_an_input_that_is_not_float() -> None:
    model = _stem([])
    uint8_input(model, "image")
    with pytest.raises(ValueError, match="not float32"):
        uint8_input(model, "image")
