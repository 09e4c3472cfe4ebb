"""``images_root``: the catalogue folder whose photos the gateway serves under ``/images/``.

One meaning: the folder the index was built from (``recipelens-index build --catalog``; its root when that
is a CSV file) — the image names stored in the index are relative to it (``images/D044.jpg`` in the
Kaggle layout, ``<recipe>/photo.jpg`` in the folder-per-recipe layout). Upserted photos are stored
relative to the same root, or by absolute path when outside it; those are served when they lie inside
``images_root``. At start the gateway checks the folder exists and says how many of the live collection's
photos it finds there (and what to set when it finds none).

What ``/images/`` serves: only regular files inside ``images_root`` with an image name whose bytes are a
raster image, with the type the bytes say (:func:`safe_join`, then :func:`read_raster`).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import numpy as np

from indexer.catalog import IMAGE_SUFFIXES
from indexer.store.base import RecipeStore

log = logging.getLogger(__name__)

SAMPLE = 200  # photos of the live collection checked at start
# Served catalogue images: the first bytes say which raster type a file is (never its name or a link's).
RASTER_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"BM", "image/bmp"),
)
MAX_SERVED_IMAGE_BYTES = 64 << 20


def public_image_url(image: str, images_root: Path | None) -> str:
    """Where a client fetches a catalogue image: URLs as they are, files under ``/images/``.

    Stored names are relative to ``images_root`` (see the module docstring); without it, or for an
    absolute path outside it, there is no URL (``""``).
    """
    if not image or image.startswith(("http://", "https://")):
        return image
    if images_root is None:
        return ""
    path = PurePosixPath(image.replace("\\", "/"))
    if path.is_absolute():
        try:
            path = PurePosixPath(Path(image).resolve().relative_to(images_root.resolve()).as_posix())
        except ValueError:
            return ""  # outside the served folder: never expose it
    return "/images/" + quote(path.as_posix().lstrip("/"))


def check_images_root(images_root: Path | None) -> Path | None:
    """The resolved folder, or ``FileNotFoundError`` / ``NotADirectoryError`` naming the setting."""
    if images_root is None:
        return None
    if not images_root.exists():
        raise FileNotFoundError(f"images_root {images_root} does not exist (the catalogue folder to serve)")
    if not images_root.is_dir():
        raise NotADirectoryError(f"images_root {images_root} is not a folder (the catalogue folder to serve)")
    return images_root.resolve()


def image_file(images_root: Path, name: str) -> Path | None:
    """The file a stored image name stands for under ``images_root``, if it is there (never outside)."""
    if not name or name.startswith(("http://", "https://")):
        return None
    path = Path(name) if PurePosixPath(name).is_absolute() else images_root / name
    try:
        target = path.resolve()
    except (OSError, RuntimeError):
        return None
    return target if target.is_relative_to(images_root) and target.is_file() else None


@dataclass(frozen=True)
class ImagesReport:
    """How many sampled photos of the live collection ``images_root`` can serve."""

    collection: str | None
    built_from: str | None
    sampled: int
    found: int
    urls: int
    hint: str = ""

    @property
    def ok(self) -> bool:
        return self.collection is None or self.sampled == self.urls or self.found > 0

    def line(self, images_root: Path | None) -> str:
        if images_root is None:
            return "images_root unset: catalogue photos are not served (cards show no image)"
        if self.collection is None:
            return f"images_root {images_root}: no live collection yet"
        files = self.sampled - self.urls
        line = (
            f"images_root {images_root} serves {self.found} of {files} sampled photo files of collection "
            f"{self.collection} (built from {self.built_from or 'an unrecorded folder'})"
        )
        if self.urls:
            line += f"; {self.urls} are URLs"
        return line + (f"; {self.hint}" if self.hint else "")


def images_report(store: RecipeStore, alias: str, images_root: Path | None) -> ImagesReport:
    """Sample the live collection's photo names and look each up under ``images_root``."""
    collection = store.resolve_alias(alias)
    if collection is None or images_root is None:
        return ImagesReport(collection, None, 0, 0, 0)
    info = store.collection_info(collection)
    built_from = info.extra.get("catalog_root")
    probe = np.full(info.dimension, 1.0 / np.sqrt(info.dimension), dtype=np.float32)
    hits = store.search(collection, probe, limit=SAMPLE, model_version=info.model_version)
    names = [str(h.payload.get("image", "")) for h in hits]
    urls = sum(n.startswith(("http://", "https://")) for n in names)
    found = sum(image_file(images_root, n) is not None for n in names)
    hint = ""
    if names and found == 0 and urls < len(names):
        hint = f"image names look like {names[0]!r}: set images_root to the folder they are relative to"
        if built_from:
            hint += f" ({built_from}, where the collection was built)"
        elif (images_root.parent / names[0]).is_file():
            hint += f" ({images_root.parent})"
    return ImagesReport(collection, built_from, len(names), found, urls, hint)


def safe_join(root: Path | None, relative: str) -> Path | None:
    """``root / relative`` resolved, if it has an image name and lies inside ``root`` (no ``..``, no escape).

    Only image names are served, so pointing ``images_root`` at a catalogue folder never exposes its CSV;
    :func:`read_raster` then checks what the file really is.
    """
    if root is None or not relative or "\x00" in relative:
        return None
    if Path(relative).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return image_file(root.resolve(), relative)


def raster_type(head: bytes) -> str | None:
    """The media type of a raster image from its first bytes; None for anything else (HTML, SVG, text…)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for signature, media_type in RASTER_SIGNATURES:
        if head.startswith(signature):
            return media_type
    return None


def read_raster(target: Path) -> tuple[bytes, str] | None:
    """The bytes and type of ``target`` (already resolved) if it is a regular file holding a raster image.

    The file is opened once without following links and checked through that descriptor, so what is
    checked is what is served even if the path is swapped meanwhile.
    """
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SERVED_IMAGE_BYTES:
            return None
        data = file.read(MAX_SERVED_IMAGE_BYTES + 1)
    media_type = raster_type(data[:16])
    if media_type is None:
        log.warning("images: %s is not a raster image; not served", target)
        return None
    return data, media_type
