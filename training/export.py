"""Export a Keras embedding model to a verified ONNX model folder.

``export_model`` converts with ``tf2onnx.convert.from_keras`` (opset 17, one float32 input ``image``
with a dynamic batch), folds the stem's input scaling into the first convolution (:mod:`training.onnx_fold`),
renames the output to ``embedding`` and gives every node and intermediate tensor a canonical name, so the
file's bytes — and the manifest version derived from them — depend on the network and its weights only,
not on Keras' layer-name counters. Every export is checked: Keras and onnxruntime embed the same real
photos (batch of all of them and batch of one) and must agree within ``tolerance`` with unit-norm
outputs, or :class:`ExportParityError` is raised and no folder is left.

With ``gallery_sizes`` (the model's own size first) the graph takes any height and width, records the
sizes in its metadata (so the version covers them) and is checked at every one of them.

The folder is assembled under a temporary name in ``out_dir`` and renamed into place as
``<out_dir>/<name>-<version>``; a folder of that version already there is kept as it is.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx
from PIL import Image

from embedder.manifest import (
    GALLERY_SIZES_KEY,
    MODEL_FILE,
    InputSpec,
    ModelManifest,
    gallery_metadata,
    write_manifest,
)
from embedder.preprocess import IMAGE_SIZE, preprocess, preprocess_file
from embedder.runtime import input_dtype
from training.models import INPUT_NAME, keras_path
from training.onnx_fold import fold_input_scaling, uint8_input
from training.publish import publish_folder, staging_folder

log = logging.getLogger(__name__)

OUTPUT_NAME = "embedding"
ONNX_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
NORM_TOLERANCE = 1e-3
MAX_PARITY_IMAGES = 16
# Real photos bundled with scikit-image: always available offline, varied enough to exercise the net.
SKIMAGE_PHOTOS: tuple[str, ...] = ("coffee", "chelsea", "astronaut", "rocket")


class ExportError(RuntimeError):
    """The model could not be converted into a usable ONNX graph."""


class ExportParityError(ExportError):
    """onnxruntime and Keras disagree on the parity photos (or the outputs are not unit vectors)."""


def skimage_photos(size: int = IMAGE_SIZE) -> list[tuple[str, np.ndarray]]:
    """The bundled scikit-image photos, each passed through the one ``preprocess`` as a PNG file."""
    import skimage.data

    photos = []
    for name in SKIMAGE_PHOTOS:
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).save(buffer, format="PNG")
        photos.append((f"skimage:{name}", preprocess(buffer.getvalue(), size=size)))
    return photos


def parity_photos(
    extra: Sequence[Path] | None = None, *, limit: int = MAX_PARITY_IMAGES, size: int = IMAGE_SIZE
) -> list[tuple[str, np.ndarray]]:
    """Bundled photos plus up to ``limit`` given image files (errors name the file), at ``size``."""
    photos = skimage_photos(size)
    photos += [(str(path), preprocess_file(path, size=size)) for path in list(extra or [])[:limit]]
    return photos


def _canonicalise(model: onnx.ModelProto, output_name: str) -> None:
    """Make the file depend on the network only: positional names, sorted constants, ``batch`` dims.

    tf2onnx's constant order and generated names change from run to run; the manifest version is the
    file's hash, so one network must always serialise to the same bytes.
    """
    graph = model.graph
    if len(graph.output) != 1:
        raise ExportError(f"expected one graph output, found {[o.name for o in graph.output]}")
    keep = {i.name for i in graph.input}
    initializers = {init.name for init in graph.initializer}
    renames: dict[str, str] = {graph.output[0].name: output_name}
    for index, node in enumerate(graph.node):
        node.name = f"{node.op_type}_{index}"
        for name in node.input:
            if name in initializers and name not in renames:
                renames[name] = f"const_{len(renames):05d}"
        for slot, name in enumerate(node.output):
            if name and name not in renames and name not in keep:
                renames[name] = f"t{index}_{slot}"
    unused = initializers - renames.keys()
    if unused:
        raise ExportError(f"constants used by no node: {sorted(unused)[:3]}")

    def rename(name: str) -> str:
        return renames.get(name, name)

    for node in graph.node:
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    ordered = sorted(graph.initializer, key=lambda init: rename(init.name))
    for init in ordered:
        init.name = rename(init.name)
    copies = [onnx.TensorProto.FromString(init.SerializeToString()) for init in ordered]
    del graph.initializer[:]
    graph.initializer.extend(copies)
    del graph.value_info[:]
    for value in list(graph.input) + list(graph.output):
        value.name = rename(value.name)
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    for value in graph.input:  # free height and width (gallery sizes) get names of their own too
        for dim, dim_name in zip(value.type.tensor_type.shape.dim[1:3], ("height", "width"), strict=False):
            if not dim.HasField("dim_value"):
                dim.dim_param = dim_name
    graph.name = "recipelens"
    model.doc_string = ""


def convert_to_onnx(
    keras_model: keras.Model,
    image_size: int = IMAGE_SIZE,
    *,
    free_size: bool = False,
    pixels_uint8: bool = False,
) -> onnx.ModelProto:
    """tf2onnx conversion; the graph gets exactly one input ``image`` (N, S, S, 3) float32 — with
    ``free_size`` (a model built for any height and width) ``(N, height, width, 3)``; with
    ``pixels_uint8`` (published models) uint8, cast inside (:func:`training.onnx_fold.uint8_input`)."""
    side = None if free_size else image_size
    spec = [tf.TensorSpec((None, side, side, 3), tf.float32, name=INPUT_NAME)]
    try:
        proto, _ = tf2onnx.convert.from_keras(keras_model, input_signature=spec, opset=ONNX_OPSET)
    except Exception as exc:
        raise ExportError(f"tf2onnx could not convert {keras_model.name}: {exc}") from exc
    unknown = sorted({n.op_type for n in proto.graph.node if not onnx.defs.has(n.op_type, n.domain)})
    if unknown:  # tf2onnx keeps what it cannot convert as the TensorFlow op, and warns only
        raise ExportError(f"tf2onnx could not convert {keras_model.name}: ops {', '.join(unknown)}")
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ExportError(f"the ONNX graph must have exactly one input, found {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    want = [0, 0, 3] if free_size else [image_size, image_size, 3]
    if len(dims) != 4 or dims[0].HasField("dim_value") or [d.dim_value for d in dims[1:]] != want:
        shape = [d.dim_param or d.dim_value for d in dims]
        wanted = "[N, H, W, 3]" if free_size else f"[N, {image_size}, {image_size}, 3]"
        raise ExportError(f"unexpected input shape {shape} (want {wanted})")
    if inputs[0].name != INPUT_NAME:
        raise ExportError(f"the ONNX input is named {inputs[0].name!r}, expected {INPUT_NAME!r}")
    fold_input_scaling(proto, INPUT_NAME)
    if pixels_uint8:
        uint8_input(proto, INPUT_NAME)
    _canonicalise(proto, OUTPUT_NAME)
    onnx.checker.check_model(proto)
    return proto


def check_parity(
    keras_model: keras.Model, onnx_path: Path, photos: Sequence[tuple[str, np.ndarray]], *, tolerance: float
) -> dict[str, Any]:
    """Embed ``photos`` with Keras and onnxruntime (whole batch and one by one); raise on disagreement."""
    batch = np.stack([array for _, array in photos]).astype(np.float32)
    expected = np.asarray(keras_model.predict(batch, verbose=0), dtype=np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    fed = batch.astype(input_dtype(session))  # the photos' own uint8 pixels, for a uint8 graph
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: fed})
    (single,) = session.run([OUTPUT_NAME], {INPUT_NAME: fed[:1]})
    got = np.asarray(got, dtype=np.float32)
    if got.shape != expected.shape:
        raise ExportParityError(f"onnxruntime output shape {got.shape} differs from Keras {expected.shape}")
    diff = float(np.abs(got - expected).max())
    single_diff = float(np.abs(np.asarray(single) - expected[:1]).max())
    norm_error = float(np.abs(np.linalg.norm(got, axis=1) - 1.0).max())
    names = [name for name, _ in photos]
    if not np.isfinite(got).all() or max(diff, single_diff) > tolerance:
        worst = names[int(np.abs(got - expected).max(axis=1).argmax())] if np.isfinite(got).all() else "?"
        raise ExportParityError(
            f"onnxruntime differs from Keras by {max(diff, single_diff):.3g} (tolerance {tolerance:g}); "
            f"worst photo {worst}"
        )
    if norm_error > NORM_TOLERANCE:
        raise ExportParityError(
            f"exported embeddings are not unit vectors (|norm - 1| up to {norm_error:.3g})"
        )
    return {
        "max_abs_diff": max(diff, single_diff),
        "max_norm_error": norm_error,
        "tolerance": tolerance,
        "images": names,
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
    }


def export_model(
    keras_model: keras.Model,
    out_dir: str | Path,
    *,
    name: str,
    backbone: str,
    source: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    parity_images: Sequence[Path] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    gallery_sizes: Sequence[int] = (),
) -> Path:
    """Convert, verify and publish ``keras_model`` as ``<out_dir>/<name>-<version>``; return that folder.

    ``gallery_sizes`` (the input size first, then the others): ``keras_model`` must take any height and
    width (``free_size``); parity is checked at each size.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = list(gallery_sizes) if len(gallery_sizes) > 1 else []
    free = keras_model.input_shape[1] is None
    if free != bool(sizes):
        raise ExportError(
            "a model with gallery sizes must take any height and width, and only such a model"
            f" (gallery sizes {sizes or 'none'}, input {keras_model.input_shape})"
        )
    image_size = sizes[0] if sizes else int(keras_model.input_shape[1])  # the manifest records it
    # Fail on a bad parity image before the slow conversion.
    photos = {size: parity_photos(parity_images, size=size) for size in sizes or [image_size]}
    embedding_dim = int(keras_model.output_shape[-1])
    with staging_folder(out_dir, f"{name}-export") as staging:
        proto = convert_to_onnx(keras_model, image_size, free_size=free, pixels_uint8=True)
        if sizes:
            onnx.helper.set_model_props(proto, {GALLERY_SIZES_KEY: gallery_metadata(sizes)})
        onnx_path = staging / MODEL_FILE
        onnx_path.write_bytes(proto.SerializeToString())
        checks = {
            size: check_parity(keras_model, onnx_path, p, tolerance=tolerance) for size, p in photos.items()
        }
        parity = checks[image_size]
        if sizes:
            parity["max_abs_diff"] = max(c["max_abs_diff"] for c in checks.values())
            parity["max_norm_error"] = max(c["max_norm_error"] for c in checks.values())
            parity["sizes"] = sizes
        keras_file = keras_path(staging)
        keras_file.parent.mkdir()
        keras_model.save(keras_file)
        manifest: ModelManifest = write_manifest(
            staging,
            name=name,
            backbone=backbone,
            embedding_dim=embedding_dim,
            input=InputSpec(shape=[None, image_size, image_size, 3]),
            source=dict(source),
            metrics=dict(metrics or {}),
            parity=parity,
            gallery_sizes=sizes,
        )
        final, new = publish_folder(staging, out_dir, manifest)
    if new:
        log.info(
            "exported %s version %s (%d-D, parity %.2g over %d photos) to %s",
            name,
            manifest.version,
            embedding_dim,
            parity["max_abs_diff"],
            len(photos[image_size]),
            final,
        )
    return final
