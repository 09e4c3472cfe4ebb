"""``recipelens-search PHOTO``: the search path from the command line, printed as a table.

Embeds with the embedder service (``--embedder HOST:PORT``) or in-process (``--model-dir``), searches the
collection behind ``--alias`` — the same :class:`~gateway.pipeline.SearchGateway` the servers run.
``--wait-ready`` without a photo waits until the gateway's readiness holds (the embedder answers and holds
the model of the collection behind the alias), then exits 0 (for scripts that start the stack).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from embedder.manifest import ModelIntegrityError
from gateway.errors import ErrorKind, GatewayError
from gateway.pipeline import SearchGateway, sniff_image
from gateway.search import SearchResult, check_paging
from gateway.server import build_embedder, build_store
from gateway.settings import GatewaySettings
from indexer.store.base import StoreError

PROG = "recipelens-search"
# Errors about the photo itself name the file.
_PHOTO_ERRORS = (ErrorKind.INVALID_ARGUMENT, ErrorKind.RESOURCE_EXHAUSTED)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("photo", nargs="?", type=Path, help="a photo file (JPEG, PNG, WebP, ...)")
    parser.add_argument("--top-k", type=int, default=5, help="how many recipes (1..100)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--embedder", help="HOST:PORT of the embedder service")
    where.add_argument(
        "--model-dir", type=Path, default=Path("models"), help="models for in-process embedding"
    )
    parser.add_argument("--store-path", type=Path, default=Path("var/qdrant"), help="Qdrant Edge folder")
    parser.add_argument("--qdrant-url", help="a Qdrant server instead of Qdrant Edge")
    parser.add_argument("--alias", default="recipes", help="the alias to search through")
    parser.add_argument("--wait-ready", action="store_true", help="wait for the embedder and the alias first")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait (--wait-ready, embed calls)"
    )
    return parser.parse_args(argv)


def _fail(message: str, code: int = 1) -> SystemExit:
    print(f"{PROG}: {message}", file=sys.stderr)
    return SystemExit(code)


def format_table(result: SearchResult) -> str:
    rows = [("rank", "score", "title", "category", "model")]
    rows += [(str(h.rank), f"{h.score:.4f}", h.title, h.category, result.model_version) for h in result.hits]
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(5)]
    lines = ["  ".join(cell[:60].ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{len(result.hits)} recipe(s) from {result.collection} in {result.took_ms:.0f} ms")
    return "\n".join(lines)


async def _run(gateway: SearchGateway, args: argparse.Namespace, photo: bytes) -> str:
    try:
        return await _answer(gateway, args, photo)
    finally:
        await gateway.aclose()


async def _answer(gateway: SearchGateway, args: argparse.Namespace, photo: bytes) -> str:
    if args.wait_ready:
        readiness = await gateway.wait_ready(args.timeout)
        if args.photo is None:
            return readiness.line()
    try:
        result = await gateway.search(photo, top_k=args.top_k)
    except GatewayError as exc:
        if exc.kind in _PHOTO_ERRORS:
            raise GatewayError(exc.kind, f"{args.photo}: {exc}") from None
        raise
    return format_table(result)


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``recipelens-search``."""
    args = _parse_args(argv)
    if args.photo is None and not args.wait_ready:
        raise _fail("give a PHOTO to search with (or --wait-ready)", 2)
    try:
        check_paging(args.top_k, 0)
        settings = GatewaySettings(
            embedder_address=args.embedder,
            model_dir=args.model_dir,
            store_path=args.store_path,
            qdrant_url=args.qdrant_url,
            alias=args.alias,
            embed_timeout_s=args.timeout,
        )
    except GatewayError as exc:
        raise _fail(f"--{exc}", 2) from None
    except ValidationError as exc:
        raise _fail(f"invalid settings:\n{exc}", 2) from None
    data = b""
    if args.photo is not None:
        try:
            data = args.photo.read_bytes()
        except OSError as exc:
            raise _fail(f"{args.photo}: cannot read file: {exc.strerror or exc}") from None
        try:
            sniff_image(data, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels)
        except GatewayError as exc:
            raise _fail(f"{args.photo}: {exc}") from None
    try:
        store = build_store(settings)
    except (StoreError, OSError) as exc:
        raise _fail(f"cannot open the store: {exc}") from None
    try:
        try:
            gateway = SearchGateway(store, build_embedder(settings), settings, workers=4)
        except ModelIntegrityError as exc:
            raise _fail(str(exc), 2) from None
        try:
            print(asyncio.run(_run(gateway, args, data)))
        except (TimeoutError, GatewayError) as exc:
            raise _fail(str(exc)) from None
    finally:
        store.close()


if __name__ == "__main__":
    main()
