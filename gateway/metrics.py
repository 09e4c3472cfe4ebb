"""Prometheus metrics of one gateway: requests, errors, per-stage latency (check, decode, embed, search)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from embedder.metrics import ServiceMetrics

T = TypeVar("T")

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics(ServiceMetrics):
    """Counters and histograms in a registry of their own (so tests can run several gateways)."""

    prefix = "recipelens_gateway"

    def __init__(self) -> None:
        super().__init__()
        self.requests = self.counter(
            "requests",
            "Requests answered, by API (grpc/http), method and outcome code",
            ("api", "method", "code"),
        )
        self.errors = self.counter(
            "errors",
            "Requests that ended in an error, by API, method and error kind",
            ("api", "method", "kind"),
        )
        self.latency = self.histogram(
            "request_seconds", "Whole-request latency, by API and method", ("api", "method"), buckets=_BUCKETS
        )
        self.stage = self.histogram(
            "stage_seconds",
            "Latency of one search stage: check (the image's header), decode, embed or search",
            ("stage",),
            buckets=_BUCKETS,
        )

    @contextmanager
    def time_stage(self, stage: str) -> Iterator[None]:
        """The block's time, observed as ``stage`` (also when it raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage.labels(stage).observe(time.perf_counter() - start)

    def time_if_done(self, stage: str, fn: Callable[[], T | None]) -> T | None:
        """``fn()``, its time observed as ``stage`` only when it did the work (returned something): a
        stage that declines here is done, and timed, elsewhere — one observation per search."""
        start = time.perf_counter()
        result = fn()
        if result is not None:
            self.stage.labels(stage).observe(time.perf_counter() - start)
        return result

    def observe_request(
        self, api: str, method: str, code: str, seconds: float, error_kind: str | None
    ) -> None:
        self.requests.labels(api, method, code).inc()
        self.latency.labels(api, method).observe(seconds)
        if error_kind is not None:
            self.errors.labels(api, method, error_kind).inc()
