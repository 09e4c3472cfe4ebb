"""``recipelens-search PHOTO``: the search path from the command line, printed as a table.

Embeds with the embedder service (``--embedder HOST:PORT``) or in-process (``--model-dir``), searches the
collection behind ``--alias``. ``--wait-ready`` without a photo waits until the embedder is SERVING and the
alias exists, then exits 0 (for scripts that start the stack).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.embedding import InProcessEmbedder, RemoteEmbedder
from gateway.errors import GatewayError
from gateway.pipeline import sniff_image
from gateway.search import QueryEmbedder, RecipeSearcher, SearchError, SearchResult
from gateway.settings import GatewaySettings
from indexer.store import open_store
from indexer.store.base import RecipeStore, StoreError, StoreSettings

PROG = "recipelens-search"


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


def wait_ready(store: RecipeStore, embedder: QueryEmbedder, alias: str, timeout_s: float) -> str:
    """Block until the alias resolves and the embedder can embed with its model; return a status line."""
    deadline = time.monotonic() + timeout_s
    if isinstance(embedder, RemoteEmbedder):
        embedder.client.wait_ready(timeout_s)
    last = "not checked"
    while True:
        collection = store.resolve_alias(alias)
        if collection is not None:
            version = store.collection_info(collection).model_version
            available = (
                embedder.local.available()
                if isinstance(embedder, InProcessEmbedder)
                else [m.version for m in embedder.client.model_info().models]  # type: ignore[attr-defined]
            )
            if version in available:
                return f"ready: alias {alias!r} -> {collection}, model {version} available"
            listed = ", ".join(available) or "none"
            last = f"alias {alias!r} -> {collection} needs model {version}, available: {listed}"
        else:
            last = f"no collection behind alias {alias!r} yet"
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready after {timeout_s:.0f} s: {last}")
        time.sleep(0.5)


def format_table(result: SearchResult) -> str:
    rows = [("rank", "score", "title", "category", "model")]
    rows += [(str(h.rank), f"{h.score:.4f}", h.title, h.category, result.model_version) for h in result.hits]
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(5)]
    lines = ["  ".join(cell[:60].ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{len(result.hits)} recipe(s) from {result.collection} in {result.took_ms:.0f} ms")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``recipelens-search``."""
    args = _parse_args(argv)
    if args.photo is None and not args.wait_ready:
        raise _fail("give a PHOTO to search with (or --wait-ready)", 2)
    if not 1 <= args.top_k <= 100:
        raise _fail(f"--top-k must be 1..100, got {args.top_k}", 2)
    data = b""
    if args.photo is not None:
        try:
            data = args.photo.read_bytes()
        except OSError as exc:
            raise _fail(f"{args.photo}: cannot read file: {exc.strerror or exc}") from None
        limits = GatewaySettings()
        try:
            sniff_image(data, max_bytes=limits.max_upload_bytes, max_pixels=limits.max_pixels)
        except GatewayError as exc:
            raise _fail(f"{args.photo}: {exc}") from None
    embedder: InProcessEmbedder | RemoteEmbedder = (
        RemoteEmbedder(args.embedder, timeout_s=args.timeout)
        if args.embedder
        else InProcessEmbedder(args.model_dir)
    )
    try:
        store = open_store(StoreSettings(path=args.store_path, qdrant_url=args.qdrant_url), create=False)
    except (StoreError, OSError) as exc:
        raise _fail(f"cannot open the store: {exc}") from None
    try:
        if args.wait_ready:
            try:
                status = wait_ready(store, embedder, args.alias, args.timeout)
            except (TimeoutError, GatewayError, StoreError) as exc:
                raise _fail(str(exc)) from None
            if args.photo is None:
                print(status)
                return
        searcher = RecipeSearcher(store, embedder, args.alias)
        try:
            result = searcher.search(data, top_k=args.top_k)
        except GatewayError as exc:
            raise _fail(f"{args.photo}: {exc}") from None
        except (SearchError, StoreError) as exc:
            raise _fail(str(exc)) from None
        print(format_table(result))
    finally:
        if isinstance(embedder, RemoteEmbedder):
            embedder.client.close()
        store.close()


if __name__ == "__main__":
    main()
