"""Publishing a model folder: assembled under a hidden temporary name, then renamed into place.

The folder is ``<out_dir>/<name>-<version>``, the version a hash of the model's bytes, so a folder of
that name already there holds the same model: it is kept as it is and the new copy is dropped. Light
(no TensorFlow): the ONNX export and the int8 twin publish the same way.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from embedder.manifest import ModelManifest

log = logging.getLogger(__name__)


@contextmanager
def staging_folder(out_dir: Path, prefix: str) -> Iterator[Path]:
    """A fresh hidden folder ``<out_dir>/.<prefix>-…`` to assemble a model in; removed unless published."""
    staging = Path(tempfile.mkdtemp(prefix=f".{prefix}-", dir=out_dir))
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def publish_folder(staging: Path, out_dir: Path, manifest: ModelManifest) -> tuple[Path, bool]:
    """Rename ``staging`` to ``<out_dir>/<name>-<version>``; (that folder, False) if it was already there."""
    final = out_dir / f"{manifest.name}-{manifest.version}"
    if final.exists():
        log.info("model %s already at %s; keeping it", manifest.version, final)
        return final, False
    staging.rename(final)
    return final, True
