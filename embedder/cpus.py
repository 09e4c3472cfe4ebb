"""How many CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota.

A container limited to 2 CPUs on a 32-core host sees 32 in ``os.cpu_count()``; onnxruntime left to its
own default counts the host's physical cores too, and pins its threads to them. The runtime's thread
count (:class:`embedder.runtime.EmbeddingModel`) and the decoding pools (:func:`decode_threads`) come
from here instead, and so does how the gateway's search workers are scheduled beside the model
(:func:`batch_scheduling`). Plain stdlib: no runtime.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
MAX_DECODE_THREADS = 8
_refused: list[str] = []  # why SCHED_BATCH could not be set, once (logged the first time)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of the cgroup mounted at ``root``, in CPUs (``1.5``: 150 ms per 100 ms), or ``None``
    when it sets none: cgroup v2's ``cpu.max``, else v1's ``cpu/cpu.cfs_quota_us`` over its period."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError, ZeroDivisionError):
        return None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on (its affinity), no more than its cgroup quota rounded up; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def decode_threads(requested: int = 0) -> int:
    """Threads of a photo-decoding pool: ``requested``, or (0) one per available CPU, at most 8."""
    return requested or min(MAX_DECODE_THREADS, available_cpus())


def batch_scheduling() -> bool:
    """Run the calling thread under Linux's ``SCHED_BATCH`` (same share of the CPU, no wake-up preemption):
    the initializer of the gateway's search workers, which decode photos and do a search's other steps.

    The model's threads run each layer split between them and wait for each other at its end; a decoding
    thread that wakes up and preempts one of them leaves the other waiting, and on 2 cores a concurrent
    search's model took 1.4× its bare CPU. Under ``SCHED_BATCH`` a waking thread waits for the running one's
    time slice instead. Only this thread changes, and the threads it starts inherit it (Qdrant Edge's search
    pool, the decode budget's trim timer); the runtime's threads start when a model loads and warms up,
    outside the workers. No privilege is needed. ``False`` (nothing changed) where the platform has no
    such policy or refuses it.
    """
    setter = getattr(os, "sched_setscheduler", None)
    policy = getattr(os, "SCHED_BATCH", None)
    try:
        if setter is None or policy is None:
            raise OSError("this platform has no SCHED_BATCH")
        setter(0, policy, os.sched_param(0))  # pid 0: the calling thread
    except OSError as exc:
        if not _refused:
            _refused.append(str(exc))
            log.warning("search workers keep the default scheduling policy: %s", exc)
        return False
    return True
