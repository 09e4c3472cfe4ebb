"""Compose smoke test without a Docker engine: every service command of docker-compose.yml that we own runs
as a local process with that service's environment from the compose file — only hosts become loopback,
ports free ones, container paths temporary folders, and Qdrant Edge stands in for the qdrant container —
and the compose healthcheck (and the image's HEALTHCHECK) must pass against it. This proves that the ports,
setting names, commands and health checks in docker-compose.yml and deploy/Dockerfile match the code.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.deployfiles import (
    ROOT,
    load_compose,
    read_env_file,
    service_environment,
    stage_instructions,
)
from tests.deploy.services import LocalService, clean_env, free_port, healthcheck_bin
from tests.support.imagegen import encode, synthetic_photo
from tests.support.tinymodel import write_tiny_model

SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def entry_point(script: str) -> list[str]:
    """argv running console script ``script`` exactly as its pyproject entry point does; skip if unwritten."""
    if script not in SCRIPTS:
        pytest.skip(f"{script} is not a console script in pyproject.toml yet")
    module, func = SCRIPTS[script].split(":")
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{script}: module {module} is not written yet")
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


def image_entrypoint(target: str) -> str:
    (entrypoint,) = stage_instructions(target, "ENTRYPOINT")
    return entrypoint.strip('[]"')


def healthcheck_shell(service: dict[str, Any]) -> str:
    """The compose healthcheck as the shell command Docker runs (CMD-SHELL or CMD)."""
    test = service["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":
        return str(test[1])
    assert test[0] == "CMD"
    return " ".join(test[1:])


def dockerfile_healthcheck(target: str) -> str:
    (healthcheck,) = stage_instructions(target, "HEALTHCHECK")
    return healthcheck.split(" CMD ", 1)[1]


@dataclass
class Stack:
    root: Path
    models: Path
    catalog: Path
    store: Path
    compose: dict[str, Any]
    path: str  # PATH with recipelens-healthcheck first

    def env(self, service: str, changes: dict[str, str | None]) -> dict[str, str]:
        """The service's compose environment, with ``changes`` applied (None removes a variable)."""
        env = service_environment(self.compose["services"][service])
        for key, value in changes.items():
            assert key in env or value is not None, f"{service} does not set {key} in docker-compose.yml"
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return clean_env({**env, "PATH": self.path})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    root = tmp_path_factory.mktemp("compose-smoke")
    models = root / "models"
    write_tiny_model(models / "tiny")
    catalog = root / "catalog"
    catalog.mkdir()
    for seed in range(12):
        (catalog / f"dish-{seed:02d}.jpg").write_bytes(encode(synthetic_photo(seed), "JPEG", quality=90))
    compose = load_compose({**read_env_file(), "RECIPELENS_INDEX_MODEL": "tiny"})
    bin_dir = healthcheck_bin(root / "bin")
    return Stack(
        root, models, catalog, root / "qdrant-edge", compose, f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    )


@pytest.fixture(scope="module")
def embedder(stack: Stack) -> Iterator[tuple[LocalService, int]]:
    argv = entry_point(image_entrypoint("embedder"))
    port = free_port()
    env = stack.env(
        "embedder",
        {
            "RECIPELENS_EMBEDDER_HOST": "127.0.0.1",
            "RECIPELENS_EMBEDDER_PORT": str(port),
            "RECIPELENS_EMBEDDER_MODEL_DIR": str(stack.models),
        },
    )
    service = LocalService("embedder", argv, env, stack.root / "embedder.log")
    try:
        service.wait_healthy(healthcheck_shell(stack.compose["services"]["embedder"]), env)
        yield service, port
    finally:
        status = service.stop()
    assert status == 0, f"embedder did not stop cleanly on SIGTERM ({status}):\n{service.log()}"


def test_embedder_compose_command_and_healthchecks(stack: Stack, embedder: tuple[LocalService, int]) -> None:
    service, port = embedder
    env = stack.env("embedder", {"RECIPELENS_EMBEDDER_PORT": str(port)})
    # the image's own HEALTHCHECK and the named service of the health protocol answer too
    assert "healthy" in service.wait_healthy(dockerfile_healthcheck("embedder"), env, timeout_s=10)
    service.wait_healthy(f"recipelens-healthcheck grpc://127.0.0.1:{port}/recipelens.v1.Embedder", env, 10)
    # …and a probe of a port where nothing listens fails, so the checks above could have failed
    dead = subprocess.run(
        ["sh", "-c", f"recipelens-healthcheck --timeout 1 grpc://127.0.0.1:{free_port()}"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert dead.returncode == 1 and "unhealthy" in dead.stderr


@pytest.fixture(scope="module")
def index(stack: Stack) -> Path:
    """Run the compose indexer job's command against Qdrant Edge; return the store folder."""
    service = stack.compose["services"]["indexer"]
    argv = entry_point(image_entrypoint("indexer"))
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    local = {"/catalog": stack.catalog, "/models": stack.models}
    assert set(mounts) == set(local), "the indexer job mounts changed: update this test"
    command = [str(arg) for arg in service["command"]]
    for target, folder in local.items():
        command = [str(folder) + arg[len(target) :] if arg.startswith(target) else arg for arg in command]
    env = stack.env(
        "indexer",
        {
            "RECIPELENS_INDEXER_STORE__QDRANT_URL": None,
            "RECIPELENS_INDEXER_STORE__PATH": str(stack.store),
            "RECIPELENS_INDEXER_BAD_REPORT": str(stack.root / "bad-items.csv"),
        },
    )
    done = subprocess.run(
        [*argv, *command, "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=stack.root,
        check=False,
    )
    assert done.returncode == 0, f"indexer job failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return stack.store


def test_indexer_job_builds_an_index(index: Path) -> None:
    assert index.is_dir() and any(index.iterdir())


def test_gateway_compose_command_and_healthchecks(
    stack: Stack, embedder: tuple[LocalService, int], index: Path
) -> None:
    argv = entry_point(image_entrypoint("gateway"))
    _, embedder_port = embedder
    grpc_port, http_port = free_port(), free_port()
    env = stack.env(
        "gateway",
        {
            "RECIPELENS_GATEWAY_GRPC_HOST": "127.0.0.1",
            "RECIPELENS_GATEWAY_GRPC_PORT": str(grpc_port),
            "RECIPELENS_GATEWAY_HTTP_HOST": "127.0.0.1",
            "RECIPELENS_GATEWAY_HTTP_PORT": str(http_port),
            "RECIPELENS_GATEWAY_EMBEDDER_ADDRESS": f"127.0.0.1:{embedder_port}",
            "RECIPELENS_GATEWAY_MODEL_DIR": str(stack.models),
            "RECIPELENS_GATEWAY_QDRANT_URL": None,
            "RECIPELENS_GATEWAY_STORE_PATH": str(index),
        },
    )
    service = LocalService("gateway", argv, env, stack.root / "gateway.log")
    try:
        output = service.wait_healthy(healthcheck_shell(stack.compose["services"]["gateway"]), env)
        assert f"grpc://127.0.0.1:{grpc_port}" in output and f"127.0.0.1:{http_port}/healthz" in output
        service.wait_healthy(dockerfile_healthcheck("gateway"), env, timeout_s=10)
    finally:
        status = service.stop()
    assert status == 0, f"gateway did not stop cleanly on SIGTERM ({status}):\n{service.log()}"
