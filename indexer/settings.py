"""The indexer's one settings object; every knob can be overridden by a ``RECIPELENS_INDEXER_*`` variable.

The store settings are folded in as a nested object: ``RECIPELENS_INDEXER_STORE__QDRANT_URL``,
``RECIPELENS_INDEXER_STORE__QDRANT_API_KEY`` (a secret: printed masked), ``RECIPELENS_INDEXER_STORE__PATH``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexer.store.base import DEFAULT_ALIAS, StoreSettings


class IndexerSettings(BaseSettings):
    """What to index, with which model, into which store, and how hard to push."""

    model_config = SettingsConfigDict(
        env_prefix="RECIPELENS_INDEXER_", env_nested_delimiter="__", protected_namespaces=()
    )

    catalog: Path | None = Field(
        default=None, description="catalogue path (CSV, JSONL, recipe folders or photos)"
    )
    model_dir: Path | None = Field(
        default=None, description="the model folder whose vectors fill the collection"
    )
    embedder_address: str | None = Field(
        default=None, description="HOST:PORT of the embedder service; unset = in-process onnxruntime"
    )
    alias: str = Field(
        default=DEFAULT_ALIAS, min_length=1, description="the alias a finished build is put behind"
    )
    batch_size: int = Field(
        default=128, ge=1, le=1024, description="photos per embed and upsert batch (64–256 is best)"
    )
    max_in_flight: int = Field(
        default=4, ge=1, le=64, description="embedder batches in flight (remote embedder)"
    )
    decode_threads: int = Field(
        default=0, ge=0, description="photo decoding threads; 0 = one per CPU this process may use, at most 8"
    )
    keep_previous: int = Field(default=1, ge=0, description="older complete collections kept for rollback")
    max_bad_fraction: float = Field(
        default=0.05, ge=0.0, le=1.0, description="a build fails above this share of bad photos"
    )
    verify_sample: int = Field(
        default=20, ge=0, description="photos searched after a build: each must find its recipe first"
    )
    min_side: int = Field(default=32, ge=1, description="photos with a shorter side are reported as bad")
    bad_report: Path | None = Field(
        default=Path("var/bad-items.csv"), description="CSV of bad items (id, file, reason); empty = none"
    )
    batch_pause_s: float = Field(
        default=0.0, ge=0.0, description="pause after each batch: leaves CPU to serving on a shared machine"
    )
    quality_sample: int = Field(
        default=200, ge=1, description="photos whose distorted copies calibrate the verdict, gate builds"
    )
    gate_tolerance_points: float = Field(
        default=1.0, ge=0.0, description="the gate refuses a build with a figure this many points below live"
    )
    store: StoreSettings = Field(default_factory=StoreSettings)
    log_level: str = "INFO"

    @field_validator("bad_report", mode="before")
    @classmethod
    def _no_report(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    def summary(self) -> str:
        """One log line with every setting; the Qdrant API key is masked."""
        shown: dict[str, Any] = self.model_dump()
        shown.pop("store")
        shown.update(self.store.shown())
        return " ".join(f"{name}={value}" for name, value in shown.items())
