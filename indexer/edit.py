"""Incremental edits between rebuilds: upsert or delete single recipes in the live collection.

On a Qdrant server the live collection is edited in place. On Qdrant Edge complete collections are
immutable (readers in other processes open them without locks), so an edit writes a copy of the
live collection, applies the change, marks the copy complete and swaps the alias — a running
gateway sees the change on its next search, exactly as after a rebuild.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from embedder.embedding import SyncEmbedder
from embedder.preprocess import ImageDecodeError
from indexer.build import BuildError, Photo
from indexer.catalog import Recipe, image_name, load_photo, recipe_from_mapping, recipe_payload
from indexer.collections import new_collection_name, prune
from indexer.store.base import DEFAULT_ALIAS, ModelVersionMismatch, RecipePoint, RecipeStore, point_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EditSummary:
    collection: str
    previous: str
    upserted: int = 0
    deleted: int = 0
    copied: bool = False

    def line(self) -> str:
        how = f"copy of {self.previous}" if self.copied else "in place"
        return f"upserted {self.upserted}, deleted {self.deleted} point(s) in {self.collection} ({how})"


def read_recipe_arg(text: str) -> tuple[Recipe, Path]:
    """``--recipe``: a recipe.json file (photos relative to it) or inline JSON (photos relative to cwd).

    Returns the recipe and the folder its photo names are relative to.
    """
    stripped = text.strip()
    if stripped.startswith("{"):
        base, where = Path.cwd(), "--recipe"
        raw = stripped
    else:
        source = Path(text)
        base, where = source.parent, str(source)
        try:
            raw = source.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BuildError(f"recipe file not found: {source}") from None
        except OSError as exc:
            raise BuildError(f"{source}: cannot read: {exc}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BuildError(f"{where}: invalid JSON: {exc}") from None
    recipe, bad = recipe_from_mapping(data, base, default_id="", where=where)
    if bad or recipe is None:
        raise BuildError("; ".join(b.reason if b.file in b.reason else f"{b.reason}: {b.file}" for b in bad))
    return recipe, base


def _built_from(store: RecipeStore, alias: str) -> Path | None:
    """The catalogue root the live collection's image names are relative to (``None`` if unrecorded)."""
    live = store.resolve_alias(alias)
    recorded = store.collection_info(live).extra.get("catalog_root") if live is not None else None
    return Path(recorded) if recorded else None


def _stored_name(root: Path | None, image: Path | str) -> str:
    """A photo's stored name: relative to ``root`` when inside it, else its absolute path (URLs as given)."""
    if not isinstance(image, Path):
        return image
    if root is None:
        return image.resolve().as_posix()
    return image_name(root.resolve(), image.resolve())


def _target(store: RecipeStore, alias: str, model_version: str | None) -> tuple[str, str, bool]:
    live = store.resolve_alias(alias)
    if live is None:
        raise BuildError(f"alias {alias!r} points nowhere: build an index first (`recipelens-index build`)")
    info = store.collection_info(live)
    if model_version is not None and info.model_version != model_version:
        raise ModelVersionMismatch(live, info.model_version, model_version)
    if not store.copy_on_write(live):
        return live, live, False
    target = new_collection_name(store, alias, info.model_version)
    store.clone_collection(live, target)
    return live, target, True


def _finish(
    store: RecipeStore, alias: str, live: str, target: str, *, copied: bool, keep_previous: int
) -> None:
    if copied:
        store.mark_complete(target)
        store.swap_alias(alias, target)
        prune(store, alias, keep_previous, previous=live)


def upsert_recipe(
    store: RecipeStore,
    recipe: Recipe,
    embedder: SyncEmbedder,
    *,
    catalog_root: Path | None = None,
    alias: str = DEFAULT_ALIAS,
    keep_previous: int = 1,
    min_side: int = 32,
) -> EditSummary:
    """Replace every photo of ``recipe`` in the live collection (old photos of it are removed).

    Photo names are stored relative to ``catalog_root``, by default the catalogue root the live collection
    was built from (so the gateway serves them from the same ``images_root``); photos outside it are
    stored by absolute path.
    """
    root = catalog_root if catalog_root is not None else _built_from(store, alias)
    photos = []
    for image in recipe.images:
        try:
            data, array = load_photo(image, size=embedder.image_size, min_side=min_side)
        except ImageDecodeError as exc:
            raise BuildError(f"recipe {recipe.id}: {image}: {exc}") from None
        photos.append(Photo(recipe, image, point_id(recipe.id, _stored_name(root, image)), data, array))
    vectors = next(iter(embedder.embed_gallery_batches([photos])))
    live, target, copied = _target(store, alias, embedder.version)
    try:
        new_ids = {p.id for p in photos}
        stale = [i for i in store.ids_of_recipe(target, recipe.id) if i not in new_ids]
        store.delete_points(target, stale)
        points = [
            RecipePoint(
                p.id,
                v,
                recipe_payload(root or Path("/"), recipe, p.image, embedder.version, photo=p.data)
                | {"image": _stored_name(root, p.image)},
            )
            for p, v in zip(photos, vectors, strict=True)
        ]
        store.upsert(target, points, model_version=embedder.version)
        _finish(store, alias, live, target, copied=copied, keep_previous=keep_previous)
    except BaseException:
        if copied:
            store.drop_collection(target)
        raise
    summary = EditSummary(target, live, upserted=len(points), deleted=len(stale), copied=copied)
    log.info("%s", summary.line())
    return summary


def delete_recipe(
    store: RecipeStore, recipe_id: str, *, alias: str = DEFAULT_ALIAS, keep_previous: int = 1
) -> EditSummary:
    """Remove every photo of one recipe from the live collection; unknown ids are an error."""
    live = store.resolve_alias(alias)
    if live is None:
        raise BuildError(f"alias {alias!r} points nowhere: nothing to delete from")
    if not store.ids_of_recipe(live, recipe_id):
        raise BuildError(f"recipe {recipe_id!r} is not in the live collection {live}")
    live, target, copied = _target(store, alias, None)
    try:
        ids = store.ids_of_recipe(target, recipe_id)
        store.delete_points(target, ids)
        _finish(store, alias, live, target, copied=copied, keep_previous=keep_previous)
    except BaseException:
        if copied:
            store.drop_collection(target)
        raise
    summary = EditSummary(target, live, deleted=len(ids), copied=copied)
    log.info("%s", summary.line())
    return summary
