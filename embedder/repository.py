"""The models a server holds: every valid model folder under ``model_dir``, loaded and warmed up.

``model_dir`` is either one model folder (``model.onnx`` + ``manifest.json``) or a folder of them. Each
folder's ONNX hash is checked against its manifest before it is loaded; a folder that fails is refused
with a logged error naming the folder and both hashes. The default version (what a request that names none
gets) is ``default_model`` where it names a loaded model — a version or a folder name — else the newest
``created_at``.
:meth:`ModelRepository.refresh` picks up folders added beside the old ones (so a re-index can start with a
new model while the old one keeps serving) and drops folders that were removed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Unpack

import grpc

from embedder.errors import EmbedderError
from embedder.manifest import MANIFEST_FILE, MODEL_FILE, ModelIntegrityError
from embedder.model_folders import (
    FolderSignature,
    created_at,
    find_model_folders,
    folder_signature,
    load_model,
)
from embedder.providers import RuntimeOptions
from embedder.runtime import EmbeddingModel

log = logging.getLogger(__name__)


class ModelRepositoryError(ModelIntegrityError):
    """The repository cannot serve: no model could be loaded; the message says which folders and why."""


class UnknownModelError(EmbedderError, LookupError):
    """A model version was asked for that the repository does not hold (gRPC NOT_FOUND)."""

    def __init__(self, version: str, available: Sequence[str]) -> None:
        self.version = version
        self.available = list(available)
        listed = ", ".join(self.available) or "none"
        super().__init__(
            grpc.StatusCode.NOT_FOUND, f"unknown model version {version!r} (available: {listed})"
        )

    def __str__(self) -> str:
        return self.details


@dataclass
class RefreshReport:
    """What one :meth:`ModelRepository.refresh` changed."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    refused: dict[Path, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


class ModelRepository:
    """Loads, holds and hot-reloads the model folders under one directory."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        warmup: bool = True,
        allow_empty: bool = False,
        default_model: str = "",
        **runtime: Unpack[RuntimeOptions],
    ) -> None:
        self.model_dir = Path(model_dir)
        self.default_model = default_model.strip()  # a version or a folder name; "" = the newest
        self.runtime = runtime  # how each model runs (EmbeddingModel's keywords)
        self.warmup = warmup
        self.allow_empty = allow_empty
        self.refused: dict[Path, str] = {}
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._by_folder: dict[Path, tuple[FolderSignature, EmbeddingModel]] = {}
        self._refused_sig: dict[Path, FolderSignature] = {}
        self._models: dict[str, EmbeddingModel] = {}
        self._default: str | None = None
        self._load_at_start()

    # -- reading ---------------------------------------------------------------------------------------

    @property
    def default_version(self) -> str:
        with self._lock:
            if self._default is None:
                raise ModelRepositoryError(f"{self.model_dir}: no model loaded")
            return self._default

    def versions(self) -> list[str]:
        """Loaded versions, newest first."""
        with self._lock:
            return list(self._models)

    def models(self) -> list[EmbeddingModel]:
        """Loaded models, newest first."""
        with self._lock:
            return list(self._models.values())

    def get(self, version: str | None = None) -> EmbeddingModel:
        """The model of that version; ``None`` or ``""`` means the default one."""
        with self._lock:
            key = version or self._default
            if key is None or key not in self._models:
                raise UnknownModelError(version or "", list(self._models))
            return self._models[key]

    def __contains__(self, version: object) -> bool:
        with self._lock:
            return version in self._models

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    # -- loading ---------------------------------------------------------------------------------------

    def _load(self, folder: Path) -> EmbeddingModel:
        return load_model(folder, warmup=self.warmup, **self.runtime)

    def _load_at_start(self) -> None:
        if self.allow_empty and not self.model_dir.is_dir():
            log.warning("model directory %s does not exist (yet): no model to serve", self.model_dir)
            return
        if not self.model_dir.is_dir():
            raise ModelRepositoryError(
                f"model directory {self.model_dir} does not exist (set RECIPELENS_EMBEDDER_MODEL_DIR "
                "to a model folder or a folder of model folders)"
            )
        self.refresh()
        if not self._models:
            if self.refused:
                reasons = "; ".join(self.refused.values())
                raise ModelRepositoryError(f"no usable model in {self.model_dir}: {reasons}")
            if self.allow_empty:
                log.warning("no model folders in %s (yet): no model to serve", self.model_dir)
                return
            raise ModelRepositoryError(
                f"no model folders in {self.model_dir} "
                f"(a model folder holds {MODEL_FILE} and {MANIFEST_FILE})"
            )

    def refresh(self) -> RefreshReport:
        """Rescan ``model_dir``: load new or changed folders, drop removed ones. Thread-safe."""
        with self._refresh_lock:
            return self._refresh()

    def _refresh(self) -> RefreshReport:
        report = RefreshReport()
        candidates = find_model_folders(self.model_dir)
        if candidates is None:
            if self._models:
                log.warning("cannot read %s; still serving the models loaded before", self.model_dir)
            return report
        present = set(candidates)
        by_folder = dict(self._by_folder)
        before = {model.version for _, model in by_folder.values()}

        for folder in [f for f in by_folder if f not in present]:
            _, model = by_folder.pop(folder)
            log.info("model %s removed: folder %s is gone", model.version, folder)
        for folder in [f for f in self._refused_sig if f not in present]:
            del self._refused_sig[folder]
            self.refused.pop(folder, None)

        for folder in candidates:
            sig = folder_signature(folder)
            if sig is None:
                continue  # a file vanished between listing and reading; the next refresh sees the result
            known = by_folder.get(folder)
            if known is not None and known[0] == sig:
                continue
            if folder in self._refused_sig and self._refused_sig[folder] == sig:
                continue  # refused before and unchanged: don't log the same error every poll
            try:
                model = self._load(folder)
            except (ModelIntegrityError, ValueError, OSError, RuntimeError) as exc:
                reason = f"{folder}: refused: {exc}"
                self.refused[folder] = reason
                report.refused[folder] = reason
                self._refused_sig[folder] = sig
                if known is not None:
                    log.error("%s (still serving the previously loaded %s)", reason, known[1].version)
                else:
                    log.error("%s", reason)
                continue
            self.refused.pop(folder, None)
            self._refused_sig.pop(folder, None)
            duplicate = next(
                (f for f, (_, m) in by_folder.items() if m.version == model.version and f != folder), None
            )
            if duplicate is not None:
                log.warning(
                    "%s holds model %s, already served from %s; ignoring it", folder, model.version, duplicate
                )
                self._refused_sig[folder] = sig
                continue
            by_folder[folder] = (sig, model)

        ordered = sorted(
            (model for _, model in by_folder.values()),
            key=lambda m: (created_at(m.manifest), m.version),
            reverse=True,
        )
        models = {m.version: m for m in ordered}
        report.added = [v for v in models if v not in before]
        report.removed = sorted(v for v in before if v not in models)
        for version in report.added:
            m = models[version]
            log.info(
                "model %s added: %s backbone=%s dim=%d image_size=%d created_at=%s provider=%s folder=%s",
                version,
                m.manifest.name,
                m.manifest.backbone,
                m.dimension,
                m.image_size,
                m.manifest.created_at,
                m.provider,
                m.folder,
            )
        named = self._named_default(ordered)
        default = (named or ordered[0]).version if ordered else None
        with self._lock:
            previous = self._default
            self._by_folder = by_folder
            self._models = models
            self._default = default
        if default != previous:
            if self.default_model and ordered and named is None:
                log.warning(
                    "default model %r is not loaded (versions: %s); the default is the newest, %s",
                    self.default_model,
                    ", ".join(m.version for m in ordered),
                    default,
                )
            if previous is not None:
                log.info("default model is now %s (was %s)", default, previous)
        return report

    def _named_default(self, ordered: list[EmbeddingModel]) -> EmbeddingModel | None:
        """The loaded model ``default_model`` names, by version or folder name; ``None``: none does."""
        wanted = self.default_model
        return next((m for m in ordered if wanted and wanted in (m.version, m.folder.name)), None)
