"""The collections of an alias: their names, the old ones a new build retires, and rollback.

A build or an edit writes ``<alias>-<model version>-<UTC yyyymmddThhmmssZ>``; the alias keeps the live
one and :func:`prune` drops complete ones beyond ``keep_previous`` older ones; :func:`rollback` puts
the newest older complete collection back behind the alias.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from indexer.store.base import DEFAULT_ALIAS, RecipeStore, StoreError

log = logging.getLogger(__name__)


class NothingToRollBack(StoreError):
    """The alias points nowhere, or no older complete collection exists."""


def collection_name(alias: str, model_version: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{alias}-{model_version}-{stamp}"


def new_collection_name(store: RecipeStore, alias: str, model_version: str) -> str:
    existing = {c.name for c in store.list_collections()}
    name = collection_name(alias, model_version)
    suffix = 1
    while name in existing:
        suffix += 1
        name = f"{collection_name(alias, model_version)}-{suffix}"
    return name


def prune(store: RecipeStore, alias: str, keep_previous: int, *, previous: str | None = None) -> list[str]:
    """Drop complete collections of ``alias`` beyond the live one and ``keep_previous`` older ones."""
    live = set(store.aliases().values())
    prefix = f"{alias}-"
    old = [
        c for c in store.list_collections() if c.complete and c.name.startswith(prefix) and c.name not in live
    ]
    old.sort(key=lambda c: (c.name == previous, c.created_at, c.name), reverse=True)
    dropped = []
    for info in old[keep_previous:]:
        try:
            store.drop_collection(info.name)
            dropped.append(info.name)
        except StoreError as exc:
            log.warning("could not drop old collection %s: %s", info.name, exc)
    return dropped


def rollback(store: RecipeStore, alias: str = DEFAULT_ALIAS) -> tuple[str, str]:
    """Put the newest complete collection older than the live one behind ``alias``; (from, to)."""
    current = store.resolve_alias(alias)
    if current is None:
        raise NothingToRollBack(f"alias {alias!r} points nowhere: nothing to roll back")
    prefix = f"{alias}-"
    collections = [c for c in store.list_collections() if c.name.startswith(prefix) or c.name == current]
    live = next((c for c in collections if c.name == current), None)
    older = [
        c
        for c in collections
        if c.complete and c.name != current and (live is None or c.created_at <= live.created_at)
    ]
    if not older:
        raise NothingToRollBack(
            f"no older complete collection to roll alias {alias!r} back to (live: {current})"
        )
    target = max(older, key=lambda c: (c.created_at, c.name)).name
    store.swap_alias(alias, target)
    return current, target
