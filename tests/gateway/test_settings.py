"""The gateway's settings: no runtime imported to read them; secrets masked in the start-up line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
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


def test_the_in_process_embedder_runs_as_the_gateway_settings_say(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROVIDERS, INTRA_OP_THREADS and SPINNING reach the gateway's own onnxruntime sessions."""
    from embedder.cpus import available_cpus
    from embedder.inprocess import InProcessEmbedder
    from embedder.runtime import STOP_SPINNING
    from gateway.server import build_embedder

    monkeypatch.setenv("RECIPELENS_GATEWAY_PROVIDERS", "NoSuchExecutionProvider,CPUExecutionProvider")
    monkeypatch.setenv("RECIPELENS_GATEWAY_INTRA_OP_THREADS", "1")
    monkeypatch.setenv("RECIPELENS_GATEWAY_SPINNING", "true")
    settings = GatewaySettings(model_dir=tiny_model_dir)
    assert settings.providers == ["NoSuchExecutionProvider", "CPUExecutionProvider"]
    embedder = build_embedder(settings)
    assert isinstance(embedder, InProcessEmbedder) and embedder.repository is not None
    (model,) = embedder.repository.models()
    assert model.provider == "CPUExecutionProvider"
    options = model.session.get_session_options()
    assert options.intra_op_num_threads == 1
    with pytest.raises(RuntimeError, match="does not have"):  # spinning on: onnxruntime's default kept
        options.get_session_config_entry(STOP_SPINNING)
    quiet = build_embedder(GatewaySettings(model_dir=tiny_model_dir, spinning=False, intra_op_threads=0))
    assert isinstance(quiet, InProcessEmbedder) and quiet.repository is not None
    options = quiet.repository.models()[0].session.get_session_options()
    assert options.get_session_config_entry(STOP_SPINNING) == "1"
    assert options.intra_op_num_threads == available_cpus()  # 0: one per CPU, never onnxruntime's own
