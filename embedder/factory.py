"""Which embedder a service or a tool uses: the gRPC service at an address, or onnxruntime in-process.

The one place the choice is made (the interface module :mod:`embedder.embedding` knows neither side).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from embedder.batcher import DEFAULT_MAX_QUEUE_DELAY_S
from embedder.embedding import Embedder
from embedder.preprocess import DEFAULT_MAX_PIXELS


def open_embedder(
    embedder_address: str | None,
    model_dir: str | Path,
    *,
    timeout_s: float = 10.0,
    retries: int = 2,
    providers: Sequence[str] | None = None,
    intra_op_threads: int = 0,
    spinning: bool = False,
    max_batch_size: int = 32,
    max_delay_s: float = DEFAULT_MAX_QUEUE_DELAY_S,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    watch_model_dir: bool = False,
) -> Embedder:
    """The service at ``embedder_address``; unset, every model folder in ``model_dir`` loaded here.

    ``watch_model_dir`` (services without a reload loop: the gateway) tolerates a model directory that holds
    no model yet and rescans it when a version is missing. Folders that exist but all fail verification
    raise :class:`embedder.manifest.ModelIntegrityError` naming them.
    """
    if embedder_address:
        from embedder.remote import RemoteEmbedder  # no onnxruntime on this path

        return RemoteEmbedder(embedder_address, timeout_s=timeout_s, retries=retries)
    from embedder.inprocess import InProcessEmbedder
    from embedder.providers import DEFAULT_PROVIDERS
    from embedder.repository import ModelRepository

    repository = ModelRepository(
        model_dir,
        providers=DEFAULT_PROVIDERS if providers is None else providers,
        intra_op_threads=intra_op_threads,
        spinning=spinning,
        allow_empty=watch_model_dir,
    )
    return InProcessEmbedder(
        repository,
        max_batch_size=max_batch_size,
        max_delay_s=max_delay_s,
        max_pixels=max_pixels,
        refresh_on_miss=watch_model_dir,
    )
