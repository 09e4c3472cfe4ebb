"""Memory of image decoding: a budget for decoded bytes in flight, and an allocator that gives memory back.

Every :func:`embedder.preprocess.preprocess` call reserves what its decode will hold (estimated from the
header, before any pixel is decoded) from one process-wide :class:`DecodeBudget`. Callers over the budget
wait in arrival order; one still waiting after ``wait_s`` gets :class:`DecodeBudgetBusy`, which the services
answer as ``RESOURCE_EXHAUSTED`` (gRPC) or 503 with ``Retry-After`` (HTTP). A decode larger than the whole
budget runs alone. Services size it with :func:`configure_decoding` from their settings.

glibc keeps freed memory in per-thread arenas and, after a large block is freed, raises its mmap threshold
so later large blocks come from those arenas too — a burst of big decodes then stays resident.
:func:`tune_allocator` caps the arenas and pins the threshold (big pixel buffers are mmapped and unmapped
on free); the budget calls :func:`release_free_memory` (``malloc_trim``) whenever the last decode in flight
ends.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_BUDGET_BYTES = 384 * MiB
DEFAULT_WAIT_S = 10.0
# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_TRIM_EVERY_S = 0.5


class DecodeBudgetBusy(Exception):
    """The decoding budget stayed full for the whole wait; the caller should retry shortly."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class DecodeBudget:
    """Bytes of decoded pixels in flight across the requests of this process, admitted in arrival order."""

    def __init__(self, limit_bytes: int = DEFAULT_BUDGET_BYTES, wait_s: float = DEFAULT_WAIT_S) -> None:
        self.limit_bytes = limit_bytes
        self.wait_s = wait_s
        self._cond = threading.Condition()
        self._queue: collections.deque[object] = collections.deque()
        self._in_flight = 0
        self._count = 0
        self._last_trim = 0.0
        self._trim_timer: threading.Timer | None = None
        self.peak_bytes = 0
        self.waited = 0
        self.refused = 0

    @property
    def in_flight_bytes(self) -> int:
        return self._in_flight

    def _fits(self, ticket: object, nbytes: int) -> bool:
        return self._queue[0] is ticket and (self._count == 0 or self._in_flight + nbytes <= self.limit_bytes)

    @contextmanager
    def reserve(self, nbytes: int, wait_s: float | None = None) -> Iterator[None]:
        """Hold ``nbytes`` for the ``with`` block; :class:`DecodeBudgetBusy` when the wait runs out."""
        wait = self.wait_s if wait_s is None else wait_s
        deadline = time.monotonic() + wait
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                if not self._fits(ticket, nbytes):
                    self.waited += 1
                while not self._fits(ticket, nbytes):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self.refused += 1
                        raise DecodeBudgetBusy(
                            f"busy: {self._in_flight // MiB} MiB of images are being decoded (budget "
                            f"{self.limit_bytes // MiB} MiB) and this one needs {-(-nbytes // MiB)} MiB; "
                            "retry shortly"
                        )
                    self._cond.wait(remaining)
                self._in_flight += nbytes
                self._count += 1
                self.peak_bytes = max(self.peak_bytes, self._in_flight)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= nbytes
                self._count -= 1
                idle = self._count == 0
                self._cond.notify_all()
            if idle:
                self._trim_when_idle()

    def _trim_when_idle(self) -> None:
        """``malloc_trim`` now, or (at most every ``_TRIM_EVERY_S``) once the pause is over if still idle."""
        now = time.monotonic()
        wait = self._last_trim + _TRIM_EVERY_S - now
        if wait <= 0:
            self._last_trim = now
            release_free_memory()
            return
        with self._cond:
            if self._trim_timer is not None:
                return
            timer = threading.Timer(wait, self._deferred_trim)
            timer.daemon = True
            self._trim_timer = timer
        timer.start()

    def _deferred_trim(self) -> None:
        with self._cond:
            self._trim_timer = None
            idle = self._count == 0
        if idle:
            self._last_trim = time.monotonic()
            release_free_memory()


decode_budget = DecodeBudget()


def configure_decoding(limit_bytes: int, wait_s: float) -> None:
    """Size the process-wide budget (services call this once at start, from their settings)."""
    decode_budget.limit_bytes = limit_bytes
    decode_budget.wait_s = wait_s


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def tune_allocator(arena_max: int = 2, mmap_threshold: int = 1 * MiB) -> bool:
    """Cap glibc's arenas and pin its mmap threshold; False where the C library is not glibc."""
    if _LIBC is None:
        return False
    ok = bool(_LIBC.mallopt(_M_ARENA_MAX, arena_max))
    ok &= bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    ok &= bool(_LIBC.mallopt(_M_TRIM_THRESHOLD, 4 * mmap_threshold))
    log.debug("allocator: arena_max=%d mmap_threshold=%d ok=%s", arena_max, mmap_threshold, ok)
    return ok


def release_free_memory() -> None:
    """Give freed heap memory back to the system (``malloc_trim(0)``); a no-op without glibc."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
