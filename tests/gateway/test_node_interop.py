"""Interop: Node's @grpc/grpc-js calls SearchByImage using only the .proto file."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.server import RunningGateway
from protos import PROTO_ROOT
from tests.gateway.conftest import World

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="needs Node.js (Debian package `nodejs`)"),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(),
        reason=f"node_modules missing: run `npm ci --prefix {NODE_DIR}` (@grpc/grpc-js, @grpc/proto-loader)",
    ),
]


def test_node_client_searches_by_image(gateway: RunningGateway, world: World) -> None:
    photo = world.images / "r005.jpg"
    run = subprocess.run(
        [str(NODE), str(NODE_DIR / "search.js"), str(PROTO_ROOT), gateway.grpc_address, str(photo), "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    response = json.loads(run.stdout)
    assert response["model_version"] == world.version_a
    assert [h["rank"] for h in response["hits"]] == [1, 2, 3]
    assert response["hits"][0]["recipe"]["id"] == "r005"
    assert response["hits"][0]["recipe"]["title"] == "Recipe 5"


def test_node_client_sees_status_codes(gateway: RunningGateway, tmp_path: Path) -> None:
    bad = tmp_path / "not-a-photo.jpg"
    bad.write_text("hello")
    run = subprocess.run(
        [str(NODE), str(NODE_DIR / "search.js"), str(PROTO_ROOT), gateway.grpc_address, str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert json.loads(run.stderr)["code"] == 3  # INVALID_ARGUMENT
