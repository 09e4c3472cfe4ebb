"""The embedder's one settings object; every knob can be overridden by a ``RECIPELENS_EMBEDDER_*`` variable.

Lists take JSON or commas: ``RECIPELENS_EMBEDDER_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from embedder.batcher import DEFAULT_MAX_QUEUE_DELAY_S
from embedder.memory import DEFAULT_BUDGET_BYTES, DEFAULT_WAIT_S
from embedder.preprocess import DEFAULT_MAX_PIXELS
from embedder.providers import DEFAULT_PROVIDERS, RuntimeOptions

MiB = 1 << 20

T = TypeVar("T")


def split_list(value: Any) -> Any:
    """A list setting from the environment: a JSON list, or items separated by commas."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def settings_problems(exc: ValidationError) -> str:
    """Each problem of a settings object, one line each, without the input values (they may be API keys)."""
    return "\n".join(
        f"  {'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
        for e in exc.errors(include_input=False, include_url=False)
    )


def settings_or_exit(prog: str, settings: Callable[..., T], overrides: Mapping[str, Any]) -> T:
    """A service's settings from the environment, with the ``overrides`` that are not ``None`` (its command
    line); invalid ones end ``prog`` with status 2, naming each problem."""
    try:
        return settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        print(f"{prog}: invalid settings:\n{settings_problems(exc)}", file=sys.stderr)
        raise SystemExit(2) from None


def default_providers() -> list[str]:
    """The runtime's preferred provider order (plain names: settings modules load no runtime)."""
    return list(DEFAULT_PROVIDERS)


class EmbeddingSettings(BaseSettings):
    """How an in-process embedder runs its models and batches and decodes photos: the embedder service's
    knobs, and the gateway's when it embeds in-process (no embedder address); each reads them under its
    own prefix."""

    max_batch_size: int = Field(default=32, ge=1, description="images per onnxruntime run")
    max_queue_delay_ms: float = Field(
        default=DEFAULT_MAX_QUEUE_DELAY_S * 1000.0,
        ge=0,
        description="how long a batch waits to fill up; 0 = greedy (batches form under load)",
    )
    max_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS, ge=1, description="decompression-bomb limit per photo"
    )
    decode_budget_mb: int = Field(
        default=DEFAULT_BUDGET_BYTES >> 20,
        ge=1,
        description="decoded pixels in flight across all requests (MiB); an image needing more is refused",
    )
    decode_wait_s: float = Field(
        default=DEFAULT_WAIT_S,
        ge=0,
        description="how long a decode waits for the budget before it is refused as busy "
        "(gRPC RESOURCE_EXHAUSTED, HTTP 503)",
    )
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=default_providers,
        description="onnxruntime execution providers in order of preference; unavailable ones are skipped; "
        "the default order runs fp32 models without OpenVINO (embedder.providers.FP32_DEFAULT_PROVIDERS)",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="onnxruntime threads per session; 0 = one per CPU this process may use (affinity, "
        "container quota); OpenVINO: its own default unless set",
    )
    spinning: bool = Field(
        default=False,
        description="onnxruntime threads go on spin-waiting between runs: for cores nothing else uses",
    )

    _split_providers = field_validator("providers", mode="before")(split_list)

    def runtime_options(self) -> RuntimeOptions:
        """How this service's own onnxruntime sessions run: its model repository's keywords."""
        return RuntimeOptions(
            providers=list(self.providers), intra_op_threads=self.intra_op_threads, spinning=self.spinning
        )


class EmbedderSettings(EmbeddingSettings):
    """Where to listen, which models to serve and how to batch them (batching and decoding: the base)."""

    model_config = SettingsConfigDict(
        env_prefix="RECIPELENS_EMBEDDER_", env_nested_delimiter="__", protected_namespaces=()
    )

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    model_dir: Path = Field(Path("models"), description="a folder of model folders, or a single model folder")
    default_model: str = Field(
        "",
        description="the model a request that names no version gets: a version or a model folder's name; "
        "empty (or not loaded) = the newest created_at",
    )
    max_message_bytes: int = Field(16 * MiB, ge=1024, description="gRPC send and receive limit")
    max_images_per_request: int = Field(64, ge=1)
    decode_threads: int = Field(
        0, ge=0, description="image decoding threads; 0 = one per CPU this process may use, at most 8"
    )
    reload_interval_s: float = Field(2.0, ge=0, description="model folder polling period; 0 disables")
    grace_period_s: float = Field(5.0, ge=0, description="how long in-flight calls may finish on stop")
    max_connection_age_ms: int = Field(
        300_000, ge=1000, description="connections are recycled after this, so clients find new replicas"
    )
    max_connection_age_grace_ms: int = Field(30_000, ge=0, description="time left to calls on a recycled one")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics on this port (0 picks a free one); unset = off"
    )
    log_level: str = "INFO"

    def summary(self) -> str:
        """One log line with every setting (none of them is secret)."""
        return " ".join(f"{name}={value}" for name, value in self.model_dump().items())
