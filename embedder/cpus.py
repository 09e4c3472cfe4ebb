"""How many CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota.

A container limited to 2 CPUs on a 32-core host sees 32 in ``os.cpu_count()``; onnxruntime left to its
own default counts the host's physical cores too, and pins its threads to them. The runtime's thread
count (:class:`embedder.runtime.EmbeddingModel`) and the decoding pools (:func:`decode_threads`) come
from here instead, and so does how the gateway's search workers are scheduled beside the model
(:func:`batch_scheduling`), and which int8 instructions the CPU has (:func:`int8_instructions`: whether
an int8 model's numerics here are the ones its agreement to fp32 was measured with). Plain stdlib: no
runtime.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPUINFO = Path("/proc/cpuinfo")
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


EXACT = "exact"
SATURATING = "saturating"
UNKNOWN = "unknown"
# Linux's /proc/cpuinfo flags for int8 dot products summed straight into int32, best first.
_EXACT_FLAGS = (
    ("amx_int8", "AMX-INT8"),
    ("avx512_vnni", "AVX512-VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("asimddp", "Arm dot product"),  # aarch64's Features line
)


@dataclass(frozen=True)
class Int8Instructions:
    """What the CPU multiplies int8 tensors with, and so what an int8 model computes on it.

    ``kind`` is :data:`EXACT` where an instruction sums int8 products into int32 without overflow (VNNI, AMX,
    Arm's NEON), :data:`SATURATING` on x86 without them: there oneDNN (OpenVINO) and onnxruntime
    multiply uint8 activations by int8 weights with ``vpmaddubsw``, whose pairwise sums saturate at
    int16 — the same model file gives other vectors (on a Zen 1, cosine to fp32 down to 0.58 on OpenVINO
    against 0.985 on a Zen 5) and runs no faster than fp32. :data:`UNKNOWN` where it cannot be told.
    """

    name: str
    kind: str

    def describe(self) -> str:
        return f"{self.name} ({self.kind} int8 products)"


def _cpuinfo_fields(cpuinfo: str) -> Iterator[tuple[str, str]]:
    """``(key, value)`` of each ``key : value`` line of ``/proc/cpuinfo``'s text, stripped."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        yield key.strip(), value.strip()


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    """``/proc/cpuinfo``, read once (empty where it cannot be read)."""
    try:
        return CPUINFO.read_text(errors="replace")
    except OSError:
        return ""


def _cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags in ``/proc/cpuinfo``'s text: x86's ``flags`` lines and aarch64's ``Features``."""
    flags: set[str] = set()
    for key, value in _cpuinfo_fields(cpuinfo):
        if key in ("flags", "Features"):
            flags.update(value.split())
    return flags


def parse_int8_instructions(cpuinfo: str) -> Int8Instructions:
    """:class:`Int8Instructions` from the text of ``/proc/cpuinfo``."""
    flags = _cpu_flags(cpuinfo)
    for flag, name in _EXACT_FLAGS:
        if flag in flags:
            return Int8Instructions(name, EXACT)
    if "avx512bw" in flags:
        return Int8Instructions("AVX-512 without VNNI", SATURATING)
    if "avx2" in flags:
        return Int8Instructions("AVX2 without VNNI", SATURATING)
    if "asimd" in flags:  # int8 × int8 widened to int16 never overflows; pairs add up in int32
        return Int8Instructions("Arm NEON without dot product", EXACT)
    return Int8Instructions("unknown", UNKNOWN)


@lru_cache(maxsize=1)
def int8_instructions() -> Int8Instructions:
    """This machine's :class:`Int8Instructions` (:data:`UNKNOWN` where ``/proc/cpuinfo`` cannot be read)."""
    return parse_int8_instructions(_cpuinfo())


# Flags for bf16 arithmetic in hardware, best first: where one is present OpenVINO runs an int8 model's float
# parts (the layers left out of quantization, the pooling and the head) in bf16 (embedder.runtime).
_BF16_FLAGS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))


def parse_native_bf16(cpuinfo: str) -> str:
    """The CPU's bf16 instructions by name (``AVX512-BF16``), from ``/proc/cpuinfo``'s text; ``""``: none."""
    flags = _cpu_flags(cpuinfo)
    return next((name for flag, name in _BF16_FLAGS if flag in flags), "")


@lru_cache(maxsize=1)
def native_bf16() -> str:
    """This machine's bf16 instructions (:func:`parse_native_bf16`); ``""`` where it has none."""
    return parse_native_bf16(_cpuinfo())


def cpu_name() -> str:
    """The CPU's model name, as ``/proc/cpuinfo`` gives it (``unknown`` where it does not)."""
    for key, value in _cpuinfo_fields(_cpuinfo()):
        if key in ("model name", "Model", "Hardware") and value:
            return value
    return "unknown"
