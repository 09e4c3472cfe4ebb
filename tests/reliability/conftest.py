"""Reliability suite fixtures: one world (tiny model, photos, Edge store) and embedder + gateway stacks.

The suite takes about two minutes on 2 cores, so the default ``make test`` run includes it. Run it alone
with ``make reliability`` (``pytest -m reliability tests/reliability``); skip it with
``RECIPELENS_RELIABILITY=0`` or ``-m "not reliability"``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.stack import Stack, World, make_world, query_photos

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("RECIPELENS_RELIABILITY", "1") != "0":
        return
    skip = pytest.mark.skip(reason="reliability suite switched off by RECIPELENS_RELIABILITY=0")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("reliability"))


@pytest.fixture(scope="session")
def photos() -> list[bytes]:
    return query_photos()


@pytest.fixture(scope="module")
def stack(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A fresh embedder + gateway pair per test module (remote-embedder mode, Edge store, auth off)."""
    running = Stack(
        world,
        tmp_path_factory.mktemp("logs"),
        gateway_env={"RECIPELENS_GATEWAY_MAX_UPLOAD_BYTES": str(1 << 20)},
    )
    with running:
        yield running
