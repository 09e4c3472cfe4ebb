"""Load through the whole stack: 10,000 gRPC + 2,000 HTTP searches at concurrency 32, 0 errors, flat RSS."""

from __future__ import annotations

import pytest

from tests.reliability.stack import Stack
from tests.support.load import LoadReport, run_load, table

pytestmark = pytest.mark.reliability

CONCURRENCY = 32
MAX_RSS_GROWTH = 0.10


def _check(report: LoadReport, total: int, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\n{table([report])}")
    assert report.total == total
    assert report.errors == {}, [o for o in report.outcomes if o.status != "OK"][:5]
    for name in ("gateway", "embedder"):
        samples = report.rss_kib[name]
        assert len(samples) >= 2 and samples[0][0] == 1000 and samples[-1][0] == total, samples
        assert report.rss_growth(name) < MAX_RSS_GROWTH, (name, samples)


def test_grpc_load(stack: Stack, photos: list[bytes], capsys: pytest.CaptureFixture[str]) -> None:
    watch = {"gateway": stack.gateway.pid, "embedder": stack.embedder.pid}
    report = run_load(stack.grpc_address, photos, total=10_000, concurrency=CONCURRENCY, watch=watch)
    _check(report, 10_000, capsys)
    assert stack.gateway.alive() and stack.embedder.alive()


def test_http_load(stack: Stack, photos: list[bytes], capsys: pytest.CaptureFixture[str]) -> None:
    watch = {"gateway": stack.gateway.pid, "embedder": stack.embedder.pid}
    report = run_load(
        stack.http_url, photos, protocol="http", total=2_000, concurrency=CONCURRENCY, watch=watch
    )
    _check(report, 2_000, capsys)
    assert stack.gateway.alive() and stack.embedder.alive()


def test_load_generator_refuses_remote_targets(photos: list[bytes]) -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        run_load("10.1.2.3:50052", photos, total=1)
    with pytest.raises(ValueError, match="not a loopback address"):
        run_load("http://example.org:8080", photos, protocol="http", total=1)
