"""A corpus of malformed and adversarial uploads, generated at test time, each with the answer it must get.

``OK``: a real picture, however odd, is searched. ``INVALID``: not a picture we read (gRPC INVALID_ARGUMENT,
HTTP 400). ``TOO_LARGE``: over the byte or pixel limit (gRPC RESOURCE_EXHAUSTED, HTTP 413).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tests.support.imagegen import encode, synthetic_photo

OK, INVALID, TOO_LARGE = "OK", "INVALID", "TOO_LARGE"
GRPC_STATUS = {OK: "OK", INVALID: "INVALID_ARGUMENT", TOO_LARGE: "RESOURCE_EXHAUSTED"}
HTTP_STATUS = {OK: 200, INVALID: 400, TOO_LARGE: 413}


@dataclass(frozen=True)
class Hostile:
    name: str
    make: Callable[[int], bytes]  # upload limit in bytes → the upload
    expect: str


def _photo(size: tuple[int, int] = (320, 240)) -> Image.Image:
    return synthetic_photo(7).resize(size)


def _jpeg(**params: object) -> bytes:
    return encode(_photo(), "JPEG", quality=85, **params)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png_raw(width: int, height: int, bit_depth: int, colour: int, rows: bytes | None) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    parts = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", ihdr)]
    if rows is not None:
        parts.append(_png_chunk(b"IDAT", zlib.compress(rows, 9)))
    parts.append(_png_chunk(b"IEND", b""))
    return b"".join(parts)


def _bomb_png(_: int) -> bytes:
    """20000×20000 1-bit black: ~50 MB of pixels in a file of a few tens of KiB."""
    side = 20_000
    row = b"\x00" + b"\x00" * (side // 8)
    return _png_raw(side, side, 1, 0, row * side)


def _huge_header_png(_: int) -> bytes:
    """A PNG header claiming 100000×100000 pixels, with no pixel data at all."""
    return _png_raw(100_000, 100_000, 8, 2, None)


def _zero_width_png(_: int) -> bytes:
    return _png_raw(0, 16, 8, 2, b"")


def _bad_crc_png(_: int) -> bytes:
    data = bytearray(encode(_photo((64, 48)), "PNG"))
    data[29] ^= 0xFF  # a byte of the IHDR CRC
    return bytes(data)


def _jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(offset of the marker, marker byte) of each JPEG segment before the scan."""
    found, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        found.append((pos, marker))
        if marker == 0xDA:
            break
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return found


def _bad_huffman_jpeg(_: int) -> bytes:
    """Every Huffman table claims 255 codes of each length: libjpeg's 'Bogus Huffman table definition'."""
    data = bytearray(_jpeg())
    for pos, marker in _jpeg_segments(bytes(data)):
        if marker == 0xC4:
            data[pos + 5 : pos + 21] = b"\xff" * 16
    return bytes(data)


def _huge_sof_jpeg(_: int) -> bytes:
    """A JPEG whose frame header claims 65500×65500 pixels."""
    data = bytearray(_jpeg())
    for pos, marker in _jpeg_segments(bytes(data)):
        if marker in (0xC0, 0xC2):
            data[pos + 5 : pos + 9] = struct.pack(">HH", 65500, 65500)
    return bytes(data)


def _exif_jpeg(orientation: int) -> Callable[[int], bytes]:
    def make(_: int) -> bytes:
        exif = Image.Exif()
        exif[0x0112] = orientation
        return _jpeg(exif=exif.tobytes())

    return make


def _garbage_exif_jpeg(_: int) -> bytes:
    """An APP1 Exif segment full of noise right after SOI."""
    noise = np.random.default_rng(3).integers(0, 256, 600, dtype=np.uint8).tobytes()
    body = b"Exif\x00\x00" + noise
    data = _jpeg()
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + data[2:]


def _truncated(make: Callable[[], bytes], fraction: float) -> Callable[[int], bytes]:
    return lambda _: (data := make())[: max(1, int(len(data) * fraction))]


def _save(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _cmyk(_: int) -> bytes:
    return _save(_photo().convert("CMYK"), "JPEG", quality=85)


def _grey16(_: int) -> bytes:
    arr = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    return _save(Image.fromarray(arr), "PNG")


def _palette_transparent(_: int) -> bytes:
    img = _photo((64, 48)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _save(img, "PNG", transparency=0)


def _animated_gif(_: int) -> bytes:
    frames = [synthetic_photo(i).resize((48, 36)).convert("P") for i in range(300)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10, loop=0)


def _multipage_tiff(_: int) -> bytes:
    pages = [synthetic_photo(i).resize((64, 48)) for i in range(5)]
    return _save(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def _float_tiff(_: int) -> bytes:
    arr = np.linspace(-1e6, 1e6, 64 * 48, dtype=np.float32).reshape(48, 64)
    return _save(Image.fromarray(arr), "TIFF")


def _exactly_at_limit(limit: int) -> bytes:
    """A valid JPEG padded after its end marker to exactly the upload limit."""
    data = _jpeg()
    return data + b"\x00" * (limit - len(data))


def _over_limit(limit: int) -> bytes:
    return _exactly_at_limit(limit) + b"\x00"


def _far_over_limit(limit: int) -> bytes:
    return _exactly_at_limit(limit) * 3


def _png_html_polyglot(_: int) -> bytes:
    """A valid PNG with an HTML page (and script) after its IEND chunk."""
    return encode(_photo((64, 48)), "PNG") + b"<html><script>alert(document.cookie)</script></html>"


CORPUS: list[Hostile] = [
    Hostile("zero-bytes", lambda _: b"", INVALID),
    Hostile("one-byte", lambda _: b"\xff", INVALID),
    Hostile("jpeg-soi-only", lambda _: b"\xff\xd8", INVALID),
    Hostile("jpeg-cut-in-header", _truncated(_jpeg, 0.02), INVALID),
    Hostile("jpeg-cut-at-half", _truncated(_jpeg, 0.5), INVALID),
    Hostile("jpeg-cut-before-eoi", lambda _: _jpeg()[:-200], INVALID),
    Hostile("png-cut-in-header", lambda _: encode(_photo(), "PNG")[:30], INVALID),
    Hostile("png-cut-at-half", _truncated(lambda: encode(_photo(), "PNG"), 0.5), INVALID),
    Hostile("png-bad-crc", _bad_crc_png, INVALID),
    Hostile("png-zero-width", _zero_width_png, INVALID),
    Hostile("plain-text", lambda _: b"just some text, not a photo\n" * 20, INVALID),
    Hostile(
        "html", lambda _: b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", INVALID
    ),
    Hostile(
        "svg-with-script",
        lambda _: (
            b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            b"<script>alert(1)</script><rect width='10' height='10'/></svg>"
        ),
        INVALID,
    ),
    Hostile("pdf-header", lambda _: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n%%EOF\n", INVALID),
    Hostile("zip-file", lambda _: b"PK\x03\x04" + bytes(100), INVALID),
    Hostile("heic-like", lambda _: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), INVALID),
    Hostile("gif-js-polyglot", lambda _: b"GIF89a/*\x00\x00*/=alert(1);//" + bytes(32), INVALID),
    Hostile(
        "random-bytes", lambda _: np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes(), INVALID
    ),
    Hostile("ico", lambda _: _save(_photo((32, 32)), "ICO"), INVALID),
    Hostile("jpeg-bogus-huffman", _bad_huffman_jpeg, INVALID),
    Hostile("png-20000x20000-bomb", _bomb_png, TOO_LARGE),
    Hostile("png-header-100000x100000", _huge_header_png, TOO_LARGE),
    Hostile("jpeg-header-65500x65500", _huge_sof_jpeg, TOO_LARGE),
    Hostile("over-upload-limit", _over_limit, TOO_LARGE),
    Hostile("far-over-upload-limit", _far_over_limit, TOO_LARGE),
    Hostile("exactly-upload-limit", _exactly_at_limit, OK),
    Hostile("one-pixel", lambda _: encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), OK),
    Hostile("strip-1x10000", lambda _: encode(Image.new("RGB", (1, 10_000), (10, 200, 10)), "PNG"), OK),
    Hostile("cmyk-jpeg", _cmyk, OK),
    Hostile("greyscale-jpeg", lambda _: _save(_photo().convert("L"), "JPEG"), OK),
    Hostile("png-16-bit-grey", _grey16, OK),
    Hostile("png-rgba", lambda _: encode(_photo((64, 48)).convert("RGBA"), "PNG"), OK),
    Hostile("png-palette-transparency", _palette_transparent, OK),
    Hostile("gif-animated-300-frames", _animated_gif, OK),
    Hostile("tiff-multipage", _multipage_tiff, OK),
    Hostile("tiff-float", _float_tiff, OK),
    Hostile("webp", lambda _: encode(_photo(), "WEBP", quality=80), OK),
    Hostile("bmp", lambda _: encode(_photo((64, 48)), "BMP"), OK),
    Hostile("jpeg-exif-orientation-9", _exif_jpeg(9), OK),
    Hostile("jpeg-exif-rotated-6", _exif_jpeg(6), OK),
    Hostile("jpeg-garbage-exif", _garbage_exif_jpeg, OK),
    Hostile("png-html-polyglot", _png_html_polyglot, OK),
]
