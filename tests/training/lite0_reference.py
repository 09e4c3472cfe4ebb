"""An independent numpy forward pass of EfficientNet-Lite0, written from the PyTorch reference code.

Mirrors lukemelas' EfficientNet-PyTorch (``Conv2dStaticSamePadding``: pad ``p // 2`` before and
``p - p // 2`` after, TF ``SAME``), BatchNorm with eps 1e-3, ReLU6 and no squeeze-excite, so the Keras
port can be checked layer by layer without torch.
"""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-3
# (repeats, kernel, stride, expand, in, out) per stage of Lite0 (= B0 without SE).
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]  # fmt: skip


def _same_pad(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """NCHW zero padding exactly as Conv2dStaticSamePadding computes it."""
    ih, iw = x.shape[-2:]
    oh, ow = math.ceil(ih / s), math.ceil(iw / s)
    ph = max((oh - 1) * s + k - ih, 0)
    pw = max((ow - 1) * s + k - iw, 0)
    return np.pad(x, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))


def _windows(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """(N, C, H, W) padded → (N, C, OH, OW, k, k) sliding windows."""
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    sn, sc, sh, sw = x.strides
    return np.lib.stride_tricks.as_strided(x, (n, c, oh, ow, k, k), (sn, sc, sh * s, sw * s, sh, sw))


def conv(x: np.ndarray, w: np.ndarray, s: int = 1, groups: int = 1) -> np.ndarray:
    k = w.shape[-1]
    if k == 1 and s == 1:
        return np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0], optimize=True)
    win = _windows(_same_pad(x, k, s), k, s)
    if groups == 1:
        return np.einsum("nchwij,ocij->nohw", win, w, optimize=True)
    return np.einsum("nchwij,cij->nchw", win, w[:, 0], optimize=True)


def bn(x: np.ndarray, sd: dict[str, np.ndarray], p: str) -> np.ndarray:
    scale = sd[f"{p}.weight"] / np.sqrt(sd[f"{p}.running_var"] + EPS)
    shift = sd[f"{p}.bias"] - sd[f"{p}.running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def lite0_forward(images: np.ndarray, sd: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """NHWC 0..255 → (features NHWC (N,7,7,1280), logits (N,1000)), in float64."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    x = (images.astype(np.float64).transpose(0, 3, 1, 2) - 127.0) / 128.0
    x = relu6(bn(conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    index = 0
    for repeats, _kernel, stride, expand, _cin, _cout in STAGES:
        for j in range(repeats):
            p = f"_blocks.{index}"
            inputs = x
            if expand != 1:
                x = relu6(bn(conv(x, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0"))
            depthwise = sd[f"{p}._depthwise_conv.weight"]
            x = relu6(bn(conv(x, depthwise, stride if j == 0 else 1, groups=x.shape[1]), sd, f"{p}._bn1"))
            x = bn(conv(x, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2")
            if x.shape == inputs.shape:
                x = x + inputs
            index += 1
    x = relu6(bn(conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    logits = x.mean(axis=(2, 3)) @ sd["_fc.weight"].T + sd["_fc.bias"]
    return x.transpose(0, 2, 3, 1), logits
