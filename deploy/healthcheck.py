#!/usr/bin/env python3
"""Container health probe: ``recipelens-healthcheck TARGET...`` exits 0 only when every target is healthy.

Targets:
  ``grpc://HOST:PORT[/SERVICE]``  the standard ``grpc.health.v1`` check (service "" when omitted) is SERVING
  ``http://HOST:PORT/PATH``       GET answers 200

Used by the images' HEALTHCHECK and by docker-compose.yml; the compose smoke test runs it against local
processes, so what Docker runs is what the tests ran.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit


def check_grpc(target: str, timeout: float) -> str | None:
    """Return None when the gRPC health service answers SERVING, else why not."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    parts = urlsplit(target)
    address = parts.netloc
    service = parts.path.lstrip("/")
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return f"{target}: {exc.code().name} {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return None if status == "SERVING" else f"{target}: {status}"


def check_http(target: str, timeout: float) -> str | None:
    """Return None when GET answers 200, else why not."""
    try:
        # only http(s) targets reach here (checked in main)
        with urllib.request.urlopen(target, timeout=timeout) as response:  # noqa: S310
            code = int(response.status)
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (urllib.error.URLError, OSError) as exc:
        return f"{target}: {exc}"
    return None if code == 200 else f"{target}: HTTP {code}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recipelens-healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument(
        "targets", nargs="+", metavar="TARGET", help="grpc://HOST:PORT[/SERVICE] or http://..."
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per target (default 3)")
    args = parser.parse_args(argv)
    failures: list[str] = []
    for target in args.targets:
        scheme = urlsplit(target).scheme
        if scheme == "grpc":
            failure = check_grpc(target, args.timeout)
        elif scheme in ("http", "https"):
            failure = check_http(target, args.timeout)
        else:
            parser.error(f"{target}: the target must start with grpc:// or http://")
        if failure:
            failures.append(failure)
    for failure in failures:
        print(f"unhealthy: {failure}", file=sys.stderr)
    if not failures:
        print("healthy: " + " ".join(args.targets))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
