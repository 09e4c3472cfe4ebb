"""The images proven on a Docker engine: built offline from the wheelhouse, run, health-checked, searched.

One module (over 450 lines) on purpose: every test here shares the module-scoped engine, wheelhouse,
images and running stack, which take minutes to make; split into files they would be made once per file.

Needs a Docker engine (one answering, or root with Debian's docker.io and debootstrap to start one here —
see tests/deploy/engine.py); skipped with the reason otherwise, or with RECIPELENS_SKIP_IMAGES=1. Marker
``images``; ``make images-test`` runs it alone. Steps:

1. the Python base: $RECIPELENS_PYTHON_IMAGE, else python:3.11-slim-bookworm when the engine has it, else
   the debootstrap stand-in (deploy/standin-python.sh, its tarball cached in ~/.cache/recipelens);
2. ``make wheelhouse`` (while the base is made) then ``make images`` with ``--network none``: the build
   cannot reach any index;
3. the compose profile ``embedded`` of docker-compose.yml as it is (docker-compose, when installed; the
   gateway published on free loopback ports), else (or with RECIPELENS_IMAGES_RUNNER=docker) plain
   ``docker run --network host`` on loopback ports:
   the indexer job indexes a generated catalogue into a Qdrant Edge volume, then the embedder and gateway
   run as uid 10001 with the model mounted read-only (the store read-write: qdrant-edge-py 0.9 cannot
   search a read-only mount);
4. both HEALTHCHECKs pass, a photo is searched over gRPC and HTTP, SIGTERM stops each cleanly in time;
5. image sizes (goal ≤ 600 MB each) and build and start times are printed; containers, the volume and
   the test's image tags are removed (the base image and BuildKit's cache stay: they are the cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from recipelens.v1 import search_pb2, search_pb2_grpc

from tests.deploy.deployfiles import COMPOSE_FILE, ENV_EXAMPLE, ROOT, load_compose, read_env_file
from tests.deploy.engine import DockerEngine, cache_dir, exclusive_cache, find_or_start_engine, report
from tests.deploy.services import free_port
from tests.support.imagegen import encode, synthetic_photo
from tests.support.tinymodel import write_tiny_model

pytestmark = [pytest.mark.images, pytest.mark.timeout(2400)]

TARGETS = ("embedder", "gateway", "indexer")
SIZE_GOAL_MB = 600
PHOTOS = 12
QUERY = 3  # the catalogue photo searched for (re-encoded): its recipe must come first
USER = "10001:10001"
CACHE_KEEP = "1500MB"  # BuildKit cache kept between runs, as BuildKit counts it (vfs: ~11 GB on disk)
COMPOSE_SERVICE = {"embedder": "embedder", "gateway": "gateway-embedded"}


def stop_limit_s(service: str) -> float:
    """docker-compose.yml's stop_grace_period: SIGTERM → exit must come before compose would SIGKILL."""
    period = str(load_compose()["services"][COMPOSE_SERVICE[service]]["stop_grace_period"])
    assert period.endswith("s")
    return float(period[:-1])


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerEngine]:
    if os.environ.get("RECIPELENS_SKIP_IMAGES"):
        pytest.skip("RECIPELENS_SKIP_IMAGES is set")
    with exclusive_cache(timeout_s=1200) as waited_s:
        if waited_s > 1:
            report(f"waited {waited_s:.0f} s for another image test on this cache")
        found = find_or_start_engine()
        if isinstance(found, str):
            pytest.skip(f"image test needs a Docker engine: {found}")
        for note in found.notes:
            report(note)
        try:
            yield found
        finally:
            found.stop()


class Wheelhouse:
    """``make wheelhouse`` started in the background, so it runs while the base image is made."""

    def __init__(self, engine: DockerEngine) -> None:
        self.start = time.monotonic()
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", "wheelhouse", f"PYTHON={sys.executable}"],
            cwd=ROOT,
            env=engine.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait(self) -> float:
        """Seconds it took; fails the test with pip's output when it failed."""
        output, _ = self.process.communicate(timeout=900)
        assert self.process.returncode == 0, f"make wheelhouse failed:\n{output[-6000:]}"
        assert list((ROOT / "deploy" / "wheelhouse").glob("*.whl")), "make wheelhouse left no wheels"
        return time.monotonic() - self.start


@pytest.fixture(scope="module")
def wheelhouse(engine: DockerEngine) -> Iterator[Wheelhouse]:
    job = Wheelhouse(engine)
    try:
        yield job
    finally:
        if job.process.poll() is None:
            job.process.kill()
            job.process.wait()


@pytest.fixture(scope="module")
def python_image(engine: DockerEngine, wheelhouse: Wheelhouse) -> str:
    configured = os.environ.get("RECIPELENS_PYTHON_IMAGE")
    if configured:
        return configured
    if engine.run(["image", "inspect", "python:3.11-slim-bookworm"], check=False).returncode == 0:
        return "python:3.11-slim-bookworm"
    image = "recipelens/python-standin:3.11-bookworm"
    start = time.monotonic()
    made = subprocess.run(
        ["bash", str(ROOT / "deploy" / "standin-python.sh"), image],
        env={**engine.env, "DOCKER": engine.client, "RECIPELENS_CACHE": str(cache_dir())},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if made.returncode == 3:  # no debootstrap / not root: nothing to build on
        pytest.skip(f"no python:3.11 base image and no stand-in: {made.stderr.strip()}")
    assert made.returncode == 0, f"stand-in base failed:\n{made.stdout}\n{made.stderr}"
    report(f"{made.stdout.strip().splitlines()[-1]} ({time.monotonic() - start:.0f} s)")
    return image


@dataclass
class Built:
    tag: str
    sizes_mb: dict[str, float]
    wheelhouse_s: float
    build_s: float


def make(engine: DockerEngine, *args: str, timeout: float) -> float:
    start = time.monotonic()
    done = subprocess.run(
        ["make", "--no-print-directory", *args, f"PYTHON={sys.executable}", f"DOCKER={engine.client}"],
        cwd=ROOT,
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (
        f"make {' '.join(args)} failed:\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    )
    return time.monotonic() - start


@pytest.fixture(scope="module")
def images(engine: DockerEngine, wheelhouse: Wheelhouse, python_image: str) -> Iterator[Built]:
    tag = f"test-{os.getpid()}"
    wheelhouse_s = wheelhouse.wait()
    try:
        build_s = make(
            engine,
            "images",
            f"IMAGE_TAG={tag}",
            f"PYTHON_IMAGE={python_image}",
            "BUILD_FLAGS=--network none",  # offline for real: the wheelhouse is the only source
            timeout=2000,
        )
        sizes = {
            target: int(
                engine.run(["image", "inspect", "-f", "{{.Size}}", f"recipelens/{target}:{tag}"]).stdout
            )
            / 1e6
            for target in TARGETS
        }
        report(
            "image sizes: "
            + ", ".join(f"{t} {mb:.0f} MB" for t, mb in sizes.items())
            + f" (goal ≤ {SIZE_GOAL_MB} MB each; base {python_image})"
        )
        report(
            f"make wheelhouse {wheelhouse_s:.0f} s (beside the base image), "
            f"make images (3 targets, --network none) {build_s:.0f} s"
        )
        yield Built(tag, sizes, wheelhouse_s, build_s)
    finally:
        engine.run(["rmi", "-f", *(f"recipelens/{t}:{tag}" for t in TARGETS)], check=False)
        # keep the cache bounded: vfs stores every layer whole, and each run adds a project layer
        engine.run(["image", "prune", "-f"], check=False)
        engine.run(["builder", "prune", "-f", "--keep-storage", CACHE_KEEP], check=False, timeout=300)


def test_images_build_offline_within_the_size_goal(engine: DockerEngine, images: Built) -> None:
    assert all(mb <= SIZE_GOAL_MB for mb in images.sizes_mb.values()), images.sizes_mb
    for target in TARGETS:
        config = json.loads(engine.run(["image", "inspect", f"recipelens/{target}:{images.tag}"]).stdout)[0]
        assert config["Config"]["User"] == USER, target
        assert (config["Config"].get("Healthcheck") or {}).get("Test", ["NONE"])[
            0
        ] != "NONE" or target == "indexer"
    # serving images carry onnxruntime and no TensorFlow
    code = "import importlib.util as u; print(*(bool(u.find_spec(m)) for m in ('onnxruntime', 'tensorflow')))"
    probe = engine.run(
        [
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "python",
            f"recipelens/embedder:{images.tag}",
            "-c",
            code,
        ]
    )
    assert probe.stdout.split() == ["True", "False"]


# -- the stack ---------------------------------------------------------------------------------------------


def readable(folder: Path) -> Path:
    """World-readable tree: the containers read it as uid 10001."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def env_flags(env: dict[str, str]) -> list[str]:
    return [flag for key, value in env.items() for flag in ("-e", f"{key}={value}")]


@dataclass
class Stack:
    engine: DockerEngine
    tag: str
    root: Path
    models: Path
    catalog: Path
    embedder_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)  # the embedder's, read from inside its container
    runner: str = ""
    containers: dict[str, str] = field(default_factory=dict)  # embedder / indexer / gateway → container id
    started_s: float = 0.0

    def inspect(self, service: str) -> dict[str, object]:
        found: dict[str, object] = json.loads(self.engine.run(["inspect", self.containers[service]]).stdout)[
            0
        ]
        return found

    def logs(self, service: str) -> str:
        done = self.engine.run(["logs", "--tail", "60", self.containers[service]], check=False)
        return done.stdout + done.stderr

    def wait_healthy(self, service: str, timeout_s: float = 240) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            state = self.inspect(service)["State"]
            assert isinstance(state, dict)
            if not state["Running"]:
                raise AssertionError(f"{service} exited ({state['ExitCode']}):\n{self.logs(service)}")
            if state["Health"]["Status"] == "healthy":
                return time.monotonic() - start
            time.sleep(1)
        raise AssertionError(f"{service} not healthy in {timeout_s:.0f} s:\n{self.logs(service)}")


def compose_client() -> str | None:
    if os.environ.get("RECIPELENS_IMAGES_RUNNER", "compose") != "compose":
        return None
    return shutil.which("docker-compose")


@pytest.fixture(scope="module")
def stack(engine: DockerEngine, images: Built) -> Iterator[Stack]:
    # Not pytest's tmp_path: on a machine shared by several pytest sessions, each one deletes all but the
    # last three base folders, and this one's bind-mount sources and compose project must outlive them.
    (cache_dir() / "run").mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="image-test-", dir=cache_dir() / "run"))
    try:
        yield from _stack(engine, images, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _stack(engine: DockerEngine, images: Built, root: Path) -> Iterator[Stack]:
    models = root / "models"
    write_tiny_model(models / "tiny")
    catalog = root / "catalog"
    catalog.mkdir()
    for seed in range(PHOTOS):
        (catalog / f"dish-{seed:02d}.jpg").write_bytes(encode(synthetic_photo(seed), "JPEG", quality=90))
    stack = Stack(engine, images.tag, root, readable(models), readable(catalog))
    compose = compose_client()
    if compose:
        yield from _compose_stack(stack, compose)
    else:
        yield from _docker_run_stack(stack)


def gateway_env(stack: Stack) -> dict[str, str]:
    """The gateway on loopback ports, calling the embedder there (host networking)."""
    return {
        "RECIPELENS_GATEWAY_GRPC_HOST": "127.0.0.1",
        "RECIPELENS_GATEWAY_GRPC_PORT": str(stack.grpc_port),
        "RECIPELENS_GATEWAY_HTTP_HOST": "127.0.0.1",
        "RECIPELENS_GATEWAY_HTTP_PORT": str(stack.http_port),
        "RECIPELENS_GATEWAY_EMBEDDER_ADDRESS": f"127.0.0.1:{stack.embedder_port}",
    }


def embedder_env(stack: Stack) -> dict[str, str]:
    return {
        "RECIPELENS_EMBEDDER_HOST": "127.0.0.1",
        "RECIPELENS_EMBEDDER_PORT": str(stack.embedder_port),
        "RECIPELENS_EMBEDDER_METRICS_PORT": str(stack.metrics_port),
    }


def _compose_stack(stack: Stack, compose: str) -> Iterator[Stack]:
    """docker-compose.yml's profile ``embedded`` as it is: its network, the gateway published on loopback."""
    start = time.monotonic()
    stack.runner = compose
    tag = stack.tag
    project = stack.root / "compose"
    project.mkdir()
    shutil.copy(COMPOSE_FILE, project / "docker-compose.yml")
    env = {
        **read_env_file(ENV_EXAMPLE),
        "COMPOSE_PROJECT_NAME": f"recipelens-{tag}",
        "RECIPELENS_MODELS": str(stack.models),
        "RECIPELENS_CATALOG": str(stack.catalog),
        "RECIPELENS_INDEX_MODEL": "tiny",
        "RECIPELENS_IMAGE_TAG": tag,
        "GATEWAY_PUBLISH_ADDRESS": "127.0.0.1",
        "GATEWAY_GRPC_PUBLISH_PORT": str(stack.grpc_port),
        "GATEWAY_HTTP_PUBLISH_PORT": str(stack.http_port),
        # reaches the containers through env_file, as an operator's .env would
        "RECIPELENS_EMBEDDER_METRICS_PORT": str(stack.metrics_port),
    }
    (project / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    base = [compose, "--profile", "embedded"]

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*base, *args],
            cwd=project,
            env=stack.engine.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done

    try:
        # up waits for the indexer job to finish and the embedder to be healthy, then starts the gateway
        run("up", "-d", "--no-build")
        for service, name in (
            ("embedder", "embedder"),
            ("indexer", "indexer-embedded"),
            ("gateway", "gateway-embedded"),
        ):
            stack.containers[service] = run("ps", "-a", "-q", name).stdout.strip()
            assert stack.containers[service], f"compose started no {name}"
        stack.wait_healthy("gateway")
        stack.started_s = time.monotonic() - start
        report(f"{compose} --profile embedded up: indexed and healthy in {stack.started_s:.0f} s")
        yield stack
    finally:
        down = [*base, "down", "-v", "--remove-orphans", "-t", "20"]
        subprocess.run(down, cwd=project, env=stack.engine.env, capture_output=True, timeout=300, check=False)
        remove_project(stack.engine, env["COMPOSE_PROJECT_NAME"])


def remove_project(engine: DockerEngine, project: str) -> None:
    """Whatever of a compose project is left after ``down`` (it may fail): containers, volumes, networks."""
    label = f"label=com.docker.compose.project={project}"
    for kind, remove in (
        ("container", ["rm", "-f"]),
        ("volume", ["volume", "rm", "-f"]),
        ("network", ["network", "rm"]),
    ):
        listing = ["ps", "-aq"] if kind == "container" else [kind, "ls", "-q"]
        left = engine.run([*listing, "--filter", label], check=False).stdout.split()
        if left:
            engine.run([*remove, *left], check=False, timeout=120)


def _docker_run_stack(stack: Stack) -> Iterator[Stack]:
    """The same three steps with ``docker run`` where no compose client is installed."""
    start = time.monotonic()
    stack.runner = "docker run"
    engine, tag, models, catalog = stack.engine, stack.tag, stack.models, stack.catalog
    volume = f"recipelens-{tag}-edge"
    names = {service: f"recipelens-{tag}-{service}" for service in ("indexer", "embedder", "gateway")}
    engine.run(["volume", "create", volume])
    host = ["--network", "host"]
    try:
        indexer = engine.run(
            [
                "run", "--name", names["indexer"], *host,
                "-e", "RECIPELENS_INDEXER_STORE__PATH=/store",
                "-v", f"{catalog}:/catalog:ro", "-v", f"{models}:/models:ro", "-v", f"{volume}:/store",
                f"recipelens/indexer:{tag}", "build", "--catalog", "/catalog", "--model", "/models/tiny",
            ],
            timeout=600,
        )  # fmt: skip
        stack.containers["indexer"] = names["indexer"]
        assert indexer.returncode == 0
        stack.containers["embedder"] = engine.run(
            [
                "run", "-d", "--name", names["embedder"], *host,
                *env_flags(embedder_env(stack)),
                "-v", f"{models}:/models:ro", f"recipelens/embedder:{tag}",
            ]
        ).stdout.strip()  # fmt: skip
        stack.wait_healthy("embedder")
        stack.containers["gateway"] = engine.run(
            [
                "run", "-d", "--name", names["gateway"], *host,
                *env_flags({**gateway_env(stack), "RECIPELENS_GATEWAY_STORE_PATH": "/store"}),
                "-v", f"{models}:/models:ro", "-v", f"{volume}:/store", f"recipelens/gateway:{tag}",
            ]
        ).stdout.strip()  # fmt: skip
        stack.wait_healthy("gateway")
        stack.started_s = time.monotonic() - start
        report(f"docker run: indexed and healthy in {stack.started_s:.0f} s")
        yield stack
    finally:
        engine.run(["rm", "-f", *names.values()], check=False)
        engine.run(["volume", "rm", "-f", volume], check=False)


def test_indexer_job_fills_the_edge_volume(stack: Stack) -> None:
    state = stack.inspect("indexer")["State"]
    assert isinstance(state, dict)
    assert not state["Running"] and state["ExitCode"] == 0, stack.logs("indexer")
    mounts = {m["Destination"]: m for m in stack.inspect("indexer")["Mounts"]}  # type: ignore[attr-defined]
    assert mounts["/store"]["Type"] == "volume" and mounts["/store"]["RW"] is True
    assert str(PHOTOS) in stack.logs("indexer")


def test_services_run_as_non_root_with_read_only_models_and_pass_their_healthchecks(stack: Stack) -> None:
    # The gateway's store is mounted read-write: qdrant-edge-py 0.9 opens a shard's mmap payload storage
    # read-write even to search it, and fails on a read-only mount (see docker-compose.yml).
    for service, read_only in (("embedder", {"/models"}), ("gateway", {"/models"})):
        info = stack.inspect(service)
        assert info["Config"]["User"] == USER  # type: ignore[index]
        assert info["State"]["Health"]["Status"] == "healthy"  # type: ignore[index]
        mounts = {m["Destination"]: m["RW"] for m in info["Mounts"]}  # type: ignore[attr-defined]
        assert {path for path, rw in mounts.items() if not rw} == read_only, (service, mounts)
        uid = stack.engine.run(["exec", stack.containers[service], "id", "-u"]).stdout.strip()
        assert uid == "10001"


def test_a_photo_is_found_over_grpc_and_http(stack: Stack) -> None:
    photo = encode(synthetic_photo(QUERY), "JPEG", quality=75)
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        reply = search_pb2_grpc.RecipeSearchStub(channel).SearchByImage(
            search_pb2.SearchByImageRequest(image=photo, top_k=3), timeout=30
        )
    assert [hit.rank for hit in reply.hits] == [1, 2, 3]
    assert reply.hits[0].recipe.id == f"dish-{QUERY:02d}" and reply.hits[0].score > reply.hits[1].score
    response = httpx.post(
        f"http://127.0.0.1:{stack.http_port}/api/v1/search",
        files={"image": ("photo.jpg", photo, "image/jpeg")},
        data={"top_k": "3"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and len(body["recipes"]) == 3
    assert body["recipes"][0]["title"] == reply.hits[0].recipe.title == f"dish {QUERY:02d}"
    # both searches went through the embedder container, and both services count them in /metrics
    fetch = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{stack.metrics_port}/metrics').read().decode())"
    embedder = stack.engine.run(["exec", stack.containers["embedder"], "python", "-c", fetch]).stdout
    images = [line for line in embedder.splitlines() if line.startswith("recipelens_embedder_images_total{")]
    assert images and sum(float(line.rsplit(" ", 1)[1]) for line in images) >= 2, embedder[-2000:]
    gateway = httpx.get(f"http://127.0.0.1:{stack.http_port}/metrics", timeout=10).text
    assert 'recipelens_gateway_requests_total{api="grpc"' in gateway and 'api="http"' in gateway


def test_sigterm_stops_gateway_and_embedder_cleanly_within_the_grace_period(stack: Stack) -> None:
    timings = {}
    for service in ("gateway", "embedder"):  # the caller first, then what it calls
        start = time.monotonic()
        # docker stop sends SIGTERM and waits up to -t before SIGKILL; the limit asserted is below it
        stack.engine.run(["stop", "-t", "30", stack.containers[service]], timeout=60)
        timings[service] = time.monotonic() - start
        state = stack.inspect(service)["State"]
        assert isinstance(state, dict)
        assert state["ExitCode"] == 0 and not state["OOMKilled"], (service, state, stack.logs(service))
        assert timings[service] < stop_limit_s(service), (service, timings[service], stack.logs(service))
    report(
        f"SIGTERM → exit 0: gateway {timings['gateway']:.1f} s, embedder {timings['embedder']:.1f} s "
        f"(limits {stop_limit_s('gateway'):.0f} / {stop_limit_s('embedder'):.0f} s, compose's "
        f"stop_grace_period; their own grace: 5 s; run by {stack.runner})"
    )
