"""What the stages of one training run share: the run itself, its timer, what the phases produced."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.dataset import PreparedData
from training.fitting import Networks
from training.presets import TrainConfig


class StageTimer:
    """Wall seconds per stage, under the keys ``timings.json`` and ``bench/train.py`` read.

    A stage that raises ends the run, whose timings are then never written: only finished stages count.
    """

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - started


@dataclass
class Run:
    """What every stage of one run reads: the config, the data, the networks, the folders, the timer."""

    config: TrainConfig
    catalog_path: Path
    out_dir: Path
    run_dir: Path
    data: PreparedData
    nets: Networks
    timer: StageTimer
    progress: bool


@dataclass
class Training:
    """What the phases produced: history, validation figures, the head-at-init embeddings."""

    history: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    head_init: tuple[np.ndarray, dict[str, np.ndarray]] | None = None  # (gallery, level → queries)
    backbone_trained: bool = False
