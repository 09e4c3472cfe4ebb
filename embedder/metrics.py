"""Prometheus metrics of one embedder, served at ``/metrics`` on a port of their own.

``RECIPELENS_EMBEDDER_METRICS_PORT`` (0 = off) turns the endpoint on; the names below are what the
HPA and the Grafana dashboard in ``deploy/`` read:

* ``recipelens_embedder_requests_total{model_version, method}`` and ``…_images_total{…}``
* ``recipelens_embedder_errors_total{method, code}`` — refused or failed calls by gRPC status
* ``recipelens_embedder_request_seconds{method}`` — whole calls, decoding included
* ``recipelens_embedder_batch_size{model_version}`` — images per onnxruntime run
* ``recipelens_embedder_queue_wait_seconds{model_version}`` — an image's wait for its batch to start
* ``recipelens_embedder_inference_seconds{model_version}`` — one onnxruntime run
* ``recipelens_embedder_in_flight_requests`` — calls being worked on now (the HPA's per-pod signal)
* ``recipelens_embedder_model_loaded{model_version, name, numerics, provider}`` — 1 per served model

Each :class:`EmbedderMetrics` has a registry of its own, so tests can run several embedders.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server

if TYPE_CHECKING:
    from embedder.runtime import EmbeddingModel

log = logging.getLogger(__name__)

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)


@dataclass
class MetricsEndpoint:
    """The ``/metrics`` HTTP server of one embedder; ``close`` stops it."""

    port: int
    _server: object
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()  # type: ignore[attr-defined]
        self._server.server_close()  # type: ignore[attr-defined]
        self._thread.join(timeout=5)


class ServiceMetrics:
    """One service's metrics in a registry of their own, each named ``<prefix>_<name>``.

    The embedder's :class:`EmbedderMetrics` and the gateway's ``GatewayMetrics`` declare theirs through
    :meth:`counter`, :meth:`histogram` and :meth:`gauge`; :meth:`exposition` is what ``/metrics`` answers.
    """

    prefix = "recipelens"

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(f"{self.prefix}_{name}", documentation, labels, registry=self.registry)

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = SECONDS_BUCKETS,
    ) -> Histogram:
        return Histogram(
            f"{self.prefix}_{name}", documentation, labels, buckets=buckets, registry=self.registry
        )

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(f"{self.prefix}_{name}", documentation, labels, registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class EmbedderMetrics(ServiceMetrics):
    """The embedder's counters, histograms and gauges (names in the module docstring)."""

    prefix = "recipelens_embedder"

    def __init__(self) -> None:
        super().__init__()
        version_method = ("model_version", "method")
        self.requests = self.counter(
            "requests", "Calls answered, by model version and method", version_method
        )
        self.images = self.counter("images", "Images embedded, by model version and method", version_method)
        self.errors = self.counter(
            "errors", "Calls refused or failed, by method and gRPC status code", ("method", "code")
        )
        self.request_seconds = self.histogram(
            "request_seconds", "Whole-call latency including decoding, by method", ("method",)
        )
        self.batch_size = self.histogram(
            "batch_size", "Images per onnxruntime run", ("model_version",), buckets=BATCH_BUCKETS
        )
        self.queue_wait = self.histogram(
            "queue_wait_seconds", "Time an image waited for its batch to start", ("model_version",)
        )
        self.inference = self.histogram(
            "inference_seconds", "Duration of one onnxruntime run", ("model_version",)
        )
        self.in_flight = self.gauge("in_flight_requests", "Calls being worked on now")
        self.models = self.gauge(
            "model_loaded",
            "1 for each model served, labelled with its numerics",
            ("model_version", "name", "numerics", "provider"),
        )
        self._model_labels: dict[str, tuple[str, str, str, str]] = {}

    # -- what the servicer and the batcher report ------------------------------------------------------

    def observe_call(self, method: str, model_version: str, images: int, seconds: float) -> None:
        """One call that was answered."""
        self.requests.labels(model_version, method).inc()
        self.images.labels(model_version, method).inc(images)
        self.request_seconds.labels(method).observe(seconds)

    def observe_error(self, method: str, code: str, seconds: float | None = None) -> None:
        """One call that ended in a gRPC status other than OK."""
        self.errors.labels(method, code).inc()
        if seconds is not None:
            self.request_seconds.labels(method).observe(seconds)

    def observe_batch(self, model_version: str, waits: Sequence[float], seconds: float) -> None:
        """One onnxruntime run of ``len(waits)`` images, each having waited ``waits[i]`` s to start."""
        self.batch_size.labels(model_version).observe(len(waits))
        queue = self.queue_wait.labels(model_version)
        for wait in waits:
            queue.observe(wait)
        self.inference.labels(model_version).observe(seconds)

    def set_models(self, models: Iterable[EmbeddingModel]) -> None:
        """The models served now: a gauge of 1 each; models no longer served disappear."""
        current = {m.version: (m.version, m.manifest.name, m.numerics, m.provider) for m in models}
        for version, labels in self._model_labels.items():
            if current.get(version) != labels:
                self.models.remove(*labels)
        for labels in current.values():
            self.models.labels(*labels).set(1)
        self._model_labels = current

    # -- exposition ------------------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> MetricsEndpoint:
        """Serve ``/metrics`` on ``host:port`` (0 picks a free port) in a daemon thread."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        endpoint = MetricsEndpoint(server.server_port, server, thread)
        log.info("metrics at http://%s:%d/metrics", host, endpoint.port)
        return endpoint
