"""The gateway's one settings object; every knob can be overridden by a ``RECIPELENS_GATEWAY_*`` variable.

Lists take JSON or commas: ``RECIPELENS_GATEWAY_API_KEYS=key-one,key-two``. Secrets (API keys, the Qdrant
key) are ``SecretStr``: they print as ``**********`` and are only unwrapped where they are compared or sent.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from embedder.settings import EmbeddingSettings, split_list
from indexer.store.base import StoreSettings

MiB = 1 << 20


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class GatewaySettings(EmbeddingSettings):
    """Where to listen, which embedder and store to use, and the limits on what callers may send.

    The in-process embedder's batching and decoding knobs (``max_batch_size``, ``max_queue_delay_ms``,
    ``max_pixels`` — which also bounds every photo checked here —, ``decode_budget_mb``, ``decode_wait_s``)
    are the embedder's own (:class:`embedder.settings.EmbeddingSettings`).
    """

    model_config = SettingsConfigDict(
        env_prefix="RECIPELENS_GATEWAY_", env_nested_delimiter="__", protected_namespaces=()
    )

    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50052, ge=0, le=65535, description="0 picks a free port")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port")

    embedder_address: str | None = Field(
        default=None,
        description="HOST:PORT of the embedder service; unset = in-process onnxruntime from model_dir",
    )
    model_dir: Path = Field(
        default=Path("models"), description="model repository for the in-process embedder"
    )
    embed_timeout_s: float = Field(
        default=10.0, gt=0, description="deadline for one embed call, retries included"
    )
    embed_retries: int = Field(default=2, ge=0, description="retries on UNAVAILABLE before giving up")

    store: StoreSettings = Field(
        default_factory=StoreSettings, description="the vector store, as the indexer's (STORE__*)"
    )
    # The flat names of earlier releases (RECIPELENS_GATEWAY_STORE_PATH, _QDRANT_URL, _QDRANT_API_KEY),
    # still accepted: folded into ``store`` where its own field is not set, then cleared.
    store_path: Path | None = Field(default=None, exclude=True, description="legacy: store.path")
    qdrant_url: str | None = Field(default=None, exclude=True, description="legacy: store.qdrant_url")
    qdrant_api_key: SecretStr | None = Field(
        default=None, exclude=True, description="legacy: store.qdrant_api_key"
    )
    alias: str = Field(default="recipes", min_length=1, description="the alias searches go through")

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="accepted bearer keys; empty = authentication off"
    )
    max_upload_bytes: int = Field(default=10 * MiB, ge=1024, description="largest accepted photo")
    default_top_k: int = Field(default=5, ge=1, le=100)
    sched_batch: bool = Field(
        default=True,
        description="the search workers (header check, alias, decode, store) run under Linux SCHED_BATCH: "
        "waking, they do not preempt the in-process model's threads mid-run",
    )

    tls_cert: Path | None = Field(
        default=None, description="PEM certificate chain for gRPC and HTTPS (with tls_key)"
    )
    tls_key: Path | None = Field(
        default=None, description="PEM private key for gRPC and HTTPS (with tls_cert)"
    )
    behind_tls_proxy: bool = Field(
        default=False,
        description="a proxy in front terminates TLS for the HTTP port: plaintext HTTP with API keys on, "
        "bound beyond loopback, is then allowed",
    )
    http_header_timeout_s: float = Field(
        default=10.0, gt=0, description="a request's headers must arrive within this; slower ones are closed"
    )
    http_body_timeout_s: float = Field(
        default=60.0, gt=0, description="a request's body must arrive within this after its headers"
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="serve /metrics on this port of its own (metrics_host, no key) instead of the HTTP port",
    )
    metrics_host: str = Field(default="127.0.0.1", description="where the metrics port listens")
    images_root: Path | None = Field(
        default=None,
        description="the catalogue folder the index was built from; its photos are served under /images/",
    )

    grace_period_s: float = Field(
        default=5.0, ge=0, description="how long in-flight calls may finish on stop"
    )
    log_level: str = "INFO"

    _split_keys = field_validator("api_keys", mode="before")(split_list)

    @model_validator(mode="after")
    def _legacy_store(self) -> GatewaySettings:
        legacy = {
            "path": self.store_path,
            "qdrant_url": self.qdrant_url,
            "qdrant_api_key": self.qdrant_api_key,
        }
        updates = {k: v for k, v in legacy.items() if v is not None and k not in self.store.model_fields_set}
        if updates:
            self.store = StoreSettings.model_validate({**self.store.model_dump(), **updates})
        self.store_path = self.qdrant_url = self.qdrant_api_key = None
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewaySettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both tls_cert and tls_key (or neither)")
        return self

    @model_validator(mode="after")
    def _no_keys_in_clear(self) -> GatewaySettings:
        if (
            self.api_keys
            and self.tls_cert is None
            and not self.behind_tls_proxy
            and not is_loopback(self.http_host)
        ):
            raise ValueError(
                f"API keys are on and HTTP on {self.http_host} is plaintext: keys would cross the network in "
                "clear. Set tls_cert and tls_key (HTTPS), bind http_host to loopback, or set "
                "RECIPELENS_GATEWAY_BEHIND_TLS_PROXY=true when a proxy in front terminates TLS"
            )
        return self

    def summary(self) -> str:
        """One log line with every setting; secrets are masked and API keys only counted."""
        shown: dict[str, Any] = self.model_dump()
        shown["api_keys"] = f"<{len(self.api_keys)} key(s)>"
        shown.pop("store")
        shown.update(self.store.shown())
        return " ".join(f"{name}={value}" for name, value in shown.items())
