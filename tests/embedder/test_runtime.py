"""Execution providers without the hardware: onnxruntime's provider list and session are faked, so the
TensorRT / CUDA / OpenVINO choices (and their options by numerics) are checked on any machine."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from embedder import runtime
from embedder.cpus import available_cpus
from embedder.manifest import MODEL_FILE, read_manifest, write_manifest
from embedder.providers import (
    CPU,
    CUDA,
    DEFAULT_PROVIDERS,
    FP32_DEFAULT_PROVIDERS,
    OPENVINO,
    TENSORRT,
    default_order_for,
)
from embedder.runtime import EmbeddingModel, provider_options, select_providers
from tests.support.tinymodel import write_tiny_model


class FakeSession:
    """Records what the session was asked for; runs on the first provider it was given."""

    created: ClassVar[list[FakeSession]] = []

    def __init__(self, path: str, sess_options: Any = None, providers: Any = None) -> None:
        self.path = path
        self.providers = list(providers)
        FakeSession.created.append(self)

    def get_inputs(self) -> list[Any]:
        return [type("Input", (), {"name": "image", "type": "tensor(float)"})()]

    def get_providers(self) -> list[str]:
        return [name for name, _ in self.providers]

    def get_modelmeta(self) -> Any:
        return type("Meta", (), {"custom_metadata_map": {}})()

    def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.ones((len(feeds["image"]), 64), np.float32)]


@pytest.fixture
def fake_ort(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> list[FakeSession]:
    available = request.param
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: list(available))
    monkeypatch.setattr(runtime.ort, "InferenceSession", FakeSession)
    FakeSession.created = []
    return FakeSession.created


def _int8_twin(folder: Path) -> Path:
    fields = read_manifest(folder).model_dump(exclude={"version", "sha256", "format_version"})
    fields.update(numerics="int8", quantization={"method": "minmax"})
    write_manifest(folder, **fields)
    return folder


@pytest.mark.parametrize("fake_ort", [[TENSORRT, CUDA, CPU]], indirect=True)
def test_gpu_build_runs_tensorrt_first_fp16_for_fp32_int8_for_qdq(
    fake_ort: list[FakeSession], tmp_path: Path
) -> None:
    write_tiny_model(tmp_path / "fp32")
    fp32 = EmbeddingModel(tmp_path / "fp32")
    assert fp32.provider == TENSORRT and fp32.runs_on == "fp32 on TensorrtExecutionProvider"
    names = [name for name, _ in fake_ort[-1].providers]
    assert names == [TENSORRT, CUDA, CPU]
    trt = dict(fake_ort[-1].providers)[TENSORRT]
    assert trt["trt_fp16_enable"] == "True" and trt["trt_int8_enable"] == "False"
    write_tiny_model(tmp_path / "int8", seed=1)
    int8 = EmbeddingModel(_int8_twin(tmp_path / "int8"))
    assert int8.runs_on == "int8 on TensorrtExecutionProvider"
    assert dict(fake_ort[-1].providers)[TENSORRT]["trt_int8_enable"] == "True"
    assert int8.embed_arrays(np.zeros((2, 224, 224, 3), np.uint8)).shape == (2, 64)


@pytest.mark.parametrize("fake_ort", [[CUDA, CPU]], indirect=True)
def test_cuda_only_build_skips_tensorrt(fake_ort: list[FakeSession], tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "m")
    model = EmbeddingModel(tmp_path / "m")
    assert model.provider == CUDA
    assert [name for name, _ in fake_ort[-1].providers] == [CUDA, CPU]


@pytest.mark.parametrize("fake_ort", [[OPENVINO, CPU]], indirect=True)
def test_openvino_build_runs_openvino_on_the_cpu_device(fake_ort: list[FakeSession], tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "m")
    model = EmbeddingModel(_int8_twin(tmp_path / "m"), intra_op_threads=2)
    assert model.provider == OPENVINO
    options = dict(fake_ort[-1].providers)[OPENVINO]
    assert options["device_type"] == "CPU" and options["num_of_threads"] == "2"


@pytest.mark.parametrize("fake_ort", [[OPENVINO, CPU]], indirect=True)
def test_openvino_build_runs_fp32_on_the_cpu_provider_unless_openvino_is_named(
    fake_ort: list[FakeSession], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The default order leaves OpenVINO to int8 twins: fp32 runs where the cpu extra runs it (the faster
    fp32 runtime on Zen 4 and the Intel Xeon, about equal on Zen 5); a named order is kept."""
    caplog.set_level("INFO", logger="embedder.runtime")
    write_tiny_model(tmp_path / "fp32")
    fp32 = EmbeddingModel(tmp_path / "fp32")
    assert fp32.provider == CPU and fp32.runs_on == f"fp32 on {CPU}"
    assert [name for name, _ in fake_ort[-1].providers] == [CPU]
    assert "as the default provider order runs fp32" in caplog.text
    caplog.clear()
    for named in ([OPENVINO], [OPENVINO, CPU]):
        assert EmbeddingModel(tmp_path / "fp32", providers=named).provider == OPENVINO
        assert [name for name, _ in fake_ort[-1].providers] == [OPENVINO, CPU]
    assert EmbeddingModel(tmp_path / "fp32", providers=[CPU]).provider == CPU
    assert "default provider order" not in caplog.text
    write_tiny_model(tmp_path / "int8", seed=1)
    assert EmbeddingModel(_int8_twin(tmp_path / "int8")).runs_on == f"int8 on {OPENVINO}"
    assert [name for name, _ in fake_ort[-1].providers] == [OPENVINO, CPU]


def _measured_float_parts(folder: Path, float_parts: str) -> Path:
    from embedder import cpus

    fields = read_manifest(folder).model_dump(exclude={"version", "sha256", "format_version"})
    measured = {
        "int8_products": cpus.EXACT,
        "int8_instructions": "AVX512-VNNI",
        "int8_float_parts": float_parts,
    }
    fields.update(numerics="int8", quantization={"method": "minmax", "measured_on": measured})
    write_manifest(folder, **fields)
    return folder


@pytest.mark.parametrize("fake_ort", [[OPENVINO, CPU]], indirect=True)
def test_openvino_runs_an_int8_models_float_parts_in_bf16_where_measured_so_and_the_cpu_has_it(
    fake_ort: list[FakeSession],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from embedder import cpus

    monkeypatch.setattr(
        runtime, "int8_instructions", lambda: cpus.Int8Instructions("AVX512-VNNI", cpus.EXACT)
    )
    write_tiny_model(tmp_path / "fp32")
    write_tiny_model(tmp_path / "bf16", seed=1)
    write_tiny_model(tmp_path / "f32", seed=2)
    _measured_float_parts(tmp_path / "bf16", "bf16")
    _measured_float_parts(tmp_path / "f32", "fp32")

    def options() -> dict[str, str]:
        return dict(fake_ort[-1].providers)[OPENVINO]

    monkeypatch.setattr(runtime, "native_bf16", lambda: "AVX512-BF16")
    int8 = EmbeddingModel(tmp_path / "bf16")
    assert int8.float_parts == "bf16" and int8.runs_on == f"int8 on {OPENVINO} (float parts in bf16)"
    assert "precision" not in options()  # ACCURACY would pin the float parts to fp32
    assert json.loads(options()["load_config"]) == {"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}}
    # measured faster in fp32 at export (or made before this was measured): fp32, whatever the CPU
    int8 = EmbeddingModel(tmp_path / "f32")
    assert int8.float_parts == "fp32" and int8.runs_on == f"int8 on {OPENVINO}"
    assert options()["precision"] == "ACCURACY" and "load_config" not in options()
    fp32 = EmbeddingModel(tmp_path / "fp32", providers=[OPENVINO, CPU])  # fp32 stays fp32 everywhere
    assert fp32.runs_on == f"fp32 on {OPENVINO}" and options()["precision"] == "FP32"
    assert "load_config" not in options() and "float parts" not in caplog.text
    # onnxruntime's CPU provider takes no precision hint
    assert EmbeddingModel(tmp_path / "bf16", providers=[CPU]).runs_on == f"int8 on {CPU}"
    # measured in bf16, but this CPU has no bf16 arithmetic: fp32, and the log says the vectors differ
    monkeypatch.setattr(runtime, "native_bf16", lambda: "")
    int8 = EmbeddingModel(tmp_path / "bf16")
    assert int8.float_parts == "fp32" and options()["precision"] == "ACCURACY"
    assert "measured with its float parts in bf16, which this CPU lacks" in caplog.text


def test_provider_list_order_and_cpu_always_last() -> None:
    assert DEFAULT_PROVIDERS == (TENSORRT, CUDA, OPENVINO, CPU)
    assert default_order_for("fp32", DEFAULT_PROVIDERS) == FP32_DEFAULT_PROVIDERS == (TENSORRT, CUDA, CPU)
    assert default_order_for("int8", DEFAULT_PROVIDERS) == DEFAULT_PROVIDERS
    assert default_order_for("fp32", [OPENVINO, CPU]) == (OPENVINO, CPU)
    assert select_providers(DEFAULT_PROVIDERS, available=[CPU, OPENVINO]) == [OPENVINO, CPU]
    assert select_providers([OPENVINO], available=[CPU]) == [CPU]
    assert provider_options(CPU) == {}
    assert provider_options(OPENVINO, numerics="int8")["device_type"] == "CPU"


def test_the_real_build_reports_what_runs(tmp_path: Path) -> None:
    """Whatever onnxruntime build is installed, a model loads on one of its providers and says so."""
    import onnxruntime as ort

    write_tiny_model(tmp_path / "m")
    model = EmbeddingModel(tmp_path / "m")
    assert model.provider in ort.get_available_providers()
    vectors = model.embed_arrays(np.random.default_rng(0).integers(0, 255, (3, 224, 224, 3), dtype=np.uint8))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def _allowed_cpus_by_thread() -> dict[int, str]:
    """Each thread of this process and the CPUs it may run on (``Cpus_allowed_list``)."""
    allowed = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            status = Path(f"/proc/self/task/{tid}/status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                allowed[int(tid)] = line.split()[1]
    return allowed


@pytest.mark.skipif(
    not Path("/proc/self/task").is_dir() or len(os.sched_getaffinity(0)) < 2,
    reason="reads Linux's /proc; pinning needs 2 CPUs or more",
)
def test_default_threads_are_one_per_cpu_and_none_is_pinned(tmp_path: Path) -> None:
    """Left at 0, onnxruntime would pin its threads one per core (a pinned thread waits while its core
    decodes); the model asks for one per available CPU instead, so they run wherever a CPU is free."""
    write_tiny_model(tmp_path / "m")
    before = _allowed_cpus_by_thread()
    model = EmbeddingModel(tmp_path / "m", providers=[CPU])
    model.embed_arrays(np.zeros((1, model.image_size, model.image_size, 3), np.uint8))
    after = _allowed_cpus_by_thread()
    started = {tid: cpus for tid, cpus in after.items() if tid not in before}
    assert model.intra_op_threads == available_cpus()
    assert started, "no onnxruntime thread started for a session of 2+ threads"
    assert set(started.values()) == {after[threading.get_native_id()]}, started

    before = after
    one = EmbeddingModel(tmp_path / "m", providers=[CPU], intra_op_threads=1)
    one.embed_arrays(np.zeros((1, one.image_size, one.image_size, 3), np.uint8))
    assert one.intra_op_threads == 1
    assert not set(_allowed_cpus_by_thread()) - set(before), "one thread is the caller's own"


async def test_status_says_what_runs_for_readyz(tmp_path: Path) -> None:
    """The gateway's /readyz shows this description: each model's numerics and provider."""
    from embedder.inprocess import InProcessEmbedder
    from embedder.repository import ModelRepository

    version = write_tiny_model(tmp_path / "m")
    embedder = InProcessEmbedder(ModelRepository(tmp_path, providers=[CPU]))
    status = await embedder.status()
    assert f"{version} fp32 on CPUExecutionProvider" in status.description
    await embedder.aclose()


def test_a_graph_that_takes_uint8_pixels_gets_them_as_they_are(tmp_path: Path) -> None:
    """Exports take uint8 (the cast is inside the graph); older float32 graphs still get float32."""
    import onnx
    from onnx import TensorProto, helper

    write_tiny_model(tmp_path / "float")
    model = onnx.load(str(tmp_path / "float" / MODEL_FILE))
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    for node in model.graph.node:
        node.input[:] = ["pixels" if name == "image" else name for name in node.input]
    model.graph.node.insert(0, helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT))
    (tmp_path / "uint8").mkdir()
    (tmp_path / "uint8" / MODEL_FILE).write_bytes(model.SerializeToString())
    write_manifest(tmp_path / "uint8", name="tiny-uint8", backbone="tiny-colour-layout", embedding_dim=64)
    as_float, as_uint8 = EmbeddingModel(tmp_path / "float"), EmbeddingModel(tmp_path / "uint8")
    assert as_float.input_dtype is np.float32 and as_uint8.input_dtype is np.uint8
    pixels = np.random.default_rng(1).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_allclose(as_uint8.embed_arrays(pixels), as_float.embed_arrays(pixels), atol=1e-6)
    # float pixels (0..255) are rounded and clipped for a uint8 graph, not wrapped around
    noisy = pixels.astype(np.float32) + np.float32(0.3)
    noisy[0, 0, 0] = [300.0, -5.0, 254.6]
    expected = pixels.copy()
    expected[0, 0, 0] = [255, 0, 255]
    np.testing.assert_allclose(as_uint8.embed_arrays(noisy), as_float.embed_arrays(expected), atol=1e-6)
    assert not np.allclose(as_uint8.embed_arrays(noisy[:1]), as_float.embed_arrays(pixels[:1]), atol=1e-6)


def _measured_on(folder: Path, kind: str) -> Path:
    fields = read_manifest(folder).model_dump(exclude={"version", "sha256", "format_version"})
    fields.update(
        numerics="int8",
        source={"fp32_version": "0123456789abcdef"},
        quantization={
            "method": "minmax",
            "measured_on": {"cpu": "some CPU", "int8_instructions": "some ISA", "int8_products": kind},
            "agreement_by_runtime": {CPU: {}},
        },
    )
    write_manifest(folder, **fields)
    return folder


def test_an_int8_model_loads_only_on_the_kind_of_cpu_its_agreement_was_measured_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from embedder import cpus

    caplog.set_level("INFO", logger="embedder.runtime")
    write_tiny_model(tmp_path / "m")
    saturating = cpus.Int8Instructions("AVX2 without VNNI", cpus.SATURATING)
    monkeypatch.setattr(runtime, "int8_instructions", lambda: saturating)
    # measured where int8 products are exact (VNNI), loaded where they saturate: refused, saying why
    with pytest.raises(
        runtime.Int8CpuMismatchError, match=r"exact int8 products .*AVX2 without VNNI.*0123456"
    ):
        EmbeddingModel(_measured_on(tmp_path / "m", cpus.EXACT), providers=[CPU])
    model = EmbeddingModel(_measured_on(tmp_path / "m", cpus.SATURATING), providers=[CPU])
    assert model.int8_instructions == saturating.describe()
    assert "int8 on AVX2 without VNNI" in caplog.text
    # an fp32 model loads anywhere; a twin that does not say where it was measured loads, with a warning
    write_tiny_model(tmp_path / "fp32")
    assert EmbeddingModel(tmp_path / "fp32").int8_instructions == ""
    EmbeddingModel(_int8_twin(tmp_path / "m"), providers=[CPU])
    assert "does not record the CPU its agreement was measured on" in caplog.text
    fields = read_manifest(tmp_path / "m").model_dump(exclude={"version", "sha256", "format_version"})
    fields.update(quantization={"method": "minmax", "measured_on": "a hand-edited string"})
    write_manifest(tmp_path / "m", **fields)
    EmbeddingModel(tmp_path / "m", providers=[CPU])  # read as "not recorded", not a crash
    # a CPU whose kind cannot be told loads either
    monkeypatch.setattr(runtime, "int8_instructions", lambda: cpus.Int8Instructions("unknown", cpus.UNKNOWN))
    EmbeddingModel(_measured_on(tmp_path / "m", cpus.EXACT), providers=[CPU])


@pytest.mark.parametrize("fake_ort", [[OPENVINO, CPU]], indirect=True)
def test_an_int8_model_on_a_runtime_its_agreement_was_not_measured_on_is_logged(
    fake_ort: list[FakeSession],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from embedder import cpus

    write_tiny_model(tmp_path / "m")
    monkeypatch.setattr(
        runtime, "int8_instructions", lambda: cpus.Int8Instructions("AVX512-VNNI", cpus.EXACT)
    )
    model = EmbeddingModel(_measured_on(tmp_path / "m", cpus.EXACT))
    assert model.provider == OPENVINO
    assert f"runs on {OPENVINO} here, but its agreement to fp32 was measured on {CPU} only" in caplog.text
