"""The indexer: recipe catalogues into a searchable vector store, and that store's one interface.

* :mod:`indexer.catalog` reads a catalogue (Kaggle CSV, recipe folders, JSONL, photos) and reports
  what is wrong with it; :mod:`indexer.keywords` turns ingredients into filter keywords.
* :mod:`indexer.store` is the :class:`~indexer.store.base.RecipeStore` interface with its Qdrant Edge
  and Qdrant server back ends; the gateway searches through it too.
* :mod:`indexer.build` re-indexes a whole catalogue blue/green and resumably; :mod:`indexer.edit`
  upserts or deletes single recipes; :mod:`indexer.cli` is ``recipelens-index``.
"""
