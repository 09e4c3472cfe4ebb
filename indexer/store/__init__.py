"""The vector store: one :class:`~indexer.store.base.RecipeStore` interface, two back ends, one factory.

The interface and what travels through it live in :mod:`indexer.store.base`; Qdrant Edge (in-process,
the default) in :mod:`indexer.store.edge`; a Qdrant server or cluster in :mod:`indexer.store.server`.
:func:`open_store` picks one from :class:`~indexer.store.base.StoreSettings`, so that the interface
module never imports its own implementations::

    from indexer.store import open_store
    with open_store(settings.store) as store:
        results = store.search_recipes(store.resolve_alias("recipes"), vector, limit=5, model_version=v)
"""

from __future__ import annotations

from typing import Any

from indexer.store.base import RecipeStore, StoreSettings


def open_store(
    settings: StoreSettings | None = None, *, create: bool = True, **overrides: Any
) -> RecipeStore:
    """Qdrant server when ``qdrant_url`` is set, else Qdrant Edge at ``path``.

    ``create=False`` is for readers: a missing Edge folder raises
    :class:`~indexer.store.base.StoreNotFound` instead of being created.
    """
    if settings is None:
        settings = StoreSettings(**overrides)
    elif overrides:
        settings = settings.model_copy(update=overrides)
    if settings.qdrant_url:
        from indexer.store.server import ServerStore

        return ServerStore(
            settings.qdrant_url,
            api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
            prefer_grpc=settings.prefer_grpc,
            shard_number=settings.shard_number,
            replication_factor=settings.replication_factor,
            timeout_s=settings.timeout_s,
        )
    from indexer.store.edge import EdgeStore

    return EdgeStore(settings.path, create=create, search_threads=settings.search_threads)


__all__ = ["RecipeStore", "StoreSettings", "open_store"]
