"""Which embedder a service or a tool uses: the gRPC service at an address, or onnxruntime in-process.

The one place the choice is made (the interface module :mod:`embedder.embedding` knows neither side).
"""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

from embedder.batcher import DEFAULT_MAX_QUEUE_DELAY_S
from embedder.embedding import Embedder
from embedder.preprocess import DEFAULT_MAX_PIXELS
from embedder.providers import RuntimeOptions


def open_embedder(
    embedder_address: str | None,
    model_dir: str | Path,
    *,
    timeout_s: float = 10.0,
    retries: int = 2,
    max_batch_size: int = 32,
    max_delay_s: float = DEFAULT_MAX_QUEUE_DELAY_S,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    watch_model_dir: bool = False,
    **runtime: Unpack[RuntimeOptions],
) -> Embedder:
    """The service at ``embedder_address``; unset, every model folder in ``model_dir`` loaded here.

    ``watch_model_dir`` (services without a reload loop: the gateway) tolerates a model directory that holds
    no model yet and rescans it when a version is missing. Folders that exist but all fail verification
    raise :class:`embedder.manifest.ModelIntegrityError` naming them. ``runtime``: how the in-process models
    run (a service passes its settings' :meth:`~embedder.settings.EmbeddingSettings.runtime_options`).
    """
    if embedder_address:
        from embedder.remote import RemoteEmbedder  # no onnxruntime on this path

        return RemoteEmbedder(embedder_address, timeout_s=timeout_s, retries=retries)
    from embedder.inprocess import InProcessEmbedder
    from embedder.repository import ModelRepository

    repository = ModelRepository(model_dir, allow_empty=watch_model_dir, **runtime)
    return InProcessEmbedder(
        repository,
        max_batch_size=max_batch_size,
        max_delay_s=max_delay_s,
        max_pixels=max_pixels,
        refresh_on_miss=watch_model_dir,
    )
