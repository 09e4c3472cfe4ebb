"""The one embedder interface: in-process and remote give the same vectors; batchers are set up once."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from embedder.embedding import SyncEmbedder, combine_views
from embedder.errors import EmbedderError
from embedder.factory import open_embedder
from embedder.inprocess import InProcessEmbedder
from embedder.preprocess import preprocess
from embedder.remote import RemoteEmbedder
from embedder.repository import UnknownModelError
from embedder.runtime import EmbeddingModel
from embedder.server import RunningServer, start_server
from tests.embedder.conftest import make_model, settings_for
from tests.support.tinymodel import write_tiny_model


class _Photo:
    """A photo decoded by the caller, as the indexer hands them over."""

    def __init__(self, data: bytes, model: EmbeddingModel) -> None:
        self.data = data
        self.array = preprocess(data, size=model.image_size)


def test_remote_embedder_matches_in_process(
    server: RunningServer, photo_bytes: list[bytes], two_models: tuple[Path, str, str]
) -> None:
    root, old, _ = two_models
    remote = RemoteEmbedder(server.address)
    vector = asyncio.run(remote.embed([photo_bytes[4]], old))[0]
    assert vector.shape == (64,)
    expected = EmbeddingModel(root / "m-seed0").embed_images([photo_bytes[4]])[0]
    np.testing.assert_allclose(vector, expected, atol=1e-5)
    with pytest.raises(EmbedderError) as info:
        asyncio.run(remote.embed([photo_bytes[4]], "0000000000000000"))
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    asyncio.run(remote.aclose())


def test_in_process_sets_up_one_batcher_per_version_and_shares_runs(
    two_models: tuple[Path, str, str], photo_bytes: list[bytes]
) -> None:
    root, old, new = two_models
    embedder = open_embedder(None, root, max_delay_s=0.02)
    assert isinstance(embedder, InProcessEmbedder)

    async def scenario() -> None:
        first = embedder.resolve(old).batcher
        arrays = [await embedder.prepare(p, old) for p in photo_bytes[:8]]
        results = await asyncio.gather(*(embedder.embed_prepared([a], old) for a in arrays))
        assert embedder.resolve(old).batcher is first  # the same batcher, not one per call
        assert embedder.batch_stats(old).items == 8 and embedder.batch_stats(old).batches < 8
        expected = EmbeddingModel(root / "m-seed0").embed_images(photo_bytes[:8])
        np.testing.assert_allclose(np.concatenate(results), expected, atol=1e-5)
        assert embedder.default_version == new
        with pytest.raises(UnknownModelError) as info:
            await embedder.embed_prepared(arrays[:1], "0000000000000000")
        assert info.value.code == grpc.StatusCode.NOT_FOUND and old in str(info.value)
        await embedder.aclose()
        with pytest.raises(EmbedderError) as closed:
            await embedder.embed_prepared(arrays[:1], old)
        assert closed.value.code == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_caller_runs_in_process_gives_the_batched_vector(
    server: RunningServer, two_models: tuple[Path, str, str], photo_bytes: list[bytes]
) -> None:
    root, old, _ = two_models
    embedder = open_embedder(None, root)
    remote = RemoteEmbedder(server.address)

    async def scenario() -> None:
        prepared = await embedder.prepare(photo_bytes[2], old)
        here = await asyncio.to_thread(embedder.prepare_here, photo_bytes[2], old)
        np.testing.assert_array_equal(here, prepared)  # the same decoding, in the caller's thread
        batched = (await embedder.embed_prepared([prepared], old))[0]
        ran_here = await asyncio.to_thread(embedder.embed_here, prepared, old)
        assert ran_here is not None and ran_here.shape == (64,)
        np.testing.assert_allclose(ran_here, batched, atol=1e-6)
        assert embedder.batch_stats(old).batches == 2  # both ran through the model's batcher
        assert embedder.embed_here(prepared, "0000000000000000") is None  # unknown: the async path says why
        assert remote.prepare_here(photo_bytes[2], old) is None and remote.embed_here(prepared, old) is None
        await embedder.aclose()
        await remote.aclose()
        assert embedder.embed_here(prepared, old) is None  # unloaded

    asyncio.run(scenario())


def test_watched_model_dir_finds_a_model_added_later(tmp_path: Path, photo_bytes: list[bytes]) -> None:
    models = tmp_path / "models"
    embedder = open_embedder(None, models, watch_model_dir=True)  # nothing there yet: tolerated

    async def scenario() -> None:
        assert (await embedder.status()).models == []
        version = make_model(models / "late", seed=3, created_at="2025-02-01T00:00:00+00:00")
        vectors = await embedder.embed(photo_bytes[:2], version)  # a miss rescans the folder
        assert vectors.shape == (2, 64)
        assert (await embedder.status()).versions == [version]
        await embedder.aclose()

    asyncio.run(scenario())


def test_sync_wrapper_gives_the_same_vectors_in_and_out_of_process(
    server: RunningServer, two_models: tuple[Path, str, str], photo_bytes: list[bytes], tmp_path: Path
) -> None:
    root, old, _ = two_models
    folder = tmp_path / "old"
    shutil.copytree(root / "m-seed0", folder)
    model = EmbeddingModel(folder)
    photos = [_Photo(p, model) for p in photo_bytes[:10]]
    batches = [photos[i : i + 3] for i in range(0, 10, 3)]
    with (
        SyncEmbedder(open_embedder(None, folder), max_in_flight=2) as local,
        SyncEmbedder(open_embedder(server.address, folder), old, max_in_flight=3) as remote,
    ):
        assert local.version == remote.version == old and local.dimension == remote.dimension == 64
        assert local.image_size == remote.image_size == model.image_size
        got_local = list(local.embed_batches(iter(batches)))
        got_remote = list(remote.embed_batches(iter(batches)))
        assert [len(v) for v in got_local] == [len(v) for v in got_remote] == [3, 3, 3, 1]
        np.testing.assert_allclose(np.concatenate(got_local), model.embed_images(photo_bytes[:10]), atol=1e-5)
        np.testing.assert_allclose(np.concatenate(got_local), np.concatenate(got_remote), atol=1e-5)
        # One gallery size: catalogue photos get their query vectors.
        gallery = np.concatenate(list(remote.embed_gallery_batches(iter(batches))))
        np.testing.assert_allclose(gallery, np.concatenate(got_local), atol=1e-5)
    with pytest.raises(EmbedderError, match="unknown model version") as info:
        SyncEmbedder(open_embedder(server.address, folder), "0000000000000000")
    assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_gallery_photos_are_embedded_at_every_gallery_size_and_combined(
    tmp_path: Path, photo_bytes: list[bytes]
) -> None:
    folder = tmp_path / "models" / "zoomed"
    write_tiny_model(folder, gallery_sizes=(224, 288))
    model = EmbeddingModel(folder)
    queries = model.embed_arrays(np.stack([preprocess(p, size=224) for p in photo_bytes[:7]]))
    at_288 = model.embed_arrays(np.stack([preprocess(p, size=288) for p in photo_bytes[:7]]))
    total = queries + at_288
    expected = total / np.linalg.norm(total, axis=1, keepdims=True)
    np.testing.assert_allclose(combine_views([queries, at_288]), expected, atol=1e-6)
    assert np.max(np.sum(expected * queries, axis=1)) < 0.99  # the gallery vector is not the query's
    photos = [_Photo(p, model) for p in photo_bytes[:7]]
    batches = [photos[:4], photos[4:]]
    with (
        start_server(settings_for(tmp_path / "models")) as running,
        SyncEmbedder(open_embedder(None, folder), max_in_flight=2) as local,
        SyncEmbedder(open_embedder(running.address, folder), max_in_flight=2) as remote,
    ):
        assert local.gallery_views == remote.gallery_views == (224, 288)
        for embedder in (local, remote):
            got = list(embedder.embed_gallery_batches(iter(batches)))
            assert [len(v) for v in got] == [4, 3]
            np.testing.assert_allclose(np.concatenate(got), expected, atol=1e-5)
            np.testing.assert_allclose(
                np.concatenate(list(embedder.embed_batches(iter(batches)))), queries, atol=1e-5
            )
        # A photo that cannot be decoded is refused, named by its index, not skipped.
        broken = SimpleNamespace(data=b"not a photo", array=photos[0].array)
        for embedder, message in ((local, "image 1 at 288 px"), (remote, "image 1:")):
            with pytest.raises(EmbedderError, match=message) as info:
                list(embedder.embed_gallery_batches([[photos[0], broken]]))
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_one_batch_of_two_sizes_runs_once_per_size(tmp_path: Path, photo_bytes: list[bytes]) -> None:
    folder = tmp_path / "zoomed"
    write_tiny_model(folder, gallery_sizes=(224, 288))
    embedder = open_embedder(None, folder, max_delay_s=0.05)
    assert isinstance(embedder, InProcessEmbedder)
    small = [preprocess(p, size=224) for p in photo_bytes[:3]]
    large = [preprocess(p, size=288) for p in photo_bytes[:3]]
    model = embedder.model()

    async def scenario() -> tuple[list[np.ndarray], int]:
        try:
            vectors = await asyncio.gather(
                *(embedder.embed_prepared([a], model.version) for a in small + large)
            )
            return list(vectors), embedder.batch_stats().largest_batch
        finally:
            await embedder.aclose()

    vectors, largest = asyncio.run(scenario())
    assert largest > 3  # the two sizes met in one batch
    got = np.concatenate(vectors)
    np.testing.assert_allclose(got[:3], model.embed_arrays(np.stack(small)), atol=1e-5)
    np.testing.assert_allclose(got[3:], model.embed_arrays(np.stack(large)), atol=1e-5)
