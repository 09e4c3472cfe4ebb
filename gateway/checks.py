"""What the search path checks of a request before any model runs: the API key, the photo's bytes, the filter.

Each check raises :class:`~gateway.errors.GatewayError` with the status its front end translates
(``INVALID_ARGUMENT``, ``RESOURCE_EXHAUSTED``, ``UNAUTHENTICATED``); :class:`~gateway.pipeline.SearchGateway`
runs them in this order, and the CLI sniffs a photo with the same :func:`sniff_image` before it uploads.
"""

from __future__ import annotations

import hmac
import io
from collections.abc import Sequence

from PIL import Image, UnidentifiedImageError
from pydantic import SecretStr

from embedder.preprocess import IMAGE_SIZE, over_budget
from gateway.errors import ErrorKind, GatewayError
from indexer.store.base import InvalidFilter, SearchFilter

# Formats we accept, by what Pillow finds in the bytes (MPO: multi-picture JPEGs from phone cameras).
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})


def key_matches(presented: str | None, keys: Sequence[SecretStr]) -> bool:
    """Constant-time comparison against every configured key (no early exit on the first match)."""
    if presented is None:
        return False
    given = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.get_secret_value().encode())
    return matched


def bearer_token(header: str | None) -> str | None:
    """``Bearer <key>`` → ``<key>``; anything else → None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def sniff_image(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[str, int, int]:
    """Check size, format (from the bytes) and pixel count before any pixel is decoded."""
    if len(data) > max_bytes:
        raise GatewayError(
            ErrorKind.RESOURCE_EXHAUSTED, f"image is {len(data)} bytes, the limit is {max_bytes} bytes"
        )
    if not data:
        raise GatewayError(ErrorKind.INVALID_ARGUMENT, "image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format or "", img.size
            if fmt == "JPEG":
                img.draft("RGB", (IMAGE_SIZE, IMAGE_SIZE))
            too_costly = over_budget(img, (width, height)) if width * height <= max_pixels else None
    except UnidentifiedImageError:
        raise GatewayError(ErrorKind.INVALID_ARGUMENT, "image: not a picture format we can read") from None
    except Exception as exc:  # malformed headers raise many exception types
        raise GatewayError(ErrorKind.INVALID_ARGUMENT, f"image: cannot read its header: {exc}") from None
    if fmt not in ACCEPTED_FORMATS:
        accepted = ", ".join(sorted(ACCEPTED_FORMATS))
        raise GatewayError(
            ErrorKind.INVALID_ARGUMENT, f"image: {fmt or 'unknown'} is not accepted ({accepted})"
        )
    if width * height > max_pixels:
        raise GatewayError(
            ErrorKind.RESOURCE_EXHAUSTED,
            f"image is {width}x{height} = {width * height} pixels, the limit is {max_pixels}",
        )
    if too_costly:
        raise GatewayError(ErrorKind.RESOURCE_EXHAUSTED, too_costly)
    return fmt, width, height


def search_filter(
    categories: Sequence[str] = (), must_include: Sequence[str] = (), must_exclude: Sequence[str] = ()
) -> SearchFilter | None:
    """The filter both front ends pass on (``None`` when empty); over the caps: INVALID_ARGUMENT."""
    try:
        built = SearchFilter(tuple(categories), tuple(must_include), tuple(must_exclude))
    except InvalidFilter as exc:
        raise GatewayError(ErrorKind.INVALID_ARGUMENT, str(exc)) from None
    return None if built.is_empty() else built
