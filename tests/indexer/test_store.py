"""The store interface on Qdrant Edge (on disk) and qdrant-client (local mode; a server at QDRANT_URL)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest

from indexer.keywords import ingredient_keywords
from indexer.store import open_store
from indexer.store.base import (
    CollectionBusy,
    CollectionNotFound,
    ModelVersionMismatch,
    RecipePoint,
    RecipeStore,
    SearchFilter,
    StoreError,
    StoreSettings,
    point_id,
)
from indexer.store.edge import SHARD_DIR, EdgeStore
from indexer.store.server import ServerStore

DIM = 16


def _points(n: int = 12, seed: int = 0) -> list[RecipePoint]:
    rng = np.random.default_rng(seed)
    cats = ["Soups", "Salads", "Desserts"]
    kws = [["chicken", "onion"], ["tomato", "basil"], ["chocolate", "egg"], ["chicken", "tomato", "garlic"]]
    out = []
    for i in range(n):
        v = rng.standard_normal(DIM).astype(np.float32)
        out.append(
            RecipePoint(
                point_id(f"r{i}", f"{i}.jpg"),
                v / np.linalg.norm(v),
                {
                    "recipe_id": f"r{i}",
                    "title": f"Dish {i}",
                    "category": cats[i % 3],
                    "ingredient_keywords": kws[i % 4],
                },
            )
        )
    return out


def _scenario(store: RecipeStore, name: str) -> dict[str, object]:
    """One scenario run on every backend; returns what the backends must agree on."""
    pts = _points()
    store.create_collection(name, dimension=DIM, model_version="m1")
    store.upsert(name, pts[:8], model_version="m1")
    store.upsert(name, pts[4:], model_version="m1")  # overlap: deterministic ids, no duplicates
    assert store.count(name) == 12
    q = pts[3].vector
    hits = store.search(name, q, limit=5, model_version="m1")
    page2 = store.search(name, q, limit=3, offset=2, model_version="m1")
    cat = store.search(
        name, q, limit=12, filter=SearchFilter(categories=("Soups", "Desserts")), model_version="m1"
    )
    inc = store.search(name, q, limit=12, filter=SearchFilter(must_include=("Tomatoes",)), model_version="m1")
    exc = store.search(name, q, limit=12, filter=SearchFilter(must_exclude=("chicken",)), model_version="m1")
    store.delete_points(name, [pts[0].id])
    return {
        "top": [(h.id, round(h.score, 4)) for h in hits],
        "page2": [h.id for h in page2],
        "cat": sorted(h.payload["category"] for h in cat),
        "inc": sorted(h.payload["recipe_id"] for h in inc),
        "exc": sorted(h.payload["recipe_id"] for h in exc),
        "count": store.count(name),
        "existing": sorted(set(store.payload_hashes(name)) & {pts[0].id, pts[1].id, str(uuid.uuid4())}),
        "recipe": store.ids_of_recipe(name, "r5"),
    }


@pytest.fixture
def server_stores() -> Iterator[list[ServerStore]]:
    stores = [ServerStore(location=":memory:")]
    if os.environ.get("QDRANT_URL"):
        stores.append(ServerStore(os.environ["QDRANT_URL"], api_key=os.environ.get("QDRANT_API_KEY")))
    yield stores
    for s in stores:
        s.close()


def test_point_ids_are_deterministic_uuid5() -> None:
    a = point_id("r1", "images/a.jpg")
    assert a == point_id("r1", "images/a.jpg") and uuid.UUID(a).version == 5
    assert a != point_id("r1", "images/b.jpg") != point_id("r2", "images/a.jpg")


def test_edge_and_server_agree(tmp_path: Path, server_stores: list[ServerStore]) -> None:
    name = f"congruence-{uuid.uuid4().hex[:8]}"
    with EdgeStore(tmp_path / "q") as edge:
        expected = _scenario(edge, name)
    assert expected["count"] == 11
    assert expected["cat"] and set(expected["cat"]) == {"Soups", "Desserts"}  # type: ignore[arg-type]
    assert expected["inc"] == ["r1", "r11", "r3", "r5", "r7", "r9"]  # "Tomatoes" finds tomato
    assert "r3" not in expected["exc"] and "r1" in expected["exc"]  # type: ignore[operator]
    assert expected["existing"] == [point_id("r1", "1.jpg")]
    assert expected["recipe"] == [point_id("r5", "5.jpg")]
    for server in server_stores:
        try:
            got = _scenario(server, name)
        finally:
            if server.url != ":memory:":
                server.client.delete_collection(name)
        assert got == expected, server.url


def test_search_keywords_are_checked_like_a_signature(tmp_path: Path) -> None:
    pts = _points()
    with EdgeStore(tmp_path / "q") as store:
        store.create_collection("c", dimension=DIM, model_version="m1")
        store.upsert("c", pts, model_version="m1")
        bad: list[dict[str, Any]] = [
            {"limit": 3},  # no model_version
            {"model_version": "m1"},  # no limit
            {"limit": 3, "model_version": "m1", "ofset": 2},  # a misspelt keyword is not ignored
        ]
        for kwargs in bad:
            for search in (store.search, store.search_recipes):
                with pytest.raises(TypeError, match="store search keywords"):
                    search("c", pts[0].vector, **kwargs)
        assert len(store.search("c", pts[0].vector, limit=3, offset=1, filter=None, model_version="m1")) == 3


def test_edge_persists_and_guards_versions(tmp_path: Path) -> None:
    pts = _points()
    with open_store(StoreSettings(path=tmp_path / "q")) as store:
        assert isinstance(store, EdgeStore)
        store.create_collection("c1", dimension=DIM, model_version="aaaa1111")
        store.upsert("c1", pts, model_version="aaaa1111")
        with pytest.raises(ModelVersionMismatch, match=r"aaaa1111.*bbbb2222"):
            store.upsert("c1", pts, model_version="bbbb2222")
        with pytest.raises(StoreError, match="dimension"):
            store.upsert("c1", [RecipePoint(pts[0].id, np.ones(3, np.float32), {})], model_version="aaaa1111")
        with pytest.raises(StoreError, match="incomplete"):
            store.swap_alias("recipes", "c1")
        store.mark_complete("c1")
        store.swap_alias("recipes", "c1")
    with EdgeStore(tmp_path / "q") as store:  # reopened: everything is still there
        assert store.resolve_alias("recipes") == "c1"
        info = store.collection_info("c1")
        assert (info.model_version, info.dimension, info.points_count, info.complete) == (
            "aaaa1111",
            DIM,
            12,
            True,
        )
        with pytest.raises(ModelVersionMismatch, match=r"aaaa1111.*bbbb2222"):
            store.search("c1", pts[0].vector, limit=1, model_version="bbbb2222")
        assert store.search("c1", pts[2].vector, limit=1, model_version="aaaa1111")[0].id == pts[2].id
        with pytest.raises(StoreError, match="immutable"):
            store.upsert("c1", pts[:1], model_version="aaaa1111")
        with pytest.raises(StoreError, match="behind alias 'recipes'"):
            store.drop_collection("c1")


def _edge_config(store: EdgeStore, name: str) -> dict[str, Any]:
    return dict(json.loads((store.collections_dir / name / SHARD_DIR / "edge_config.json").read_text()))


def test_edge_search_threads_are_fixed_with_the_shard_and_inherited_by_clones(tmp_path: Path) -> None:
    """1 (the default) pins a search to the caller's thread; 0 leaves Qdrant Edge's pool; same answers."""
    pts = _points(24)
    hits: dict[int, list[list[str]]] = {}
    for threads in (1, 0):
        settings = StoreSettings(path=tmp_path / f"q{threads}", search_threads=threads)
        with open_store(settings) as store:
            assert isinstance(store, EdgeStore)
            store.create_collection("c1", dimension=DIM, model_version="m1")
            store.upsert("c1", pts, model_version="m1")
            store.mark_complete("c1")
            config = _edge_config(store, "c1")
            assert config.get("max_search_threads") == (threads or None)
            store.clone_collection("c1", "c2")
            assert _edge_config(store, "c2").get("max_search_threads") == (threads or None)
            hits[threads] = [
                [h.id for h in store.search(name, p.vector, limit=5, model_version="m1")]
                for name in ("c1", "c2")
                for p in pts[:6]
            ]
        with EdgeStore(tmp_path / f"q{threads}", create=False, search_threads=3) as reopened:
            # an existing collection keeps the pool it was created with
            assert _edge_config(reopened, "c1").get("max_search_threads") == (threads or None)
    assert hits[1] == hits[0]
    assert all(row[0] == pts[i % 6].id for i, row in enumerate(hits[1]))
    assert StoreSettings().search_threads == 1
    with pytest.raises(ValueError, match="search_threads"):
        EdgeStore(tmp_path / "bad", search_threads=-1)
    with pytest.raises(pydantic.ValidationError, match="search_threads"):
        StoreSettings(path=tmp_path / "bad", search_threads=-1)


def test_edge_two_processes_share_a_root(tmp_path: Path) -> None:
    """A reader (gateway) and a writer (indexer) on one root: swaps and edits are seen, writers exclude."""
    pts = _points()
    root = tmp_path / "q"
    writer, other_writer, reader = EdgeStore(root), EdgeStore(root), EdgeStore(root)
    try:
        writer.create_collection("a", dimension=DIM, model_version="m")
        writer.upsert("a", pts[:6], model_version="m")
        with pytest.raises(CollectionBusy, match="another process"):
            other_writer.upsert("a", pts[6:], model_version="m")
        with pytest.raises(CollectionBusy):  # an incomplete collection is opened by its writer only
            reader.count("a")
        writer.upsert("a", pts[6:], model_version="m")
        assert reader.collection_info("a").points_count == 12  # the sidecar is readable meanwhile
        writer.mark_complete("a")
        assert reader.count("a") == 12  # complete: readers need no lock
        writer.swap_alias("recipes", "a")
        assert reader.resolve_alias("recipes") == "a"
        writer.clone_collection("a", "b")
        writer.delete_points("b", [pts[0].id])
        writer.mark_complete("b")
        writer.swap_alias("recipes", "b")
        assert reader.resolve_alias("recipes") == "b" and reader.count("b") == 11
        assert reader.count("a") == 12  # the old one is untouched
    finally:
        for s in (writer, other_writer, reader):
            s.close()


def test_edge_metadata_is_read_again_exactly_when_the_file_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "q"
    with EdgeStore(root) as writer:
        writer.create_collection("a", dimension=DIM, model_version="m1")
        writer.mark_complete("a")
        writer.swap_alias("recipes", "a")
    reads: list[str] = []
    real_read_text = Path.read_text

    def counting_read_text(self: Path, *args: object, **kwargs: object) -> str:
        reads.append(self.name)
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting_read_text)
    with EdgeStore(root) as reader:
        for _ in range(5):  # a gateway's searches: one stat each, the text read once
            assert reader.resolve_alias("recipes") == "a"
            assert reader.collection_info("a").model_version == "m1"
        assert sorted(reads) == ["aliases.json", "collection.json"]
        # Rewritten in place, same size (an editor, not our atomic replace): still noticed.
        meta = root / "collections" / "a" / "collection.json"
        text = real_read_text(meta)
        meta.write_text(text.replace('"m1"', '"m2"'), encoding="utf-8")
        assert reader.collection_info("a").model_version == "m2"
        (root / "aliases.json").unlink()
        assert reader.resolve_alias("recipes") is None


def _metadata_reads(store: RecipeStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The collections whose metadata the server back end fetches from now on (Edge: none to count)."""
    reads: list[str] = []
    if isinstance(store, ServerStore):
        real = store.client.get_collection

        def counting(name: str, *args: Any, **kwargs: Any) -> Any:
            reads.append(name)
            return real(name, *args, **kwargs)

        monkeypatch.setattr(store.client, "get_collection", counting)
    return reads


def test_collection_metadata_is_read_once_yet_never_stale_after_a_change(
    tmp_path: Path, server_stores: list[ServerStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    pts = _points()
    calibration = {"match_calibration": "x" * 80_000}  # the size real metadata has
    with EdgeStore(tmp_path / "q") as edge:
        for store in [edge, *server_stores]:
            kind, name, alias = (
                type(store).__name__,
                f"meta-{uuid.uuid4().hex[:8]}",
                f"a-{uuid.uuid4().hex[:8]}",
            )
            store.create_collection(name, dimension=DIM, model_version="m1", extra=calibration)
            store.upsert(name, pts[:6], model_version="m1")
            reads = _metadata_reads(store, monkeypatch)
            for _ in range(5):  # a gateway's searches
                store.search_recipes(name, pts[0].vector, limit=3, model_version="m1")
                assert store.collection_info(name).extra == calibration
            assert len(reads) <= 1, kind  # the server: once per collection, not on every search
            store.collection_info(name).extra["match_calibration"] = "changed by a caller"
            assert store.collection_info(name).extra == calibration, kind  # callers get copies
            # Every change through the store is seen at once.
            store.set_extra(name, {"quality": {"r1": 0.9}})
            assert store.collection_info(name).extra == {**calibration, "quality": {"r1": 0.9}}, kind
            store.upsert(name, pts[6:9], model_version="m1")
            assert store.collection_info(name).points_count == 9, kind
            store.delete_points(name, [pts[8].id])
            assert store.collection_info(name).points_count == 8, kind
            store.mark_complete(name)
            assert store.collection_info(name).complete, kind
            store.swap_alias(alias, name)
            other = f"{name}-b"
            store.create_collection(other, dimension=DIM, model_version="m1")
            store.mark_complete(other)
            store.swap_alias(alias, other)
            store.drop_collection(name)
            with pytest.raises(CollectionNotFound):
                store.collection_info(name)
            with pytest.raises(CollectionNotFound):
                store.search(name, pts[0].vector, limit=1, model_version="m1")
            store.create_collection(name, dimension=DIM, model_version="m2")  # the same name, another model
            with pytest.raises(ModelVersionMismatch, match=r"m2.*m1"):
                store.search(name, pts[0].vector, limit=1, model_version="m1")
            store.delete_alias(alias)
            for n in (name, other):
                store.drop_collection(n)


def test_server_metadata_changed_by_another_process_is_seen_within_the_ttl(
    server_stores: list[ServerStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    from indexer.store import server

    store = server_stores[0]
    store.create_collection("c", dimension=DIM, model_version="m1", extra={"note": "first"})
    assert store.collection_info("c").extra == {"note": "first"}
    meta = {**store.client.get_collection("c").config.metadata, "extra": {"note": "second"}}
    store.client.update_collection("c", metadata=meta)  # what another process's client would do
    assert store.collection_info("c").extra == {"note": "first"}  # cached: no read per search
    monkeypatch.setattr(server, "METADATA_TTL_S", 0.0)
    assert store.collection_info("c").extra == {"note": "second"}


# -- distinct recipes and honest filters ------------------------------------------------------------
def _multi_photo_catalogue(seed: int = 7) -> tuple[list[RecipePoint], np.ndarray]:
    """12 recipes of 1–4 photos each around their own centre, plus "big": 40 photos near recipe 0.

    Returns the points and a query near recipe 0, so that "big" crowds the first 40 photos.
    """
    rng = np.random.default_rng(seed)
    cats = ["Soups", "Salads", "Desserts"]
    lines = [
        ["2 red chillies", "1 onion"],
        ["3 tomatoes", "basil"],
        ["dark chocolate", "eggs"],
        ["chilli flakes"],
    ]
    points: list[RecipePoint] = []
    centres = rng.standard_normal((12, DIM)).astype(np.float32)
    for r in range(12):
        for k in range(1 + r % 4):
            v = centres[r] + 0.3 * rng.standard_normal(DIM).astype(np.float32)
            payload = {
                "recipe_id": f"r{r}",
                "title": f"Dish {r}",
                "image": f"r{r}/{k}.jpg",
                "category": cats[r % 3],
                "ingredient_keywords": ingredient_keywords(lines[r % 4]),
            }
            points.append(RecipePoint(point_id(f"r{r}", f"{k}.jpg"), v / np.linalg.norm(v), payload))
    for k in range(40):
        v = centres[0] + 0.05 * rng.standard_normal(DIM).astype(np.float32)
        payload = {"recipe_id": "big", "title": "Big", "image": f"big/{k}.jpg", "category": "Soups"}
        points.append(RecipePoint(point_id("big", f"{k}.jpg"), v / np.linalg.norm(v), payload))
    query = centres[0] + 0.02 * rng.standard_normal(DIM).astype(np.float32)
    return points, query / np.linalg.norm(query)


def _brute_force(points: list[RecipePoint], query: np.ndarray, keep: Callable[[dict], bool]) -> list[tuple]:
    """Recipes ranked by their best photo, computed with numpy: (recipe_id, image)."""
    best: dict[str, tuple[float, str]] = {}
    for p in points:
        if keep(p.payload):
            score = float(p.vector @ query)
            rid = p.payload["recipe_id"]
            if rid not in best or score > best[rid][0]:
                best[rid] = (score, p.payload["image"])
    ranked = sorted(best.items(), key=lambda kv: -kv[1][0])
    return [(rid, image) for rid, (_, image) in ranked]


def _grouped_scenario(store: RecipeStore, name: str, points: list[RecipePoint], query: np.ndarray) -> dict:
    store.create_collection(name, dimension=DIM, model_version="m1")
    store.upsert(name, points, model_version="m1")

    def page(limit: int, offset: int = 0, flt: SearchFilter | None = None) -> list[tuple]:
        found = store.search_recipes(name, query, limit=limit, offset=offset, filter=flt, model_version="m1")
        return [(h.recipe_id, h.matched_image, round(h.score, 4)) for h in found.hits]

    no_chilli = store.search_recipes(
        name, query, limit=20, filter=SearchFilter(must_exclude=("Chilli",)), model_version="m1"
    )
    unknown = store.search_recipes(
        name,
        query,
        limit=20,
        filter=SearchFilter(categories=("soups", "Stews"), must_exclude=("unobtainium",)),
        model_version="m1",
    )
    impossible = store.search_recipes(
        name, query, limit=5, filter=SearchFilter(must_include=("saffron",)), model_version="m1"
    )
    return {
        "top5": page(5),
        "pages": page(3) + page(3, 3) + page(3, 6) + page(3, 9) + page(3, 12),
        "all": page(13),
        "no_chilli": sorted(h.recipe_id for h in no_chilli.hits),
        "no_chilli_warnings": no_chilli.warnings,
        "unknown": sorted(h.recipe_id for h in unknown.hits),
        "unknown_warnings": unknown.warnings,
        "impossible": (impossible.hits, impossible.warnings),
        "beyond": page(5, 13),
    }


def test_distinct_recipes_and_filters_agree_on_edge_and_server(
    tmp_path: Path, server_stores: list[ServerStore]
) -> None:
    points, query = _multi_photo_catalogue()
    name = f"groups-{uuid.uuid4().hex[:8]}"
    with EdgeStore(tmp_path / "q") as edge:
        expected = _grouped_scenario(edge, name, points, query)
    truth = _brute_force(points, query, lambda p: True)
    assert len(truth) == 13 and truth[0][0] == "big"
    assert [(rid, image) for rid, image, _ in expected["all"]] == truth  # each once, at its best photo
    assert expected["top5"] == expected["all"][:5] and expected["pages"] == expected["all"]
    assert expected["beyond"] == []
    chilli = {p.payload["recipe_id"] for p in points if "chilli" in p.payload.get("ingredient_keywords", [])}
    assert chilli == {"r0", "r3", "r4", "r7", "r8", "r11"}  # "chillies" and "chilli" written both ways
    assert expected["no_chilli"] == sorted({rid for rid, _ in truth} - chilli)
    assert expected["no_chilli_warnings"] == ()
    assert expected["unknown"] == ["big", "r0", "r3", "r6", "r9"]  # "soups" matched "Soups"
    assert expected["unknown_warnings"] == (
        "category 'Stews' matches no category in the collection",
        "ingredient 'unobtainium' matches no ingredient in the collection",
    )
    assert expected["impossible"] == ([], ("ingredient 'saffron' matches no ingredient in the collection",))
    for server in server_stores:
        try:
            got = _grouped_scenario(server, name, points, query)
        finally:
            if server.url != ":memory:":
                server.client.delete_collection(name)
        assert got == expected, server.url


def test_grouping_is_bounded_and_says_so_by_a_short_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from indexer.store import base

    points, query = _multi_photo_catalogue()
    monkeypatch.setattr(base, "GROUP_FETCH_LIMIT", 40)  # only "big"'s photos fit in the bound
    with EdgeStore(tmp_path / "q") as store:
        store.create_collection("c", dimension=DIM, model_version="m1")
        store.upsert("c", points, model_version="m1")
        hits = store.search_recipes("c", query, limit=3, model_version="m1").hits
    assert [h.recipe_id for h in hits] == ["big"]


def test_a_vocabulary_read_before_a_write_never_makes_a_filter_wrong(
    tmp_path: Path, server_stores: list[ServerStore]
) -> None:
    pts = _points()
    with EdgeStore(tmp_path / "q") as edge:
        stores: list[RecipeStore] = [edge, *server_stores]
        for store in stores:
            name = f"fresh-{uuid.uuid4().hex[:8]}"
            store.create_collection(name, dimension=DIM, model_version="m1")
            store.upsert(name, pts[:6], model_version="m1")
            flt = SearchFilter(must_exclude=("Leeks",), categories=("stews",))
            assert store.search(name, pts[6].vector, limit=12, filter=flt, model_version="m1") == []
            new = {
                "recipe_id": "leek",
                "category": "Stews",
                "ingredient_keywords": ingredient_keywords(["leeks"]),
            }
            store.upsert(name, [RecipePoint(pts[6].id, pts[6].vector, new)], model_version="m1")
            plain = {**new, "recipe_id": "plain", "ingredient_keywords": ["water"]}
            store.upsert(name, [RecipePoint(pts[7].id, pts[7].vector, plain)], model_version="m1")
            hits = store.search(name, pts[6].vector, limit=12, filter=flt, model_version="m1")
            assert [h.payload["recipe_id"] for h in hits] == ["plain"], type(store).__name__
            if isinstance(store, ServerStore) and store.url != ":memory:":
                store.client.delete_collection(name)
