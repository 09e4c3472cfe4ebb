"""int8 twins: the BatchNorm fold, the catalogue sample, calibration, the agreement bound, the folder and CLI.

The model is a small real conv net in the exported graph's shape (NHWC input, Conv → Mul → Add → Clip as
tf2onnx leaves Lite's depthwise blocks, pooling, the L2 tail), so onnxruntime really quantizes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from embedder.cpus import cpu_name, int8_instructions, native_bf16
from embedder.manifest import MODEL_FILE, read_manifest, write_manifest
from embedder.providers import CPU, OPENVINO
from embedder.runtime import EmbeddingModel
from tests.support.tinymodel import write_tiny_model
from tests.training.triplet_catalog import CATEGORIES, write_catalog
from training import model_cli as cli
from training.quantize import (
    Int8Settings,
    QuantizationRefusedError,
    cpu_runtimes,
    quantize_model,
    sample_photos,
    serving_choice,
)
from training.quantize_graph import (
    drop_qdq,
    float_head_nodes,
    fold_conv_affine,
    fold_pad_into_conv,
    stem_nodes,
)

SMALL = {"calibration_photos": 8, "evaluation_photos": 16}


def conv_graph(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    c = 16
    consts = {
        "w": rng.standard_normal((c, 3, 8, 8)).astype(np.float32) / 400,
        "b": rng.standard_normal(c).astype(np.float32) * 0.1,
        "bn_scale": np.exp(rng.uniform(-2.5, 2.5, (1, c, 1, 1))).astype(np.float32),  # channels 100× apart
        "bn_shift": rng.standard_normal((1, c, 1, 1)).astype(np.float32),
        "w2": rng.standard_normal((32, c, 1, 1)).astype(np.float32) / 4,
        "lo": np.array(0, np.float32),
        "hi": np.array(6, np.float32),
        "axes": np.array([1], np.int64),
        "eps": np.array(1e-12, np.float32),
    }
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w", "b"], ["c1"], strides=[8, 8]),
        helper.make_node("Mul", ["c1", "bn_scale"], ["m1"]),
        helper.make_node("Add", ["m1", "bn_shift"], ["a1"]),
        helper.make_node("Clip", ["a1", "lo", "hi"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"]),
        helper.make_node("GlobalAveragePool", ["c2"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Mul", ["flat", "flat"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axes"], ["ss"], keepdims=1),
        helper.make_node("Max", ["ss", "eps"], ["ssm"]),
        helper.make_node("Sqrt", ["ssm"], ["norm"]),
        helper.make_node("Reciprocal", ["norm"], ["inv"]),
        helper.make_node("Mul", ["flat", "inv"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 224, 224, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 32])],
        initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "conv-raw"
    folder.mkdir()
    onnx.save(conv_graph(), str(folder / MODEL_FILE))
    write_manifest(folder, name="conv-raw", backbone="test-conv", embedding_dim=32)
    return folder


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_catalog(tmp_path_factory.mktemp("catalog"), recipes=40)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"image": x})[0])


def test_fold_moves_the_batchnorm_into_the_conv_and_keeps_the_outputs() -> None:
    model = conv_graph()
    x = np.random.default_rng(1).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    before = _run(model, x)
    assert fold_conv_affine(model) == 2
    assert [n.op_type for n in model.graph.node][:4] == ["Transpose", "Conv", "Clip", "Conv"]
    np.testing.assert_allclose(_run(model, x), before, atol=1e-5)


def _pad_conv(pads: list[int], value: float | None = 0.0, readers: int = 1) -> onnx.ModelProto:
    """``image`` NHWC → Transpose → Pad → strided depthwise Conv (→ a second reader of the Pad)."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((3, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(pads, np.int64), "pads"),
    ]
    pad_inputs = ["nchw", "pads"]
    if value is not None:
        inits.append(numpy_helper.from_array(np.array(value, np.float32), "value"))
        pad_inputs.append("value")
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Pad", pad_inputs, ["padded"]),
        helper.make_node("Conv", ["padded", "w"], ["out"], strides=[2, 2], group=3),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    if readers == 2:
        nodes.append(helper.make_node("Relu", ["padded"], ["other"]))
        outputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, None))
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [2, 9, 9, 3])
    graph = helper.make_graph(nodes, "pad", [image], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("pads", [[0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 0, 0, 2, 2]], ids=["end", "both"])
def test_a_zero_pad_moves_into_the_conv_with_the_same_outputs(pads: list[int]) -> None:
    model = _pad_conv(pads)
    x = np.random.default_rng(4).uniform(0, 255, (2, 9, 9, 3)).astype(np.float32)
    before = _run(model, x)
    assert fold_pad_into_conv(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Transpose", "Conv"]
    assert "pads" not in {init.name for init in model.graph.initializer}  # its amounts went with it
    np.testing.assert_allclose(_run(model, x), before, atol=1e-5)


@pytest.mark.parametrize(
    ("pads", "value", "readers"),
    [
        ([0, 0, 0, 0, 0, 0, 1, 1], 1.0, 1),
        ([0, 1, 0, 0, 0, 0, 1, 1], 0.0, 1),
        ([0, 0, 0, 0, 0, 0, 1, 1], None, 2),
    ],
    ids=["non-zero-value", "channel-axis", "two-readers"],
)
def test_other_pads_stay_where_they_are(pads: list[int], value: float | None, readers: int) -> None:
    model = _pad_conv(pads, value, readers)
    before = model.SerializeToString()
    assert fold_pad_into_conv(model) == 0
    assert model.SerializeToString() == before


def test_drop_qdq_leaves_a_tensor_in_float_and_its_readers_read_it() -> None:
    q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"])
    dq = helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])
    relu = helper.make_node("Relu", ["xd"], ["y"])
    graph = helper.make_graph(
        [q, dq, relu],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [
            numpy_helper.from_array(np.array(0.5, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.uint8), "z"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.array([0.1, 0.3, 1.2, -1.0], np.float32)
    assert not np.allclose(_run_x(model, x), np.maximum(x, 0))  # quantized: steps of 0.5
    assert drop_qdq(model, ["x", "unknown"]) == ["x"]
    assert [n.op_type for n in model.graph.node] == ["Relu"] and not model.graph.initializer
    np.testing.assert_array_equal(_run_x(model, x), np.maximum(x, 0))


def _run_x(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_the_float_head_is_the_leading_convs_with_their_activation_never_every_conv(tmp_path: Path) -> None:
    model = conv_graph()
    fold_conv_affine(model)
    for index, node in enumerate(model.graph.node):
        node.name = f"{node.op_type}_{index}"
    path = tmp_path / "folded.onnx"
    onnx.save(model, str(path))
    assert float_head_nodes(path, 1) == ["Transpose_0", "Conv_1", "Clip_2"]
    assert float_head_nodes(path, 3) == float_head_nodes(path, 1)  # two Convs: the last stays quantized
    assert float_head_nodes(path, 0) == []
    # the stem convolution itself can still run on int8: the nodes up to it, and what it writes
    assert stem_nodes(path) == (["Transpose_0", "Conv_1"], [model.graph.node[1].output[0]])


def test_sample_goes_round_the_categories_and_keeps_evaluation_apart(catalog: Path) -> None:
    sample = sample_photos(catalog, 8, 16)
    assert sample.categories == len(CATEGORIES)
    assert len(sample.calibration) == 8 and len(sample.evaluation) == 16
    assert not set(sample.calibration) & set(sample.evaluation)
    ids = [int(p.stem.split("-")[1]) for p in sample.calibration[: len(CATEGORIES)]]
    assert {i % len(CATEGORIES) for i in ids} == set(range(len(CATEGORIES)))  # one of each category first
    assert sample_photos(catalog, 8, 16) == sample  # stable


def test_int8_twin_is_its_own_version_with_numerics_and_agreement(fp32_model: Path, catalog: Path) -> None:
    out = fp32_model.parent
    folder = quantize_model(fp32_model, catalog=catalog, settings=Int8Settings(**SMALL))
    manifest, fp32 = read_manifest(folder), read_manifest(fp32_model)
    assert folder.parent == out and folder.name == f"conv-raw-int8-{manifest.version}"
    assert manifest.numerics == "int8" and fp32.numerics == "fp32"
    assert manifest.version != fp32.version and manifest.source["fp32_version"] == fp32.version
    q = manifest.quantization
    assert q["format"] == "QDQ" and q["method"] == "minmax"
    # Plain onnxruntime's pre-processing already folds the two BatchNorm-style Mul/Add pairs into their
    # Convs; the OpenVINO build's leaves them to fold_conv_affine (tested on its own above). The agreement
    # figures below are what shows the folding happened either way.
    assert q["folded_into_conv"] in (0, 2)
    assert q["calibration"] == {"catalog": str(catalog), "photos": 8, "categories": 4, "seed": 0}
    agreement = q["agreement"]
    assert agreement["queries"] == 16 and agreement["gallery"] == 16
    assert 0.98 <= agreement["cosine_mean"] <= 1 and agreement["cosine_min"] <= agreement["cosine_mean"]
    assert 0 <= agreement["top10_overlap_min"] <= agreement["top10_overlap_mean"] <= 1
    # measured on every CPU runtime this build offers, the serving one first, and where: this CPU
    by_runtime = q["agreement_by_runtime"]
    assert list(by_runtime) == cpu_runtimes() and agreement["runtime"] == cpu_runtimes()[0]
    assert by_runtime[agreement["runtime"]]["cosine_min"] == agreement["cosine_min"]
    here = int8_instructions()
    assert q["measured_on"]["int8_products"] == here.kind and q["measured_on"]["cpu"] == cpu_name()
    assert q["measured_on"]["int8_instructions"] == here.name
    assert q["speedup"]["runtime"] == agreement["runtime"] and q["speedup"]["int8_over_fp32"] > 0
    assert q["speedup"]["fp32_runtime"] == CPU  # where the default order runs fp32 (FP32_DEFAULT_PROVIDERS)
    # OpenVINO's float parts: fp32 unless asked for (the next test)
    assert q["measured_on"]["int8_float_parts"] == "fp32"
    assert "bf16_float_parts_speedup" not in q["measured_on"]
    graph = onnx.load(str(folder / MODEL_FILE)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    # on two Convs: the first one's output (and its Clip) in float, the first Conv itself and the second int8
    assert q["float_head_convs"] == 3 and q["quantized_stem"] is True
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    first, second = (n for n in graph.node if n.op_type == "Conv")
    assert set(first.input) == set(first.input) & dequantized  # int8 pixels and weights
    assert first.output[0] not in quantized and q["float_tensors"] == [first.output[0]]
    (clip,) = (n for n in graph.node if n.op_type == "Clip")
    assert clip.input[0] == first.output[0]  # the activation reads the float output as it is
    assert set(second.input) & dequantized
    int8, ref = EmbeddingModel(folder, providers=["CPUExecutionProvider"]), EmbeddingModel(fp32_model)
    assert int8.runs_on == "int8 on CPUExecutionProvider"
    x = np.random.default_rng(2).integers(0, 255, (4, 224, 224, 3), dtype=np.uint8)
    assert (np.sum(int8.embed_arrays(x) * ref.embed_arrays(x), axis=1) > 0.95).all()
    assert quantize_model(fp32_model, catalog=catalog, settings=Int8Settings(**SMALL)) == folder  # same bytes


def test_bf16_float_parts_are_kept_only_where_asked_for_and_measured_faster_here(
    fp32_model: Path, catalog: Path, tmp_path: Path
) -> None:
    settings = Int8Settings(**SMALL, bf16_float_parts=True)
    folder = quantize_model(fp32_model, catalog=catalog, out_dir=tmp_path, settings=settings)
    measured = read_manifest(folder).quantization["measured_on"]
    float_parts, gain = measured["int8_float_parts"], measured.get("bf16_float_parts_speedup")
    if OPENVINO in cpu_runtimes() and native_bf16():  # the openvino build on an AVX512-BF16 / AMX CPU
        assert gain is not None and float_parts == ("bf16" if gain >= settings.min_bf16_gain else "fp32")
    else:  # nothing to measure: fp32, and no gain recorded
        assert gain is None and float_parts == "fp32"


def test_the_twin_is_served_only_where_it_ran_faster_than_fp32(fp32_model: Path, catalog: Path) -> None:
    folder = quantize_model(fp32_model, catalog=catalog, settings=Int8Settings(**SMALL))
    speedup = read_manifest(folder).quantization["speedup"]["int8_over_fp32"]
    chosen, why = serving_choice(fp32_model, folder, Int8Settings(min_speedup=speedup))
    assert chosen == folder and f"{speedup:.2f}×" in why
    chosen, why = serving_choice(fp32_model, folder, Int8Settings(min_speedup=speedup * 1.01 + 0.01))
    assert chosen == fp32_model and "serving fp32" in why and "RECIPELENS_INT8_MIN_SPEEDUP" in why


def test_a_hand_edited_twin_manifest_reads_as_not_recorded(
    fp32_model: Path, catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = quantize_model(fp32_model, catalog=catalog, out_dir=tmp_path, settings=Int8Settings(**SMALL))
    fields = read_manifest(folder).model_dump(exclude={"version", "sha256", "format_version"})
    q = fields["quantization"]
    q.update(measured_on="a hand-edited string", speedup={"int8_over_fp32": "fast"}, agreement_by_runtime=[])
    write_manifest(folder, **fields)
    chosen, why = serving_choice(fp32_model, folder, Int8Settings())
    assert chosen == folder and "records no speed-up" in why
    cli._print_summary(folder)
    out = capsys.readouterr().out
    assert "numerics int8" in out and "measured on" not in out
    # a record the summary cannot read at all is named, not a crash
    del fields["quantization"]["agreement"]
    write_manifest(folder, **fields)
    cli._print_summary(folder)
    assert "its quantization record is not as the export writes it (KeyError('agreement'))" in (
        capsys.readouterr().out
    )


def test_a_twin_below_the_bound_is_refused_and_leaves_nothing(
    fp32_model: Path, catalog: Path, tmp_path: Path
) -> None:
    runtime = cpu_runtimes()[0]
    with pytest.raises(QuantizationRefusedError, match=rf"on this CPU .*{runtime}: cosine min .* < 1"):
        quantize_model(
            fp32_model, catalog=catalog, out_dir=tmp_path, settings=Int8Settings(**SMALL, min_cosine=1)
        )
    assert list(tmp_path.iterdir()) == []


def test_cli_makes_the_twin_and_names_a_refusal(
    fp32_model: Path,
    catalog: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RECIPELENS_INT8_CALIBRATION_PHOTOS", "8")
    monkeypatch.setenv("RECIPELENS_INT8_EVALUATION_PHOTOS", "16")
    assert cli.main(["int8", str(fp32_model), "--catalog", str(catalog), "--out", str(tmp_path / "a")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "numerics int8" in lines and Path(lines[-1]).parent == tmp_path / "a"
    monkeypatch.setenv("RECIPELENS_INT8_MIN_TOP10_OVERLAP", "1.0")
    monkeypatch.setenv("RECIPELENS_INT8_MIN_COSINE", "1.0")
    assert cli.main(["int8", str(fp32_model), "--catalog", str(catalog), "--out", str(tmp_path / "b")]) == 2
    assert "refused" in capsys.readouterr().err
    monkeypatch.delenv("RECIPELENS_INT8_MIN_TOP10_OVERLAP")
    monkeypatch.delenv("RECIPELENS_INT8_MIN_COSINE")
    # --serve-choice ends with the folder to serve: fp32 where the twin is not fast enough here
    monkeypatch.setenv("RECIPELENS_INT8_MIN_SPEEDUP", "1000")
    args = [
        "int8",
        str(fp32_model),
        "--catalog",
        str(catalog),
        "--out",
        str(tmp_path / "a"),
        "--serve-choice",
    ]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert Path(lines[-1]) == fp32_model and any(line.startswith("serve    ") for line in lines)
    (measured,) = [line for line in lines if "measured on" in line and "fp32's images/s" in line]
    serving = cpu_runtimes()[0]
    against = f" (fp32 on {CPU})" if serving != CPU else ""  # the twin on OpenVINO, fp32 on the CPU provider
    assert measured.endswith(f"fp32's images/s on {serving}{against}"), measured
    monkeypatch.setenv("RECIPELENS_INT8_MIN_SPEEDUP", "0.001")
    assert cli.main(args) == 0
    assert Path(capsys.readouterr().out.strip().splitlines()[-1]).parent == tmp_path / "a"


def test_a_broken_catalogue_photo_is_left_out_of_calibration_and_agreement(
    fp32_model: Path, catalog: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sample = sample_photos(catalog, 8, 100)
    assert any(p.name == "broken.jpg" for p in sample.evaluation)  # the generated catalogue has one
    folder = quantize_model(
        fp32_model,
        catalog=catalog,
        out_dir=tmp_path,
        settings=Int8Settings(calibration_photos=8, evaluation_photos=100),
    )
    agreement = read_manifest(folder).quantization["agreement"]
    assert agreement["queries"] == agreement["gallery"] == len(sample.evaluation) - 1
    assert "broken.jpg" in caplog.text


def test_the_twin_of_a_model_with_gallery_sizes_keeps_them(catalog: Path, tmp_path: Path) -> None:
    fp32_folder = tmp_path / "zoomed"
    write_tiny_model(fp32_folder, gallery_sizes=(224, 288))
    folder = quantize_model(fp32_folder, catalog=catalog, settings=Int8Settings(**SMALL))
    manifest = read_manifest(folder)
    assert manifest.numerics == "int8" and manifest.gallery_sizes == [224, 288]
    int8 = EmbeddingModel(folder, providers=["CPUExecutionProvider"])  # its graph records the same sizes
    assert int8.gallery_views == (224, 288)
    x = np.random.default_rng(3).integers(0, 255, (2, 288, 288, 3), dtype=np.uint8)
    ref = EmbeddingModel(fp32_folder).embed_arrays(x)
    assert (np.sum(int8.embed_arrays(x) * ref, axis=1) > 0.95).all()
