"""Bounded load generator for the gateway: N searches at concurrency C over gRPC or HTTP, loopback only.

It stops by itself: after ``total`` requests, or after ``max_seconds``, or when ``stop`` is set. While it
runs it samples the resident memory (VmRSS from ``/proc/<pid>/status``) of the processes it is told to
watch after every ``rss_every`` requests, so memory growth between the first and the last thousand
requests can be checked. The reliability tests (tests/reliability) and ``bench/load.py`` (the script that
starts a throwaway stack and prints :func:`table`) call :func:`run_load`.
"""

from __future__ import annotations

import http.client
import ipaddress
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

SEARCH_PATH = "/api/v1/search"


@dataclass(frozen=True)
class Outcome:
    """One request: when it started (s since the run began), how long it took, and its status."""

    index: int
    started_s: float
    latency_ms: float
    status: str  # "OK" or the gRPC status name / HTTP status code
    detail: str = ""


@dataclass
class LoadReport:
    """Everything one run measured."""

    protocol: str
    concurrency: int
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    rss_kib: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # name → [(requests done, KiB)]
    began: float = 0.0  # time.perf_counter() when the run started (Outcome.started_s counts from here)

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def ok(self) -> int:
        return sum(1 for o in self.outcomes if o.status == "OK")

    @property
    def errors(self) -> Counter[str]:
        return Counter(o.status for o in self.outcomes if o.status != "OK")

    def percentile_ms(self, q: float) -> float:
        times = sorted(o.latency_ms for o in self.outcomes if o.status == "OK")
        if not times:
            return float("nan")
        return times[min(len(times) - 1, int(q * len(times)))]

    @property
    def p50_ms(self) -> float:
        times = [o.latency_ms for o in self.outcomes if o.status == "OK"]
        return statistics.median(times) if times else float("nan")

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(0.99)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def rss_growth(self, name: str) -> float:
        """Relative RSS growth of ``name`` from the first sample (after the first thousand) to the last."""
        samples = self.rss_kib.get(name) or []
        if len(samples) < 2:
            return float("nan")
        first, last = samples[0][1], samples[-1][1]
        return (last - first) / first

    def row(self) -> list[str]:
        growth = " ".join(f"{n} {self.rss_growth(n):+.1%}" for n in sorted(self.rss_kib))
        errors = ", ".join(f"{k}×{v}" for k, v in sorted(self.errors.items())) or "0"
        return [
            self.protocol,
            str(self.total),
            str(self.concurrency),
            errors,
            f"{self.p50_ms:.1f}",
            f"{self.p99_ms:.1f}",
            f"{self.throughput:.0f}",
            growth or "-",
        ]


HEADER = [
    "protocol",
    "requests",
    "conc.",
    "errors",
    "p50 ms",
    "p99 ms",
    "req/s",
    "RSS growth (1st→last 1000)",
]


def table(reports: Sequence[LoadReport]) -> str:
    rows = [HEADER, *(r.row() for r in reports)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def status_kib(pid: int, field: str) -> int:
    """One memory figure of a process in KiB, by its name in ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (``VmRSS``)."""
    return status_kib(pid, "VmRSS")


def require_loopback(host: str) -> None:
    """Refuse any target that is not this machine: the generator is for loopback only."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"load target {host!r} is not a loopback address; refusing to send load there")


def multipart_body(image: bytes, *, top_k: int = 5) -> tuple[bytes, str]:
    """A ``multipart/form-data`` search body and its content type."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n{top_k}\r\n'.encode(),
        (
            f"--{boundary}\r\nContent-Disposition: form-data; "
            'name="image"; filename="photo.jpg"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + image
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _grpc_sender(
    address: str, api_key: str | None, timeout_s: float
) -> tuple[Callable[[bytes], str], Callable[[], None]]:
    import grpc

    from gateway.client import RecipeSearchClient

    client = RecipeSearchClient(address, api_key=api_key, timeout_s=timeout_s)

    def send(image: bytes) -> str:
        try:
            response = client.search(image, top_k=5)
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return f"OK: {response.collection}" if response.hits else "EMPTY: no hits"

    return send, client.close


def _http_sender(
    url: str, api_key: str | None, timeout_s: float
) -> tuple[Callable[[bytes], str], Callable[[], None]]:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    local = threading.local()
    opened: list[http.client.HTTPConnection] = []
    lock = threading.Lock()

    def connection() -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
            local.conn = conn
            with lock:
                opened.append(conn)
        return conn

    def send(image: bytes) -> str:
        body, content_type = multipart_body(image)
        headers = {"Content-Type": content_type}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        conn = connection()
        try:
            conn.request("POST", SEARCH_PATH, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            local.conn = None
            return f"CONNECTION: {type(exc).__name__}: {exc}"
        if response.status != 200:
            return f"{response.status}: {data[:200].decode(errors='replace')}"
        return "OK" if b'"success":true' in data else f"200-NOT-SUCCESS: {data[:200]!r}"

    def close() -> None:
        for conn in opened:
            conn.close()

    return send, close


def run_load(
    target: str,
    photos: Sequence[bytes],
    *,
    protocol: str = "grpc",
    total: int = 10_000,
    concurrency: int = 32,
    timeout_s: float = 10.0,
    max_seconds: float = 600.0,
    api_key: str | None = None,
    watch: Mapping[str, int] | None = None,
    rss_every: int = 1000,
    stop: threading.Event | None = None,
) -> LoadReport:
    """Send ``total`` searches (photos round robin) from ``concurrency`` threads; see the module docstring.

    ``target`` is ``HOST:PORT`` for gRPC or ``http://HOST:PORT`` for HTTP; ``watch`` maps names to pids
    whose RSS is sampled every ``rss_every`` requests (and once at the end).
    """
    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol must be grpc or http, got {protocol!r}")
    if not photos:
        raise ValueError("run_load needs at least one photo")
    host = urlsplit(target).hostname if protocol == "http" else target.rsplit(":", 1)[0]
    require_loopback(host or "")
    sender = _grpc_sender if protocol == "grpc" else _http_sender
    send, close = sender(target, api_key, timeout_s)
    report = LoadReport(protocol, concurrency, rss_kib={name: [] for name in (watch or {})})
    stop = stop or threading.Event()
    lock = threading.Lock()
    issued = done = 0
    began = report.began = time.perf_counter()
    ends_at = began + max_seconds

    def sample(count: int) -> None:
        for name, pid in (watch or {}).items():
            try:
                report.rss_kib[name].append((count, rss_kib(pid)))
            except (OSError, RuntimeError):
                report.rss_kib[name].append((count, -1))

    def worker() -> None:
        nonlocal issued, done
        while True:
            with lock:
                if issued >= total or stop.is_set() or time.perf_counter() > ends_at:
                    return
                index = issued
                issued += 1
            start = time.perf_counter()
            answer = send(photos[index % len(photos)])
            latency = (time.perf_counter() - start) * 1000.0
            status, _, detail = answer.partition(": ")
            with lock:
                report.outcomes.append(Outcome(index, start - began, latency, status, detail))
                done += 1
                boundary = rss_every > 0 and done % rss_every == 0
            if boundary:
                sample(done)

    try:
        with ThreadPoolExecutor(concurrency, thread_name_prefix=f"load-{protocol}") as pool:
            for future in [pool.submit(worker) for _ in range(concurrency)]:
                future.result()
    finally:
        close()
    report.seconds = time.perf_counter() - began
    if watch and any(not s or s[-1][0] != done for s in report.rss_kib.values()):
        sample(done)
    report.outcomes.sort(key=lambda o: o.index)
    return report
