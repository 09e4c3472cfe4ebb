"""Faults under load: the embedder killed and restarted, the store gone and back, the indexer killed
mid-build, a corrupted model folder. Real processes on loopback; the checks are on what callers saw."""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from embedder.manifest import MODEL_FILE
from indexer.build import build_index
from indexer.store.edge import EdgeStore
from tests.indexer.conftest import write_kaggle_catalog
from tests.reliability.stack import REPO, Stack, World
from tests.support.imagegen import encode, synthetic_photo
from tests.support.load import LoadReport, run_load

pytestmark = pytest.mark.reliability

DEADLINE_S = 5.0  # the callers' deadline; the gateway's own embed deadline is 2 s


@contextmanager
def background_load(
    stack: Stack, photos: list[bytes], *, concurrency: int = 4, max_seconds: float = 180.0
) -> Iterator[Callable[[], LoadReport]]:
    """Searches over gRPC in a background thread until the block ends; yields a getter for the report."""
    stop = threading.Event()
    box: dict[str, LoadReport] = {}

    def run() -> None:
        box["report"] = run_load(
            stack.grpc_address,
            photos,
            total=10**9,
            concurrency=concurrency,
            timeout_s=DEADLINE_S,
            max_seconds=max_seconds,
            stop=stop,
        )

    thread = threading.Thread(target=run, name="background-load")
    thread.start()
    try:
        yield lambda: box["report"]
    finally:
        stop.set()
        thread.join(60)


def _wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


def _since(report: LoadReport, moment: float) -> float:
    return moment - report.began


def test_embedder_killed_and_restarted_during_load(world: World, photos: list[bytes], tmp_path: Path) -> None:
    """SIGKILL the embedder under load: UNAVAILABLE within the deadline while it is down, then recovery."""
    with Stack(world, tmp_path / "logs") as stack:
        gateway_pid = stack.gateway.pid
        with background_load(stack, photos) as report_of:
            time.sleep(2.0)
            killed = time.perf_counter()
            stack.embedder.kill()
            time.sleep(3.0)
            restarted = time.perf_counter()
            stack.start_embedder()  # same port, a new process
            serving = time.perf_counter()
            time.sleep(4.0)
        report = report_of()
        assert stack.gateway.alive() and stack.gateway.pid == gateway_pid  # no restart of the gateway
        before = [o for o in report.outcomes if o.started_s + o.latency_ms / 1000 < _since(report, killed)]
        down = [
            o
            for o in report.outcomes
            if _since(report, killed) + 0.2 < o.started_s < _since(report, restarted) - DEADLINE_S / 2
        ]
        after = [o for o in report.outcomes if o.started_s > _since(report, serving) + 1.0]
        assert before and all(o.status == "OK" for o in before)
        assert down and all(o.status == "UNAVAILABLE" for o in down), {o.status for o in down}
        assert all("embedder" in o.detail for o in down)
        failed = [o for o in report.outcomes if o.status != "OK"]
        assert {o.status for o in failed} == {"UNAVAILABLE"}  # never DEADLINE_EXCEEDED, INTERNAL, ...
        assert max(o.latency_ms for o in failed) < DEADLINE_S * 1000
        assert len(after) >= 10 and all(o.status == "OK" for o in after), {o.status for o in after}
        assert "Traceback" not in stack.gateway.log()


def test_store_gone_and_back_during_load(world: World, photos: list[bytes], tmp_path: Path) -> None:
    """Qdrant Edge's analogue of an unreachable server: its folder disappears (volume unmounted) and returns.

    Searches meanwhile answer UNAVAILABLE (never a crash or INTERNAL); once the folder is back they succeed
    again with no restart. On a Qdrant server the same path maps connection errors to UNAVAILABLE.
    """
    store = tmp_path / "qdrant"
    shutil.copytree(world.store_path, store)
    away = tmp_path / "qdrant-unmounted"
    with Stack(world, tmp_path / "logs", store_path=store) as stack:
        with background_load(stack, photos) as report_of:
            time.sleep(1.5)
            gone = time.perf_counter()
            store.rename(away)
            time.sleep(3.0)
            away.rename(store)
            back = time.perf_counter()
            time.sleep(3.0)
        report = report_of()
        assert stack.gateway.alive()
        down = [
            o
            for o in report.outcomes
            if _since(report, gone) + 0.2 < o.started_s < _since(report, back) - 0.5
        ]
        after = [o for o in report.outcomes if o.started_s > _since(report, back) + 0.5]
        assert down and all(o.status == "UNAVAILABLE" for o in down), {(o.status, o.detail) for o in down}
        assert all("store unavailable" in o.detail for o in down), {o.detail for o in down}
        assert {o.status for o in report.outcomes} == {"OK", "UNAVAILABLE"}
        assert len(after) >= 10 and all(o.status == "OK" for o in after)
        assert "Traceback" not in stack.gateway.log()


N_CATALOG = 48
BAD_PHOTOS = {"dish-005": b"not a photo at all", "dish-030": None}  # None: a truncated JPEG


def _catalog(root: Path) -> Path:
    write_kaggle_catalog(root, N_CATALOG)
    for name, content in BAD_PHOTOS.items():
        path = root / "images" / f"{name}.jpg"
        path.write_bytes(content if content is not None else path.read_bytes()[:300])
    return root


def _building(store: Path) -> dict[str, object] | None:
    for meta_file in (store / "collections").glob("*/collection.json"):
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        if not meta.get("complete"):
            return dict(meta)
    return None


# `recipelens-index` that SIGKILLs itself once the new shard exists, before its field indexes and flush.
DIE_DURING_CREATE = """
import os, signal, sys
import indexer.store.edge as edge

class DieHere:
    def __iter__(self):
        os.kill(os.getpid(), signal.SIGKILL)
        return iter(())

edge.KEYWORD_INDEXES = DieHere()
from indexer.cli import main
main(sys.argv[1:])
"""


def _kill_point(store: Path, known: set[str], at_least: int | None, proc: subprocess.Popen[bytes]) -> bool:
    """None: a new collection folder exists (mid-creation); n: the build stored n points; or it ended."""
    if proc.poll() is not None:
        return True
    if at_least is None:
        return any(p.name not in known for p in (store / "collections").iterdir())
    meta = _building(store)
    return meta is not None and int(str(meta["points_count"])) >= at_least


def test_indexer_killed_at_several_points_while_searching(
    world: World, photos: list[bytes], tmp_path: Path
) -> None:
    """SIGKILL a rebuild three times (mid-creation, partly filled, nearly done) while searches run."""
    catalog = _catalog(tmp_path / "catalog")
    store = tmp_path / "qdrant"
    with EdgeStore(store) as edge:
        old = build_index(catalog, world.model_dir, edge, batch_size=16, verify_sample=4, progress=False)
    assert old.bad == len(BAD_PHOTOS)
    cmd = [
        sys.executable,
        "-m",
        "indexer.cli",
        "build",
        "--catalog",
        str(catalog),
        "--model",
        str(world.model_dir),
        "--store-path",
        str(store),
        "--no-progress",
        "--bad-report",
        str(tmp_path / "bad.csv"),
    ]
    env = {**os.environ, "RECIPELENS_INDEXER_BATCH_PAUSE_S": "0.4", "RECIPELENS_INDEXER_BATCH_SIZE": "6"}
    kills: list[int] = []
    with Stack(world, tmp_path / "logs", store_path=store) as stack:
        with background_load(stack, photos) as report_of:
            # 0: killed inside create_collection, between making the shard and flushing it (deterministic)
            died = subprocess.run(
                [sys.executable, "-c", DIE_DURING_CREATE, *cmd[3:]],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert died.returncode == -signal.SIGKILL, died.stdout + died.stderr
            # 1: as its folder appears (mid-creation if the timing hits), 2: partly filled, 3: nearly done
            for at_least in (None, 12, 30):
                known = {p.name for p in (store / "collections").iterdir()}
                proc = subprocess.Popen(
                    cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                )
                try:
                    _wait_until(
                        functools.partial(_kill_point, store, known, at_least, proc),
                        60,
                        f"the build to reach kill point {at_least}",
                        poll_s=0.002 if at_least is None else 0.05,
                    )
                    proc.send_signal(signal.SIGKILL)
                finally:
                    output = proc.communicate(timeout=30)[0].decode()
                assert proc.returncode == -signal.SIGKILL, output
                meta = _building(store)
                kills.append(-1 if meta is None else int(str(meta["points_count"])))
                with EdgeStore(store) as edge:
                    assert edge.resolve_alias("recipes") == old.collection  # the alias never moved
            before_final = time.perf_counter()
            env["RECIPELENS_INDEXER_BATCH_PAUSE_S"] = "0"
            done = subprocess.run(
                cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
            )
            swapped = time.perf_counter()
            time.sleep(1.0)
        report = report_of()
    assert done.returncode == 0, done.stderr
    assert kills[0] <= 0 and 12 <= kills[1] < kills[2] < N_CATALOG - len(BAD_PHOTOS), kills
    assert f"skipped {kills[2]} (already stored)" in done.stdout
    with open(tmp_path / "bad.csv", newline="") as fh:
        reported = list(csv.DictReader(fh))
    assert len(reported) == len(BAD_PHOTOS)
    with EdgeStore(store) as edge:
        new = edge.resolve_alias("recipes")
        assert new is not None and new != old.collection
        assert edge.count(new) == N_CATALOG - len(reported)
    assert report.errors == {}, report.errors
    assert report.total >= 50
    during = [o for o in report.outcomes if o.started_s + o.latency_ms / 1000 < _since(report, before_final)]
    assert during and {o.detail for o in during} == {old.collection}  # only the old complete collection
    assert {o.detail for o in report.outcomes if o.started_s > _since(report, swapped)} <= {new}


def _corrupt_copy(world: World, target: Path) -> Path:
    shutil.copytree(world.model_dir, target)
    data = bytearray((target / MODEL_FILE).read_bytes())
    data[-1] ^= 0xFF
    (target / MODEL_FILE).write_bytes(bytes(data))
    return target


def test_corrupted_model_folder_refused_at_start(world: World, tmp_path: Path) -> None:
    """Hash mismatch: the embedder and the in-process gateway both refuse to start, naming the folder."""
    broken = _corrupt_copy(world, tmp_path / "models" / "broken")
    env = {
        **os.environ,
        "RECIPELENS_EMBEDDER_MODEL_DIR": str(broken),
        "RECIPELENS_EMBEDDER_PORT": "0",
        "RECIPELENS_GATEWAY_MODEL_DIR": str(broken),
        "RECIPELENS_GATEWAY_STORE_PATH": str(tmp_path / "qdrant"),
        "RECIPELENS_GATEWAY_GRPC_PORT": "0",
        "RECIPELENS_GATEWAY_HTTP_PORT": "0",
    }
    for module in ("embedder", "gateway.server"):
        done = subprocess.run(
            [sys.executable, "-m", module],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        message = done.stdout + done.stderr
        assert done.returncode == 2, (module, message)
        assert str(broken) in message and "sha256" in message.lower(), (module, message)
        assert "Traceback" not in message, (module, message)


def test_gateway_skips_a_corrupted_model_beside_a_good_one(world: World, tmp_path: Path) -> None:
    """A bad folder beside a good one is refused and the good one serves; alone it stops the start."""
    from embedder.manifest import ModelIntegrityError
    from gateway.client import RecipeSearchClient
    from gateway.server import start_gateway
    from gateway.settings import GatewaySettings

    repo = tmp_path / "models"
    shutil.copytree(world.model_dir, repo / "good")
    _corrupt_copy(world, repo / "broken")  # same manifest version, tampered ONNX file
    settings = GatewaySettings(
        grpc_port=0, http_port=0, model_dir=repo, store_path=world.store_path, embed_timeout_s=5.0
    )
    with (
        start_gateway(settings, health_period_s=0.2) as running,
        RecipeSearchClient(running.grpc_address) as client,
    ):
        photo = encode(synthetic_photo(1000), "JPEG", quality=90)
        assert client.search(photo).hits[0].recipe.id == "r000"
    shutil.rmtree(repo / "good")
    with pytest.raises(ModelIntegrityError, match="broken"):
        start_gateway(settings, health_period_s=0.2)
