"""The one embedder interface: photos → unit vectors of a named model version, in-process or remote.

Implementations: :class:`embedder.inprocess.InProcessEmbedder` (onnxruntime in this process, one
micro-batcher per model version) and :class:`embedder.remote.RemoteEmbedder` (the gRPC embedder service);
:func:`embedder.factory.open_embedder` picks one. The work is split in the two stages a service measures:
:meth:`Embedder.prepare` (decode; in-process only — the remote embedder decodes on its side) and
:meth:`Embedder.embed_prepared`; a caller already in a worker thread tries :meth:`Embedder.prepare_here` and
:meth:`Embedder.embed_here` first, which do both right there when they can. Failures raise
:class:`embedder.errors.EmbedderError` (or :class:`embedder.preprocess.ImageDecodeError` for a photo that
cannot be decoded).

:class:`SyncEmbedder` drives one on a background event loop for command-line tools (the indexer's build).

Catalogue (gallery) photos go through :meth:`Embedder.embed_gallery`: a model with several
``gallery_sizes`` sees each one at every size and :func:`combine_views` sums the unit vectors (a query
photo is embedded at the model's own size alone, so a search costs the same).
"""

from __future__ import annotations

import asyncio
import weakref
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Protocol, Self, TypeVar

import grpc
import numpy as np

from embedder.background import BackgroundLoop
from embedder.errors import EmbedderError

T = TypeVar("T")


@dataclass(frozen=True)
class ModelSummary:
    """What a caller needs to know about one model an embedder holds."""

    version: str
    dimension: int
    image_size: int
    gallery_sizes: tuple[int, ...] = ()  # the model's own size first; () or one size: no extra views

    @property
    def gallery_views(self) -> tuple[int, ...]:
        return self.gallery_sizes or (self.image_size,)


def combine_views(views: Sequence[np.ndarray]) -> np.ndarray:
    """One gallery vector per photo from its ``(N, D)`` unit vectors at each gallery size: the sum,
    re-normalised. (Multi-scale descriptors of instance retrieval; one view returns it as it is.)"""
    if len(views) == 1:
        return np.asarray(views[0], dtype=np.float32)
    total = np.sum([np.asarray(v, dtype=np.float32) for v in views], axis=0)
    norms = np.linalg.norm(total, axis=1, keepdims=True)
    return (total / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class EmbedderStatus:
    """What the embedder holds: its models (newest first), the default version and where it runs."""

    models: list[ModelSummary]
    default_version: str | None
    description: str

    @property
    def versions(self) -> list[str]:
        return sorted(m.version for m in self.models)

    def model(self, version: str | None = None) -> ModelSummary | None:
        """The summary of that version (``None``: the default), or ``None`` when it is not held."""
        wanted = version or self.default_version
        return next((m for m in self.models if m.version == wanted), None)


class DecodedPhoto(Protocol):
    """A photo a caller already read and decoded (the indexer does, to report bad photos)."""

    @property
    def data(self) -> bytes: ...

    @property
    def array(self) -> np.ndarray: ...


class Embedder(ABC):
    """Embeds photos with an exact model version; see the module docstring."""

    @abstractmethod
    async def prepare(self, image: bytes, model_version: str, executor: Executor | None = None) -> Any:
        """What :meth:`embed_prepared` takes for one photo (decoded here, or the bytes as they are)."""

    @abstractmethod
    def prepared(self, photo: DecodedPhoto) -> Any:
        """What :meth:`embed_prepared` takes for a photo the caller has already decoded."""

    @abstractmethod
    async def embed_prepared(
        self, prepared: Sequence[Any], model_version: str, timeout_s: float | None = None
    ) -> np.ndarray:
        """``(N, D)`` float32 unit vectors of that model version, one per prepared photo."""

    def prepare_here(self, image: bytes, model_version: str) -> Any | None:
        """:meth:`prepare` in the calling thread (a caller's worker), or ``None`` where it cannot (then
        :meth:`prepare`): the in-process embedder decodes here for a model it holds."""
        return None

    def embed_here(self, prepared: Any, model_version: str) -> np.ndarray | None:
        """One prepared photo's ``(D,)`` vector, computed in the calling thread when the model is idle
        (caller-runs); ``None`` when it is busy or not in this process (then :meth:`embed_prepared`)."""
        return None

    def stream(
        self, batches: Iterable[Sequence[Any]], model_version: str, max_in_flight: int
    ) -> Iterator[np.ndarray] | None:
        """A synchronous stream of prepared batches → vectors, where one beats concurrent calls; else None.

        The remote embedder streams over one ``EmbedStream`` call; ``batches`` is read lazily.
        """
        return None

    @abstractmethod
    async def embed_gallery(
        self,
        photos: Sequence[DecodedPhoto],
        model_version: str,
        timeout_s: float | None = None,
        executor: Executor | None = None,
    ) -> np.ndarray:
        """``(N, D)`` gallery vectors: each photo at every gallery size of the model, :func:`combine_views`
        (``executor`` decodes the other sizes, in-process)."""

    @abstractmethod
    async def status(self, timeout_s: float = 10.0) -> EmbedderStatus:
        """The models held now (raises :class:`EmbedderError` UNAVAILABLE when unreachable)."""

    @abstractmethod
    async def wait_ready(self, timeout_s: float) -> None:
        """Return once the embedder can embed (``TimeoutError`` after ``timeout_s``)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release models, batchers and channels."""

    async def embed(
        self, images: Sequence[bytes], model_version: str, executor: Executor | None = None
    ) -> np.ndarray:
        """Encoded photos → ``(N, D)`` vectors (both stages at once)."""
        prepared = [await self.prepare(image, model_version, executor) for image in images]
        return await self.embed_prepared(prepared, model_version)


class Closeable(Protocol):
    """What :class:`LoopDriven` drives: anything closed by awaiting ``aclose``."""

    async def aclose(self) -> None: ...


def _shut(loop: BackgroundLoop, resource: Closeable) -> None:
    if loop.closed:
        return
    try:
        loop.call(resource.aclose())
    finally:
        loop.close()


class LoopDriven:
    """An asynchronous resource driven from synchronous code on an event loop of its own.

    The resource and the loop are closed by :meth:`close`, or when this object is garbage-collected.
    """

    def __init__(self, resource: Closeable, name: str) -> None:
        self._loop = BackgroundLoop(name)
        self._finalizer = weakref.finalize(self, _shut, self._loop, resource)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self._loop.call(coro, timeout=timeout)

    def close(self) -> None:
        """Close the resource and stop the loop; safe to call twice."""
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncEmbedder(LoopDriven):
    """An :class:`Embedder` pinned to one model version, driven from synchronous code (CLIs, the build).

    ``timeout_s`` bounds each batch (``None``: no bound, as for onnxruntime in this process).
    """

    def __init__(
        self,
        embedder: Embedder,
        model_version: str | None = None,
        *,
        max_in_flight: int = 4,
        timeout_s: float | None = 60.0,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        super().__init__(embedder, "embedder-client")
        self.embedder = embedder
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        try:
            status = self._call(embedder.status(timeout_s or 60.0))
            model = status.model(model_version)
            if model is None:
                listed = ", ".join(status.versions) or "none"
                wanted = model_version or "(default)"
                raise EmbedderError(
                    grpc.StatusCode.NOT_FOUND, f"unknown model version {wanted!r} (available: {listed})"
                )
        except BaseException:
            self.close()
            raise
        self.version = model.version
        self.dimension = model.dimension
        self.image_size = model.image_size
        self.gallery_views = model.gallery_views

    def embed(self, images: Sequence[bytes]) -> np.ndarray:
        """Encoded photos → ``(N, D)`` vectors of the pinned version."""
        vectors: np.ndarray = self._call(self.embedder.embed(list(images), self.version))
        return vectors

    def embed_batches(self, batches: Iterable[Sequence[DecodedPhoto]]) -> Iterator[np.ndarray]:
        """One ``(N, D)`` array of query vectors per batch, in order, ``max_in_flight`` batches at once."""
        prepared = ([self.embedder.prepared(photo) for photo in batch] for batch in batches)
        streamed = self.embedder.stream(prepared, self.version, self.max_in_flight)
        if streamed is not None:
            yield from streamed
            return
        yield from self._in_flight(
            self.embedder.embed_prepared(items, self.version, self.timeout_s) for items in prepared
        )

    def embed_gallery_batches(self, batches: Iterable[Sequence[DecodedPhoto]]) -> Iterator[np.ndarray]:
        """:meth:`embed_batches` for catalogue photos: each batch's gallery vectors (:func:`combine_views`).

        A model with one gallery size embeds them as queries (the same vectors, streamed).
        """
        if len(self.gallery_views) == 1:
            yield from self.embed_batches(batches)
            return
        yield from self._in_flight(
            self.embedder.embed_gallery(list(batch), self.version, self.timeout_s) for batch in batches
        )

    def _in_flight(self, calls: Iterable[Coroutine[Any, Any, np.ndarray]]) -> Iterator[np.ndarray]:
        """The calls' results in order, with up to ``max_in_flight`` of them running on the loop."""
        running: deque[Future[np.ndarray]] = deque()
        try:
            for coro in calls:
                running.append(asyncio.run_coroutine_threadsafe(coro, self._loop.loop))
                if len(running) >= self.max_in_flight:
                    yield running.popleft().result()
            while running:
                yield running.popleft().result()
        finally:
            for future in running:
                future.cancel()
