"""Which settings object reads which variables, and running a compose service's command as a local process."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic_settings import BaseSettings

from tests.deploy.deployfiles import HEALTHCHECK_SCRIPT

# env prefix → (module, class) of the one settings object of that service
SERVICE_SETTINGS: dict[str, tuple[str, str]] = {
    "RECIPELENS_EMBEDDER_": ("embedder.settings", "EmbedderSettings"),
    "RECIPELENS_GATEWAY_": ("gateway.settings", "GatewaySettings"),
    "RECIPELENS_INDEXER_": ("indexer.settings", "IndexerSettings"),
}


def settings_class(name: str) -> type[BaseSettings] | None:
    """The settings class reading variable (or prefix) ``name``; None while that module is not written."""
    for prefix, (module, cls) in SERVICE_SETTINGS.items():
        if name.startswith(prefix):
            if importlib.util.find_spec(module) is None:
                return None
            found: type[BaseSettings] = getattr(importlib.import_module(module), cls)
            return found
    raise KeyError(f"{name}: no service reads this prefix")


def console_script(name: str) -> Path | None:
    """The virtualenv's console script ``name`` (what the image's ENTRYPOINT runs), if installed."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def healthcheck_bin(folder: Path) -> Path:
    """A folder holding ``recipelens-healthcheck`` (deploy/healthcheck.py on this interpreter), for PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "recipelens-healthcheck"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HEALTHCHECK_SCRIPT}" "$@"\n')
    wrapper.chmod(0o755)
    return folder


def clean_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any RECIPELENS_* / QDRANT_* leftovers, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECIPELENS_", "QDRANT_"))}
    env.update(overrides)
    return env


class LocalService:
    """A compose service's command started as a local process, with its log kept for failure messages."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            list(argv), env=dict(env), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_healthy(self, shell_command: str, env: Mapping[str, str], timeout_s: float = 45.0) -> str:
        """Run the healthcheck command (as ``sh -c``, like CMD-SHELL) until it exits 0; return its output."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")
            probe = subprocess.run(
                ["sh", "-c", shell_command],
                env=dict(env),
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
            last = probe.stdout + probe.stderr
            if probe.returncode == 0:
                return last
            time.sleep(0.3)
        raise AssertionError(f"{self.name} never became healthy; last probe: {last}\nlog:\n{self.log()}")

    def stop(self) -> int:
        """SIGTERM, then wait (SIGKILL after 15 s); return the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
