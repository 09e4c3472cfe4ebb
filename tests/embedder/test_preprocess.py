"""The one preprocessing function: odd image modes, orientation, broken files, bombs, and one code path."""

from __future__ import annotations

import ast
import io
import re
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import embedder.preprocess as preprocessing
from embedder.preprocess import ImageDecodeError, decode, preprocess, preprocess_file
from embedder.runtime import EmbeddingModel
from tests.support.imagegen import encode, synthetic_photo

REPO_ROOT = Path(__file__).resolve().parents[1]
RED, BLUE, WHITE = (220, 20, 20), (20, 20, 220), (255, 255, 255)


def two_halves(mode: str, top: object, bottom: object, size: tuple[int, int] = (120, 80)) -> Image.Image:
    """Top half one colour, bottom half another (fill values in ``mode``)."""
    img = Image.new(mode, size, top)  # type: ignore[arg-type]
    img.paste(bottom, (0, size[1] // 2, size[0], size[1]))  # type: ignore[arg-type]
    return img


def mean_colour(region: np.ndarray) -> np.ndarray:
    return np.asarray(region, dtype=np.float64).reshape(-1, 3).mean(axis=0)


def test_output_shape_and_dtype(photo_bytes: list[bytes]) -> None:
    out = preprocess(photo_bytes[0])
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    small = preprocess(photo_bytes[0], size=64)
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    assert out.flags.writeable and out.flags.c_contiguous


def test_exif_orientation_6_is_applied() -> None:
    img = two_halves("RGB", RED, BLUE, size=(160, 80))  # landscape, red on top
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = encode(img, "JPEG", quality=95, exif=exif.tobytes())
    assert decode(data).size == (80, 160)  # transposed: now portrait
    out = preprocess(data)
    # after a clockwise quarter turn the red top half is the right half
    assert mean_colour(out[:, 150:])[0] > 180 and mean_colour(out[:, :70])[2] > 180
    plain = preprocess(encode(img, "JPEG", quality=95))
    assert mean_colour(plain[:70])[0] > 180  # without EXIF red stays on top


def test_cmyk_jpeg_becomes_rgb() -> None:
    img = Image.new("CMYK", (64, 48), (0, 255, 255, 0))  # pure red in CMYK
    data = encode(img, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    r, g, b = mean_colour(preprocess(data))
    assert r > 200 and g < 60 and b < 60


def test_palette_with_transparency_is_composited_on_white() -> None:
    img = Image.new("P", (64, 64), 1)
    img.putpalette([0, 0, 0, *RED] + [0] * (256 - 2) * 3)
    img.paste(0, (0, 32, 64, 64))  # bottom half: palette index 0, declared transparent
    data = encode(img, "PNG", transparency=0)
    out = preprocess(data)
    np.testing.assert_allclose(mean_colour(out[:100]), RED, atol=2)
    np.testing.assert_allclose(mean_colour(out[124:]), WHITE, atol=2)  # not black


@pytest.mark.parametrize(
    ("mode", "opaque", "clear"),
    [("LA", (90, 255), (0, 0)), ("RGBA", (*BLUE, 255), (0, 0, 0, 0))],
)
def test_alpha_is_composited_on_white(mode: str, opaque: tuple[int, ...], clear: tuple[int, ...]) -> None:
    data = encode(two_halves(mode, opaque, clear, size=(64, 64)), "PNG")
    assert Image.open(io.BytesIO(data)).mode == mode
    out = preprocess(data)
    expected_top = (90, 90, 90) if mode == "LA" else BLUE
    np.testing.assert_allclose(mean_colour(out[:100]), expected_top, atol=2)
    np.testing.assert_allclose(mean_colour(out[124:]), WHITE, atol=2)


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 224).astype(np.uint16), (224, 1))
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = preprocess(data)
    row = out[112, :, 0].astype(int)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()  # grey
    assert row[0] <= 2 and row[-1] >= 253
    assert 115 <= row[112] <= 140  # mid-grey, where clipping would give 255
    assert (np.diff(row) >= 0).all()


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (48, 48), RED), Image.new("RGB", (48, 48), BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    data = buffer.getvalue()
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    r, _, b = mean_colour(preprocess(data))
    assert r > 180 and b < 60


def _truncated_jpeg() -> bytes:
    data = encode(synthetic_photo(7), "JPEG", quality=90)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file (0 bytes)"),
        (b"ingredients: 2 eggs, 100 g flour\n", "not an image"),
        (_truncated_jpeg(), "cannot decode JPEG"),
    ],
    ids=["zero-bytes", "text-file", "truncated-jpeg"],
)
def test_broken_files_raise_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=re.escape(message)):
        preprocess(data)


def _png_header_only(width: int, height: int) -> bytes:
    """A 1-bit greyscale PNG that claims ``width × height`` pixels but holds almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_from_the_header() -> None:
    bomb = _png_header_only(20_000, 20_000)
    assert len(bomb) < 200
    started = time.perf_counter()
    with pytest.raises(ImageDecodeError, match=r"too large: 20000x20000 = 400000000 pixels"):
        preprocess(bomb)
    assert time.perf_counter() - started < 0.5  # refused before decoding 400 M pixels
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 10000"):
        preprocess(encode(synthetic_photo(1, (200, 100)), "PNG"), max_pixels=10_000)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    text = tmp_path / "recipe.txt"
    text.write_text("not a photo")
    with pytest.raises(ImageDecodeError, match=r"recipe\.txt: not an image"):
        preprocess_file(text)
    with pytest.raises(ImageDecodeError, match=r"missing\.jpg: cannot read file"):
        preprocess_file(tmp_path / "missing.jpg")


def test_one_preprocessing_function(tiny_model_dir: Path, photo_bytes: list[bytes]) -> None:
    """Serving (``EmbeddingModel.embed_images``) is exactly ``embed_arrays(preprocess(...))``."""
    from embedder import runtime

    assert runtime.preprocess is preprocess is preprocessing.preprocess
    model = EmbeddingModel(tiny_model_dir)
    images = photo_bytes[:8]
    served = model.embed_images(images)
    direct = model.embed_arrays(np.stack([preprocess(data) for data in images]))
    np.testing.assert_array_equal(served, direct)


def _python_files() -> list[Path]:
    folders = ("embedder", "indexer", "gateway", "training")
    return sorted(p for folder in folders for p in (REPO_ROOT / folder).rglob("*.py"))


def test_no_second_preprocessing_path() -> None:
    """No other module defines its own ``preprocess`` or decodes photos with Keras/TensorFlow helpers."""
    own = REPO_ROOT / "embedder" / "preprocess.py"
    banned_calls = {"load_img", "decode_jpeg", "decode_image", "decode_png"}
    problems: list[str] = []
    for path in _python_files():
        if path == own:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(REPO_ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "preprocess":
                problems.append(f"{where}:{node.lineno}: defines its own preprocess()")
            imports_it = isinstance(node, ast.ImportFrom) and any(a.name == "preprocess" for a in node.names)
            if imports_it and isinstance(node, ast.ImportFrom) and node.module != "embedder.preprocess":
                problems.append(f"{where}:{node.lineno}: imports preprocess from {node.module}")
            if isinstance(node, ast.Attribute | ast.Name):
                name = node.attr if isinstance(node, ast.Attribute) else node.id
                if name in banned_calls:
                    problems.append(f"{where}:{node.lineno}: uses {name} instead of embedder.preprocess")
    assert not problems, "\n".join(problems)
