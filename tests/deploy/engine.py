"""A Docker engine for the image test: the one already answering, or one started here for the test.

Started here (root, Debian's docker.io installed) it is ``dockerd --storage-driver vfs --iptables=false
--bridge=none`` on a private socket, with its data root in the cache folder, so the stand-in base image and
BuildKit's layer cache survive between runs on one machine; containers then use ``--network host``.
The client is Debian's own ``/usr/bin/docker`` when present (BuildKit built in; a newer client found first
on PATH may lack buildx), always with ``DOCKER_BUILDKIT=1``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPORT: list[str] = []  # figures the image test measured; tests/deploy/conftest.py prints them at the end


def report(line: str) -> None:
    """Keep a figure for the end-of-run summary and show it now (visible with -s)."""
    REPORT.append(line)
    print(f"[images] {line}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """$RECIPELENS_CACHE, else ~/.cache/recipelens (the stand-in base tarball, the engine's data root)."""
    configured = os.environ.get("RECIPELENS_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recipelens"


@contextlib.contextmanager
def exclusive_cache(timeout_s: float) -> Iterator[float]:
    """One image test at a time per cache (so one never stops the engine another still uses); yields the
    seconds it waited. Past ``timeout_s`` it raises TimeoutError."""
    run = cache_dir() / "run"
    run.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with (run / "image-test.lock").open("w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - start > timeout_s:
                    raise TimeoutError(f"{run / 'image-test.lock'} held too long by another test") from None
                time.sleep(2)
        try:
            yield time.monotonic() - start
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def docker_client() -> str | None:
    """Debian's docker client by full path when installed, else the first ``docker`` on PATH."""
    debian = Path("/usr/bin/docker")
    if debian.is_file() and os.access(debian, os.X_OK):
        return str(debian)
    return shutil.which("docker")


@dataclass
class DockerEngine:
    """A client and the environment that points it at a running engine."""

    client: str
    env: dict[str, str]
    started: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    notes: list[str] = field(default_factory=list)

    def run(
        self, args: Sequence[str], *, timeout: float = 120, check: bool = True, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.client, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,  # type: ignore[call-overload]
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        return done

    def answers(self) -> bool:
        try:
            return (
                self.run(["info", "--format", "{{.ServerVersion}}"], timeout=20, check=False).returncode == 0
            )
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        """Stop the engine this test started (SIGTERM, then SIGKILL after 30 s); leave others alone."""
        if self.started is None or self.started.poll() is not None:
            return
        self.started.send_signal(signal.SIGTERM)
        try:
            self.started.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.started.kill()
            self.started.wait()


def find_or_start_engine() -> DockerEngine | str:
    """A running engine to build and run on, or the reason there is none (for the skip message)."""
    client = docker_client()
    if client is None:
        return "no docker client installed (Debian: apt-get install docker.io)"
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    existing = DockerEngine(client, env)
    if existing.answers():
        existing.notes.append(f"using the running engine ({env.get('DOCKER_HOST', 'default socket')})")
        return existing
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        return "no Docker engine answers and dockerd is not installed (Debian: apt-get install docker.io)"
    if os.geteuid() != 0:
        return "no Docker engine answers and starting dockerd needs root"
    return start_dockerd(dockerd, client, env)


def start_dockerd(dockerd: str, client: str, env: dict[str, str]) -> DockerEngine | str:
    """dockerd on a private socket with its data root in the cache (vfs, no bridge, no iptables)."""
    cache = cache_dir()
    run = cache / "run"
    run.mkdir(parents=True, exist_ok=True)
    socket = run / "docker.sock"
    engine = DockerEngine(client, {**env, "DOCKER_HOST": f"unix://{socket}"}, log=run / "dockerd.log")
    if socket.exists() and engine.answers():  # one left running on this cache by an earlier session
        engine.notes.append(f"using the engine at {socket}")
        return engine
    with (run / "dockerd.log").open("ab") as log:
        engine.started = subprocess.Popen(
            [
                dockerd,
                "--data-root", str(cache / "docker"),
                "--exec-root", str(run / "exec"),
                "--pidfile", str(run / "dockerd.pid"),
                "--host", f"unix://{socket}",
                "--storage-driver", "vfs",
                "--iptables=false",
                "--bridge=none",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if engine.started.poll() is not None:
            tail = (run / "dockerd.log").read_text(errors="replace")[-1500:]
            return f"dockerd exited with {engine.started.returncode} at start:\n{tail}"
        if engine.answers():
            engine.notes.append(f"started dockerd (vfs, data root {cache / 'docker'})")
            return engine
        time.sleep(0.5)
    engine.stop()
    return "dockerd did not answer within 60 s"
