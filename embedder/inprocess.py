"""onnxruntime in this process: the models of a :class:`~embedder.repository.ModelRepository`, each fed by
one :class:`~embedder.batcher.MicroBatcher` so concurrent callers share runs.

The embedder service's servicer and the gateway's embedded default both use it. :meth:`InProcessEmbedder.sync`
sets up a batcher for each model the repository holds (once) and closes those of removed models; with
``refresh_on_miss`` (the gateway, which has no reload loop of its own) an unknown version or a status check
rescans the model directory first, so a model added for a re-index is found without a restart.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import grpc
import numpy as np

from embedder.batcher import DEFAULT_MAX_QUEUE_DELAY_S, BatcherClosedError, BatchStats, MicroBatcher
from embedder.embedding import DecodedPhoto, Embedder, EmbedderStatus, ModelSummary, combine_views
from embedder.errors import EmbedderError
from embedder.memory import DecodeBudgetBusy
from embedder.metrics import EmbedderMetrics
from embedder.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, preprocess
from embedder.repository import ModelRepository, ModelRepositoryError, UnknownModelError
from embedder.runtime import EmbeddingModel

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """A loaded model and the batcher that feeds it."""

    model: EmbeddingModel
    batcher: MicroBatcher[np.ndarray, np.ndarray]


def _run_model(model: EmbeddingModel, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """One run per input size in the batch (gallery photos at a model's other sizes may share one)."""
    shapes = {a.shape for a in arrays}
    if len(shapes) == 1:
        return list(model.embed_arrays(np.stack(arrays)))
    out: list[np.ndarray] = [np.empty(0, np.float32)] * len(arrays)
    for shape in shapes:
        picked = [i for i, a in enumerate(arrays) if a.shape == shape]
        for i, vector in zip(picked, model.embed_arrays(np.stack([arrays[i] for i in picked])), strict=True):
            out[i] = vector
    return out


class InProcessEmbedder(Embedder):
    """The repository's models behind the :class:`~embedder.embedding.Embedder` interface."""

    def __init__(
        self,
        repository: ModelRepository | None = None,
        *,
        max_batch_size: int = 32,
        max_delay_s: float = DEFAULT_MAX_QUEUE_DELAY_S,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        refresh_on_miss: bool = False,
        metrics: EmbedderMetrics | None = None,
    ) -> None:
        self.repository = repository
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_pixels = max_pixels
        self.refresh_on_miss = refresh_on_miss
        self.metrics = metrics
        self._served: dict[str, ServedModel] = {}
        self._default: str | None = None
        self._synced = False

    # -- the models served ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return bool(self._served)

    @property
    def default_version(self) -> str | None:
        return self._default

    def served(self) -> dict[str, ServedModel]:
        """Versions being served (newest first)."""
        return dict(self._served)

    def batch_stats(self, version: str | None = None) -> BatchStats:
        """Batching counters of one model (default: the default model)."""
        return self.resolve(version or "").batcher.stats

    def _sync_now(self) -> list[ServedModel]:
        """Match the served set to the repository's models; returns the batchers to close."""
        served: dict[str, ServedModel] = {}
        for model in self.repository.models() if self.repository is not None else []:
            current = self._served.get(model.version)
            if current is not None and current.model is model:
                served[model.version] = current
                continue
            batcher: MicroBatcher[np.ndarray, np.ndarray] = MicroBatcher(
                functools.partial(_run_model, model),
                max_batch_size=self.max_batch_size,
                max_delay_s=self.max_delay_s,
                name=f"embed[{model.version}]",
                observer=None
                if self.metrics is None
                else functools.partial(self.metrics.observe_batch, model.version),
            )
            served[model.version] = ServedModel(model, batcher)
        gone = [s for version, s in self._served.items() if served.get(version) is not s]
        self._served = served
        default = self._repository_default()  # read after models(): a refresh in between is caught here
        self._default = default if default in served else next(iter(served), None)
        self._synced = True
        if self.metrics is not None:
            self.metrics.set_models(s.model for s in served.values())
        return gone

    def _repository_default(self) -> str | None:
        """The repository's default version (its setting, else the newest); ``None`` when it has none."""
        try:
            return self.repository.default_version if self.repository is not None else None
        except ModelRepositoryError:
            return None

    async def sync(self) -> None:
        """Serve exactly the repository's models: a batcher for each new one, close those of removed ones."""
        for old in self._sync_now():
            await old.batcher.close()

    async def attach(self, repository: ModelRepository) -> None:
        """Serve the models of a repository loaded after this embedder was made (the service's start)."""
        self.repository = repository
        await self.sync()

    async def refresh(self) -> None:
        """Rescan the model directory, then :meth:`sync`."""
        if self.repository is not None:
            await asyncio.to_thread(self.repository.refresh)
        await self.sync()

    def resolve(self, version: str) -> ServedModel:
        """The served model of that version (``""``: the default); :class:`EmbedderError` otherwise."""
        if not self._synced:
            self._sync_now()
        if not self._served:
            raise EmbedderError(grpc.StatusCode.UNAVAILABLE, "no model is loaded yet; retry shortly")
        served = self._served.get(version or self._default or "")
        if served is None:
            raise UnknownModelError(version, list(self._served))
        return served

    async def _resolve(self, version: str) -> ServedModel:
        try:
            return self.resolve(version)
        except EmbedderError:
            if not self.refresh_on_miss:
                raise
        await self.refresh()
        return self.resolve(version)

    def model(self, version: str = "") -> EmbeddingModel:
        return self.resolve(version).model

    # -- the interface ----------------------------------------------------------------------------------

    async def prepare(self, image: bytes, model_version: str, executor: Executor | None = None) -> np.ndarray:
        size = (await self._resolve(model_version)).model.image_size
        work = functools.partial(preprocess, image, size=size, max_pixels=self.max_pixels)
        return await asyncio.get_running_loop().run_in_executor(executor, work)

    async def prepare_many(
        self, images: Sequence[bytes], model_version: str, executor: Executor | None = None
    ) -> list[np.ndarray | BaseException]:
        """Decode several photos in parallel; each failure is returned in its place (not raised)."""
        size = (await self._resolve(model_version)).model.image_size
        loop = asyncio.get_running_loop()
        work = functools.partial(preprocess, size=size, max_pixels=self.max_pixels)
        results = await asyncio.gather(
            *(loop.run_in_executor(executor, work, data) for data in images), return_exceptions=True
        )
        return list(results)

    def _held(self, version: str) -> ServedModel | None:
        """The served model of that version if it is held now (no rescan: the async path does that)."""
        return self._served.get(version or self._default or "") if self._synced else None

    def prepare_here(self, image: bytes, model_version: str) -> np.ndarray | None:
        served = self._held(model_version)
        if served is None:
            return None
        return preprocess(image, size=served.model.image_size, max_pixels=self.max_pixels)

    def embed_here(self, prepared: np.ndarray, model_version: str) -> np.ndarray | None:
        served = self._held(model_version)
        vectors = None if served is None else served.batcher.run_here([prepared])
        return None if vectors is None else vectors[0]

    def prepared(self, photo: DecodedPhoto) -> np.ndarray:
        return photo.array

    async def embed_prepared(
        self, prepared: Sequence[np.ndarray], model_version: str, timeout_s: float | None = None
    ) -> np.ndarray:
        served = await self._resolve(model_version)
        try:
            vectors = await asyncio.wait_for(served.batcher.submit(list(prepared)), timeout_s)
        except BatcherClosedError:
            raise EmbedderError(
                grpc.StatusCode.UNAVAILABLE,
                f"model {served.model.version} was unloaded during the request; retry",
            ) from None
        except TimeoutError:
            raise EmbedderError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"embedding did not finish within {timeout_s:.1f} s"
            ) from None
        if not vectors:
            return np.zeros((0, served.model.dimension), dtype=np.float32)
        return np.stack(vectors)

    async def embed_gallery(
        self,
        photos: Sequence[DecodedPhoto],
        model_version: str,
        timeout_s: float | None = None,
        executor: Executor | None = None,
    ) -> np.ndarray:
        """Each photo at every gallery size (its decoded array at the model's size, its bytes decoded
        again at the others), one batch per size, :func:`~embedder.embedding.combine_views`."""
        served = await self._resolve(model_version)
        model = served.model
        views = []
        for size in model.gallery_views:
            arrays = await asyncio.gather(
                *(self._at_size(i, photo, size, executor) for i, photo in enumerate(photos))
            )
            views.append(await self.embed_prepared(arrays, model.version, timeout_s))
        return combine_views(views)

    async def _at_size(
        self, index: int, photo: DecodedPhoto, size: int, executor: Executor | None
    ) -> np.ndarray:
        if photo.array.shape[:2] == (size, size):
            return photo.array
        work = functools.partial(preprocess, photo.data, size=size, max_pixels=self.max_pixels)
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, work)
        except ImageDecodeError as exc:
            raise EmbedderError(
                grpc.StatusCode.INVALID_ARGUMENT, f"image {index} at {size} px: {exc}"
            ) from None
        except DecodeBudgetBusy as exc:
            raise EmbedderError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"image {index}: {exc}") from None

    async def status(self, timeout_s: float = 10.0) -> EmbedderStatus:
        if self.refresh_on_miss:
            await self.refresh()
        elif not self._synced:
            self._sync_now()
        models = [
            ModelSummary(s.model.version, s.model.dimension, s.model.image_size, s.model.gallery_views)
            for s in self._served.values()
        ]
        where = self.repository.model_dir if self.repository is not None else "(no model directory yet)"
        runs = ", ".join(f"{s.model.version} {s.model.runs_on}" for s in self._served.values())
        return EmbedderStatus(
            models, self._default, f"in-process onnxruntime from {where} ({runs or 'no model'})"
        )

    async def wait_ready(self, timeout_s: float) -> None:
        """In-process models are loaded before the embedder is used: ready unless none is held."""
        if not (await self.status(timeout_s)).models:
            raise TimeoutError(f"no model in {self.repository.model_dir if self.repository else '(none)'}")

    async def aclose(self) -> None:
        served, self._served, self._default = self._served, {}, None
        for s in served.values():
            await s.batcher.close()
