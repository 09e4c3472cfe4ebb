"""Load the gateway: N searches at concurrency C over gRPC and HTTP against a throwaway stack, loopback only.

It starts a tiny-model stack (synthetic photos, embedder + gateway processes), runs the bounded load driver
of :mod:`tests.support.load` and prints the table:

    python bench/load.py                      # 10,000 gRPC + 2,000 HTTP searches at concurrency 32
    python bench/load.py --grpc 2000 --http 500 --concurrency 16
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.load import run_load, table  # noqa: E402


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grpc", type=int, default=10_000, help="gRPC searches (default 10000)")
    parser.add_argument("--http", type=int, default=2_000, help="HTTP searches (default 2000)")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)

    import tempfile

    from tests.reliability.stack import Stack, make_world, query_photos

    with tempfile.TemporaryDirectory(prefix="recipelens-load-") as tmp:
        world = make_world(Path(tmp))
        photos = query_photos()
        with Stack(world, Path(tmp) / "logs") as stack:
            watch = {"gateway": stack.gateway.pid, "embedder": stack.embedder.pid}
            reports = []
            if args.grpc:
                reports.append(
                    run_load(
                        stack.grpc_address, photos, total=args.grpc, concurrency=args.concurrency, watch=watch
                    )
                )
            if args.http:
                reports.append(
                    run_load(
                        stack.http_url,
                        photos,
                        protocol="http",
                        total=args.http,
                        concurrency=args.concurrency,
                        watch=watch,
                    )
                )
    print(table(reports))


if __name__ == "__main__":
    main()
