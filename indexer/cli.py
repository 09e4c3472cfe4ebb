"""``recipelens-index``: build, inspect and edit the recipe index.

    recipelens-index build --catalog data/demo --model models/raw [--store-path var/qdrant | --qdrant-url URL]
                           [--alias recipes] [--embedder HOST:PORT] [--batch-size 128] [--bad-report PATH]
    recipelens-index list | rollback | swap NAME | drop NAME
    recipelens-index upsert --model MODEL_DIR --recipe recipe.json
    recipelens-index delete RECIPE_ID

Defaults come from :class:`~indexer.settings.IndexerSettings` (``RECIPELENS_INDEXER_*``); flags win.
Exit status: 0 done, 1 the job failed (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from embedder.client import EmbedderError
from embedder.logs import configure_logging
from embedder.manifest import ModelIntegrityError
from indexer.build import BuildError, build_index, open_embedder
from indexer.catalog import CatalogError
from indexer.collections import rollback
from indexer.edit import delete_recipe, read_recipe_arg, upsert_recipe
from indexer.quality import quality_of
from indexer.settings import IndexerSettings
from indexer.store import open_store
from indexer.store.base import RecipeStore, StoreError

log = logging.getLogger("indexer")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recipelens-index", description="Build and manage the recipe index."
    )
    store = argparse.ArgumentParser(add_help=False)
    where = store.add_mutually_exclusive_group()
    where.add_argument("--store-path", type=Path, help="Qdrant Edge folder (default var/qdrant)")
    where.add_argument(
        "--qdrant-url", help="a Qdrant server (API key from RECIPELENS_INDEXER_STORE__QDRANT_API_KEY)"
    )
    store.add_argument("--alias", help="the alias of the live collection (default recipes)")
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", parents=[store], help="index a whole catalogue into a new collection")
    build.add_argument("--catalog", type=Path, help="catalogue: Kaggle CSV, JSONL, recipe folders or photos")
    build.add_argument("--model", type=Path, help="model folder (model.onnx + manifest.json)")
    build.add_argument("--embedder", help="HOST:PORT of the embedder service (default: in-process)")
    build.add_argument("--batch-size", type=int, help="photos per batch (64–256)")
    build.add_argument("--bad-report", help="CSV of bad items (default var/bad-items.csv; '' for none)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.add_argument(
        "--force", action="store_true", help="move the alias even when the quality gate finds the build worse"
    )

    sub.add_parser("list", parents=[store], help="list collections and aliases")
    sub.add_parser("rollback", parents=[store], help="put the previous collection back behind the alias")
    swap = sub.add_parser("swap", parents=[store], help="put a complete collection behind the alias")
    swap.add_argument("name")
    drop = sub.add_parser("drop", parents=[store], help="drop a collection that no alias points to")
    drop.add_argument("name")

    upsert = sub.add_parser(
        "upsert", parents=[store], help="add or replace one recipe in the live collection"
    )
    upsert.add_argument("--model", type=Path, help="model folder; must match the live collection's model")
    upsert.add_argument("--recipe", required=True, help="recipe.json path, or inline JSON")
    upsert.add_argument("--embedder", help="HOST:PORT of the embedder service (default: in-process)")
    delete = sub.add_parser("delete", parents=[store], help="remove one recipe from the live collection")
    delete.add_argument("recipe_id")
    return parser


def _settings(args: argparse.Namespace) -> IndexerSettings:
    settings = IndexerSettings()
    updates: dict[str, object] = {}
    for flag, key in (
        ("catalog", "catalog"),
        ("model", "model_dir"),
        ("embedder", "embedder_address"),
        ("batch_size", "batch_size"),
        ("bad_report", "bad_report"),
        ("alias", "alias"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            updates[key] = value
    store_updates: dict[str, object] = {}
    if getattr(args, "store_path", None) is not None:
        store_updates = {"path": args.store_path, "qdrant_url": None}
    if getattr(args, "qdrant_url", None) is not None:
        store_updates = {"qdrant_url": args.qdrant_url}
    if store_updates:
        updates["store"] = settings.store.model_copy(update=store_updates)
    # validate the merged values, not just the environment's
    return IndexerSettings.model_validate({**settings.model_dump(), **updates})


def _list(store: RecipeStore) -> None:
    aliases = store.aliases()
    behind: dict[str, list[str]] = {}
    for alias, name in aliases.items():
        behind.setdefault(name, []).append(alias)
    rows = [("NAME", "MODEL", "DIM", "POINTS", "CREATED", "STATUS", "ALIASES", "FIGURES")]
    for c in store.list_collections():
        status = "broken" if c.extra.get("broken") else c.status
        rows.append(
            (
                c.name,
                c.model_version,
                str(c.dimension),
                str(c.points_count),
                c.created_at,
                status,
                ",".join(behind.get(c.name, [])),
                quality.line() if (quality := quality_of(c.extra)) else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    if len(rows) == 1:
        print("(no collections)")


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        print(f"recipelens-index: invalid setting: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    log.info("settings: %s", settings.summary())
    try:
        # Only a build creates the store; every other command reports a missing one.
        with open_store(settings.store, create=args.command == "build") as store:
            log.info("store: %s", settings.store.describe())
            if args.command == "build":
                if settings.catalog is None or settings.model_dir is None:
                    print("recipelens-index build: --catalog and --model are required", file=sys.stderr)
                    return 2
                summary = build_index(
                    settings.catalog,
                    settings.model_dir,
                    store,
                    settings=settings,
                    force=args.force,
                    progress=not args.no_progress,
                )
                print(summary.line())
                if summary.quality is not None:
                    print(f"figures of {summary.collection}: {summary.quality.line()}")
                if summary.bad:
                    print(f"{summary.bad} bad item(s) listed in {summary.bad_report}")
                if summary.dropped:
                    print(f"dropped old collection(s): {', '.join(summary.dropped)}")
            elif args.command == "list":
                _list(store)
            elif args.command == "rollback":
                before, after = rollback(store, settings.alias)
                print(f"alias {settings.alias!r}: {before} → {after}")
            elif args.command == "swap":
                was = store.resolve_alias(settings.alias)
                store.swap_alias(settings.alias, args.name)
                print(f"alias {settings.alias!r}: {was} → {args.name}")
            elif args.command == "drop":
                store.drop_collection(args.name)
                print(f"dropped {args.name}")
            elif args.command == "upsert":
                if settings.model_dir is None:
                    print("recipelens-index upsert: --model is required", file=sys.stderr)
                    return 2
                recipe, _ = read_recipe_arg(args.recipe)
                embedder = open_embedder(settings.model_dir, settings.embedder_address)
                edit = upsert_recipe(
                    store,
                    recipe,
                    embedder,
                    alias=settings.alias,
                    keep_previous=settings.keep_previous,
                    min_side=settings.min_side,
                )
                print(edit.line())
            elif args.command == "delete":
                edit = delete_recipe(
                    store, args.recipe_id, alias=settings.alias, keep_previous=settings.keep_previous
                )
                print(edit.line())
    except (BuildError, CatalogError, StoreError, ModelIntegrityError, EmbedderError) as exc:
        print(f"recipelens-index {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("recipelens-index: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
