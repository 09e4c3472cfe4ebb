"""The gateway's settings: no runtime imported to read them; secrets masked in the start-up line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydantic import SecretStr

from gateway.settings import GatewaySettings

REPO = Path(__file__).resolve().parents[2]


def test_settings_and_the_remote_path_import_no_onnxruntime() -> None:
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "import embedder.settings, gateway.settings, gateway.server, embedder.remote\n"
        "assert 'onnxruntime' not in [m for m, v in sys.modules.items() if v is not None]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_summary_masks_secrets() -> None:
    keys = [SecretStr("api-secret-1"), SecretStr("api-secret-2")]
    settings = GatewaySettings(api_keys=keys, qdrant_api_key=SecretStr("qdrant-secret"))
    line = settings.summary()
    assert "api_keys=<2 key(s)>" in line and "api-secret" not in line and "qdrant-secret" not in line
    assert settings.max_queue_delay_ms == 0.0  # the one default: greedy batching
