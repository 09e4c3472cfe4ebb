"""Lifetime plumbing shared by the services and their clients: stop-on-signal and the console scripts'
serve loop (:func:`serve_until_signalled`), an event loop in a background thread, the one harness that runs
a service on it (:class:`RunningService`, for tests, benchmarks and tools), and :class:`Closeable`, the
context manager that ends in ``close`` (the harness, both clients)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Coroutine
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

T = TypeVar("T")


class Service(Protocol):
    """What :class:`RunningService` needs of a server: a graceful ``stop``."""

    async def stop(self, grace: float | None = None) -> None: ...


S = TypeVar("S", bound=Service)


class Closeable:
    """A context manager whose exit is :meth:`close`."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def stop_on_signals() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT (where the running loop can take signal handlers)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def serve_until_signalled(
    server: Service,
    start: Coroutine[Any, Any, Any],
    log: logging.Logger,
    *,
    alongside: Coroutine[Any, Any, Any] | None = None,
) -> None:
    """Run ``start``, serve until SIGTERM or SIGINT, then stop ``server`` gracefully (its own grace period).

    ``alongside`` is a step that runs while the service already answers (the embedder loads its models
    this way, NOT_SERVING meanwhile): a signal cancels it; its error stops the service and propagates.
    """
    stop = stop_on_signals()
    try:
        try:
            await start
        except BaseException:
            if alongside is not None:
                alongside.close()  # never started
            raise
        signalled = asyncio.create_task(stop.wait())
        if alongside is not None:
            side = asyncio.create_task(alongside)
            await asyncio.wait({side, signalled}, return_when=asyncio.FIRST_COMPLETED)
            if side.done():
                side.result()  # raises what the step raised
            else:
                side.cancel()
        await signalled
        log.info("stop signal received")
    finally:
        await server.stop()


class BackgroundLoop:
    """An event loop in its own daemon thread, so synchronous code (tests, tools) can drive a server."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self.closed = False

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        """Run a coroutine on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Cancel what is still running on the loop, stop it and join its thread; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        try:
            self.call(self._cancel_leftovers())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
            self.loop.close()

    async def _cancel_leftovers(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.loop.shutdown_asyncgens()


class RunningService(Closeable, Generic[S]):
    """A service on its own background event loop: ``call`` runs coroutines there; ``stop`` ends both.

    The embedder's :class:`~embedder.server.RunningServer` and the gateway's
    :class:`~gateway.server.RunningGateway` add only the addresses their callers need.
    """

    thread_name: ClassVar[str] = "service"  # the loop thread's name, as a subclass says

    def __init__(self, server: S) -> None:
        self.server = server
        self._background = BackgroundLoop(self.thread_name)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        """Run a coroutine on the service's loop and wait for its result."""
        return self._background.call(coro, timeout)

    def start_with(self, coro: Coroutine[Any, Any, Any]) -> Self:
        """Run the service's start coroutine; stop everything if it fails."""
        try:
            self.call(coro)
        except BaseException:
            self.stop(grace=0)
            raise
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop the service (graceful for ``grace`` seconds) and its loop; safe to call twice."""
        if self._background.closed:
            return
        try:
            self.call(self.server.stop(grace))
        finally:
            self._background.close()

    def close(self) -> None:
        """Stop with the default grace (what leaving a ``with`` block does)."""
        self.stop()
