"""Asyncio micro-batching: items from concurrent callers share one model run.

Callers ``await batcher.submit(items)``. One worker task takes the first queued item, waits up to
``max_delay_s`` for the batch to fill to ``max_batch_size``, runs ``run_batch`` in a thread and hands each
caller its own results. While a batch runs, new items queue up, so under load batches grow by themselves:
that is why the default is :data:`DEFAULT_MAX_QUEUE_DELAY_S` = 0 (greedy batching — a lone request never
waits, and concurrent ones still share runs); a positive delay trades latency for fuller batches on a fast
accelerator.

A caller already in a worker thread can also try :meth:`MicroBatcher.run_here` first (caller-runs): when
no batch is running and nothing is queued, its items run right there, sparing a lone request the hops
to the worker and back; otherwise it gets ``None`` and submits as usual, so under load items still meet
in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAX_QUEUE_DELAY_S = 0.0  # the one default, for the embedder service and every in-process embedder


@dataclass(frozen=True)
class BatchPolicy:
    """How a :class:`MicroBatcher` forms batches."""

    max_batch_size: int = 32
    """The most items one run takes (at least 1)."""
    max_delay_s: float = DEFAULT_MAX_QUEUE_DELAY_S
    """How long the first queued item waits for the batch to fill (0: greedy, never waits)."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")


class BatcherClosedError(RuntimeError):
    """The batcher was closed (its model was unloaded) before the items were queued."""


@dataclass
class BatchStats:
    """Counters to see whether batching happens: batches run, items embedded, the largest batch."""

    batches: int = 0
    items: int = 0
    largest_batch: int = 0

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class MicroBatcher(Generic[T, R]):
    """Collects items up to ``max_batch_size`` or ``max_delay_s``, runs one batch, fans results back."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int = 32,
        max_delay_s: float = DEFAULT_MAX_QUEUE_DELAY_S,
        name: str = "batcher",
        observer: Callable[[Sequence[float], float], None] | None = None,
    ) -> None:
        self.policy = BatchPolicy(max_batch_size, max_delay_s)
        self.run_batch = run_batch
        self.name = name
        self.observer = observer  # after each run: each item's queue wait and the run's seconds
        self.stats = BatchStats()
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R], float]] = asyncio.Queue()
        self._full = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._running = threading.Lock()  # held by whichever thread runs a batch (worker's or caller's)

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Queue the items and wait for their results, in the same order."""
        if self._closed:
            raise BatcherClosedError(f"{self.name} is closed")
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name=self.name)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = []
        queued = time.perf_counter()
        for item in items:
            future: asyncio.Future[R] = loop.create_future()
            self._queue.put_nowait((item, future, queued))
            futures.append(future)
        if self._queue.qsize() >= self.policy.max_batch_size - 1:
            self._full.set()
        return list(await asyncio.gather(*futures))

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking items, finish the queued ones (for ``timeout_s`` at most), stop the worker.

        Whatever is still queued after that fails with :class:`BatcherClosedError`: a stop is never held
        up for good by a batch that does not end.
        """
        self._closed = True
        if self._worker is None:
            return
        if not self._worker.done():
            try:
                await asyncio.wait_for(self._queue.join(), timeout_s)
            except TimeoutError:
                log.warning("%s: queued items did not finish within %.1f s of close", self.name, timeout_s)
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        while not self._queue.empty():
            _, future, _ = self._queue.get_nowait()
            if not future.done():
                future.set_exception(BatcherClosedError(f"{self.name} closed before this item ran"))
            self._queue.task_done()

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self.policy.max_delay_s > 0 and self._queue.qsize() < self.policy.max_batch_size - 1:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.policy.max_delay_s)
            while len(batch) < self.policy.max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._run(batch)
            except Exception:  # the worker outlives any one batch: its callers got the error already
                log.exception("%s: batch bookkeeping failed", self.name)
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(RuntimeError(f"{self.name}: the batch failed"))
            finally:
                for _ in batch:
                    self._queue.task_done()

    def run_here(self, items: Sequence[T]) -> list[R] | None:
        """Run ``items`` in the calling thread when the batcher is idle (caller-runs), else ``None``.

        Idle: open, nothing queued and no batch running. For callers already off the event loop (a
        worker thread): a lone request skips the hops to the batcher's worker and back. ``None`` means
        others are waiting or running: :meth:`submit` instead, so that concurrent items share runs.
        Errors of the run are raised here.
        """
        if self._closed or not self._queue.empty() or not self._running.acquire(blocking=False):
            return None
        try:
            if not self._queue.empty():  # queued while we took the lock: they go first, in a batch
                return None
            return self._execute(list(items), [0.0] * len(items), time.perf_counter())
        finally:
            self._running.release()

    def _run_locked(self, items: list[T], waits: list[float], start: float) -> list[R]:
        with self._running:
            return self._execute(items, waits, start)

    def _execute(self, items: list[T], waits: list[float], start: float) -> list[R]:
        """One run, with ``_running`` held: counters, the model, the observer."""
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        results = list(self.run_batch(items))
        if len(results) != len(items):
            raise RuntimeError(f"{self.name}: a batch of {len(items)} gave {len(results)} results")
        if self.observer is not None:
            self.observer(waits, time.perf_counter() - start)
        return results

    async def _run(self, batch: list[tuple[T, asyncio.Future[R], float]]) -> None:
        start = time.perf_counter()
        waits = [start - queued for _, future, queued in batch if not future.done()]
        live = [(item, future) for item, future, _ in batch if not future.done()]  # skip cancelled callers
        if not live:
            return
        try:
            results = await asyncio.to_thread(self._run_locked, [item for item, _ in live], waits, start)
        except Exception as exc:
            log.exception("%s: batch of %d failed", self.name, len(live))
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(live, results, strict=True):
            if not future.done():
                future.set_result(result)
