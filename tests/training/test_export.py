"""ONNX export of the real Lite0 raw model: one input, any batch, parity with Keras, verified folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from embedder.manifest import MODEL_FILE, ModelIntegrityError, read_manifest
from embedder.preprocess import ImageDecodeError
from embedder.runtime import EmbeddingModel
from tests.support.imagegen import encode, synthetic_photo
from tests.training.rawmodel import RawExport

pytestmark = pytest.mark.slow


def _photos(n: int) -> np.ndarray:
    from embedder.preprocess import preprocess

    return np.stack([preprocess(encode(synthetic_photo(seed), "JPEG", quality=90)) for seed in range(n)])


def test_exported_graph_has_one_image_input_and_a_dynamic_batch(raw_model_dir: Path) -> None:
    graph = onnx.load(str(raw_model_dir / MODEL_FILE)).graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    assert [i.name for i in inputs] == ["image"]
    dims = inputs[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [224, 224, 3]
    assert [o.name for o in graph.output] == ["embedding"]
    # uint8 pixels, cast after the NHWC → NCHW transpose; the stem's Rescaling + Normalization (three
    # passes over the input) folded into the first Conv
    assert inputs[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [node.op_type for node in graph.node[:4]] == ["Transpose", "Cast", "Add", "Conv"]
    session = ort.InferenceSession(str(raw_model_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        (out,) = session.run(None, {"image": _photos(n)})
        assert out.shape == (n, 1280)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    with pytest.raises(Exception, match="tensor\\(float\\)"):  # float pixels are not what it takes
        session.run(None, {"image": _photos(1).astype(np.float32)})


def test_onnx_matches_keras_and_the_manifest_verifies(raw_export: RawExport) -> None:
    manifest = read_manifest(raw_export.folder, verify=True)
    assert raw_export.folder.name == f"lite0-raw-{manifest.version}"
    assert manifest.embedding_dim == 1280
    assert manifest.backbone == "efficientnet_lite0"
    assert manifest.parity["max_abs_diff"] <= 1e-4
    assert manifest.parity["images"][:2] == ["skimage:coffee", "skimage:chelsea"]
    batch = _photos(5)
    model = EmbeddingModel(raw_export.folder)  # the serving path
    got = model.embed_arrays(batch)
    want = raw_export.model.predict(batch.astype(np.float32), verbose=0)
    assert np.abs(got - want).max() <= 1e-4
    assert float((got[0] * got[1]).sum()) < 0.99  # different photos, different vectors
    assert sorted(p.name for p in raw_export.out_dir.iterdir()) == [raw_export.folder.name]  # no temp left


def test_tampered_model_file_is_refused(raw_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / raw_model_dir.name
    copy.mkdir()
    for name in ("manifest.json", MODEL_FILE):
        (copy / name).write_bytes((raw_model_dir / name).read_bytes())
    with (copy / MODEL_FILE).open("r+b") as fh:
        fh.seek(-10, 2)
        fh.write(b"\x00" * 4)
    with pytest.raises(ModelIntegrityError, match="does not match"):
        read_manifest(copy)


def test_keras_copy_reloads_in_a_fresh_process_with_identical_outputs(
    raw_export: RawExport, tmp_path: Path
) -> None:
    from training.models import build_embedding_model, keras_path

    head = build_embedding_model("efficientnet_lite0", None, embedding_dim=32, hidden=64)
    assert head.input.name == "image"
    assert head.output_shape == (None, 32)
    assert [layer.name for layer in head.layers][1] == "backbone"
    head_path = tmp_path / "head.keras"
    head.save(head_path)
    batch = _photos(3).astype(np.float32)
    np.save(tmp_path / "batch.npy", batch)
    expected = {
        "raw": raw_export.model.predict(batch, verbose=0),
        "head": head.predict(batch, verbose=0),
    }
    script = f"""
import json, sys
import numpy as np
import keras
from training.models import load_keras_for_manifest
batch = np.load({str(tmp_path / "batch.npy")!r})
raw = load_keras_for_manifest({str(raw_export.folder)!r})
import training.layers  # registers L2Normalization for a plain keras.saving.load_model
head = keras.saving.load_model({str(head_path)!r})
np.save({str(tmp_path / "raw.npy")!r}, raw.predict(batch, verbose=0))
np.save({str(tmp_path / "head.npy")!r}, head.predict(batch, verbose=0))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert keras_path(raw_export.folder).is_file()
    for name, want in expected.items():
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), want, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(np.linalg.norm(want, axis=1), 1.0, atol=1e-5)


def test_same_network_same_version_changed_weights_new_version(raw_export: RawExport) -> None:
    from training.export import export_model
    from training.models import load_keras_for_manifest

    version = read_manifest(raw_export.folder).version
    twin = load_keras_for_manifest(raw_export.folder)  # a separately built copy of the same network
    again = export_model(twin, raw_export.out_dir, name="lite0-raw", backbone="efficientnet_lite0", source={})
    assert again == raw_export.folder
    assert (
        json.loads((again / "manifest.json").read_text())["source"]["kind"] == "test fixture"
    )  # kept as it was

    bn = twin.get_layer("backbone").get_layer("top_bn")
    gamma, *rest = bn.get_weights()
    bn.set_weights([gamma * 1.01, *rest])
    changed = export_model(
        twin, raw_export.out_dir, name="lite0-raw", backbone="efficientnet_lite0", source={}
    )
    new_version = read_manifest(changed).version
    assert new_version != version
    assert changed.name == f"lite0-raw-{new_version}"
    assert read_manifest(raw_export.folder).version == version


def test_parity_failure_leaves_no_folder(raw_export: RawExport, tmp_path: Path) -> None:
    from training.export import ExportParityError, export_model

    out = tmp_path / "models"
    with pytest.raises(ExportParityError, match="tolerance 0"):
        export_model(raw_export.model, out, name="x", backbone="efficientnet_lite0", source={}, tolerance=0.0)
    assert list(out.iterdir()) == []


def test_bad_parity_image_is_named_and_nothing_is_written(raw_export: RawExport, tmp_path: Path) -> None:
    from training.export import export_model

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "models"
    with pytest.raises(ImageDecodeError, match=str(bad)):
        export_model(raw_export.model, out, name="x", backbone="b", source={}, parity_images=[bad])
    assert not any(out.iterdir())


def test_check_parity_catches_a_different_model(raw_export: RawExport) -> None:
    from training.export import ExportParityError, check_parity, skimage_photos
    from training.models import build_raw_model

    random_model: Any = build_raw_model("efficientnet_lite0", None)
    with pytest.raises(ExportParityError, match="worst photo skimage:"):
        check_parity(random_model, raw_export.folder / MODEL_FILE, skimage_photos(), tolerance=1e-4)


@pytest.mark.slow
def test_input_size_comes_from_the_manifest_through_onnx_and_the_embedder(tmp_path: Path) -> None:
    """Lite2 takes 260 px: the manifest says so, the ONNX input is 260, the embedder preprocesses at 260.

    (With GeM pooling, so its export through tf2onnx is checked for parity too.)
    """
    import keras

    from embedder.preprocess import preprocess
    from training.export import ExportError, export_model
    from training.models import build_raw_model

    keras.utils.set_random_seed(2)
    model = build_raw_model("efficientnet_lite2", None, pooling="gem")
    folder = export_model(model, tmp_path, name="lite2-raw", backbone="efficientnet_lite2", source={})
    manifest = read_manifest(folder)
    assert manifest.input.image_size == 260 and manifest.input.shape == [None, 260, 260, 3]
    embedder = EmbeddingModel(folder)
    assert embedder.image_size == 260
    photo = encode(synthetic_photo(77, size=(300, 200)), "JPEG", quality=90)
    want = model.predict(preprocess(photo, size=260)[None].astype(np.float32), verbose=0)
    np.testing.assert_allclose(embedder.embed_images([photo]), want, atol=1e-4)
    with pytest.raises(ValueError, match=r"\(N, S, S, 3\) batch with S = 260, got"):
        embedder.embed_arrays(np.zeros((1, 224, 224, 3), np.uint8))
    # Gallery sizes need a graph of free height and width: a fixed-size model is refused before converting.
    with pytest.raises(ExportError, match="must take any height and width"):
        export_model(
            model, tmp_path, name="x", backbone="efficientnet_lite2", source={}, gallery_sizes=[260, 320]
        )
