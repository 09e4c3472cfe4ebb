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
from gateway.checks import search_filter, sniff_image
from gateway.errors import ErrorKind, GatewayError
from gateway.pipeline import SearchGateway
from gateway.search import SearchResult, check_paging
from gateway.server import build_embedder
from gateway.settings import GatewaySettings
from indexer.store import open_store
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
    parser.add_argument(
        "--min-confidence", type=float, default=0.0, help="leave out hits below this confidence (0..1)"
    )
    parser.add_argument(
        "--category", action="append", default=[], help="only this category (repeatable; any of them)"
    )
    parser.add_argument(
        "--with", dest="include", action="append", default=[], help="an ingredient every recipe must have"
    )
    parser.add_argument(
        "--without", dest="exclude", action="append", default=[], help="an ingredient no recipe may have"
    )
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


VERDICTS = {
    "strong": "the same dish",
    "weak": "similar food",
    "none": "no close match: nothing in the catalogue is close, or the photo is not food",
}


def _fail(message: str, code: int = 1) -> SystemExit:
    print(f"{PROG}: {message}", file=sys.stderr)
    return SystemExit(code)


def format_table(result: SearchResult) -> str:
    rows = [("rank", "score", "confidence", "title", "category", "model")]
    for h in result.hits:
        confidence = "-" if h.confidence is None else f"{h.confidence:.2f}"
        rows.append((str(h.rank), f"{h.score:.4f}", confidence, h.title, h.category, result.model_version))
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(len(rows[0]))]
    lines = ["  ".join(cell[:60].ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"#{h.rank} matched photo: {h.matched_image or '(none)'}" for h in result.hits]
    lines += [f"warning: {w}" for w in result.warnings]
    verdict = VERDICTS.get(result.match or "", "no verdict (the collection has no calibration)")
    lines.append(f"match: {result.match or '-'} — {verdict}")
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
        result = await gateway.search(
            photo, top_k=args.top_k, search_filter=args.filter, min_confidence=args.min_confidence
        )
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
        args.filter = search_filter(args.category, args.include, args.exclude)
        settings = GatewaySettings(
            embedder_address=args.embedder,
            model_dir=args.model_dir,
            store_path=args.store_path,
            qdrant_url=args.qdrant_url,
            alias=args.alias,
            embed_timeout_s=args.timeout,
        )
    except GatewayError as exc:
        raise _fail(str(exc), 2) from None
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
        store = open_store(settings.store, create=False)
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
