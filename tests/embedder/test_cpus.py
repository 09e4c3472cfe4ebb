"""CPUs a process may use: affinity capped by the cgroup quota (v2 ``cpu.max``, v1 CFS files)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from embedder import cpus
from embedder.cpus import available_cpus, batch_scheduling, cgroup_cpu_quota, decode_threads


def affinity() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def v2(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(text)
    return root


def v1(root: Path, quota_us: str, period_us: str = "100000") -> Path:
    (root / "cpu").mkdir(parents=True, exist_ok=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota_us)
    (root / "cpu" / "cpu.cfs_period_us").write_text(period_us)
    return root


@pytest.mark.parametrize(
    ("text", "quota"),
    [("150000 100000\n", 1.5), ("200000 100000", 2.0), ("50000 100000", 0.5), ("max 100000\n", None)],
)
def test_cgroup_v2_quota_in_cpus(tmp_path: Path, text: str, quota: float | None) -> None:
    assert cgroup_cpu_quota(v2(tmp_path, text)) == quota


def test_cgroup_v1_quota_and_its_unlimited_minus_one(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(v1(tmp_path / "a", "250000")) == 2.5
    assert cgroup_cpu_quota(v1(tmp_path / "b", "-1")) is None


@pytest.mark.parametrize("text", ["", "garbage", "100000 0", "x y"])
def test_an_unreadable_quota_is_no_quota(tmp_path: Path, text: str) -> None:
    assert cgroup_cpu_quota(v2(tmp_path, text)) is None
    assert cgroup_cpu_quota(tmp_path / "absent") is None


def test_the_quota_caps_the_affinity_rounded_up_and_never_below_one(tmp_path: Path) -> None:
    assert available_cpus(tmp_path / "absent") == affinity()
    assert available_cpus(v2(tmp_path / "half", "50000 100000")) == 1
    assert available_cpus(v2(tmp_path / "big", f"{(affinity() + 8) * 100000} 100000")) == affinity()
    if affinity() >= 2:
        assert available_cpus(v2(tmp_path / "one-and-a-bit", "110000 100000")) == 2
        assert available_cpus(v2(tmp_path / "one", "100000 100000")) == 1


@pytest.mark.parametrize(("available", "threads"), [(1, 1), (2, 2), (8, 8), (64, 8)])
def test_decoding_pools_take_one_thread_per_available_cpu_up_to_8(
    monkeypatch: pytest.MonkeyPatch, available: int, threads: int
) -> None:
    monkeypatch.setattr(cpus, "available_cpus", lambda: available)
    assert decode_threads() == threads
    assert decode_threads(3) == 3  # a setting wins


needs_sched_batch = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")


@needs_sched_batch
def test_batch_scheduling_changes_the_calling_thread_only() -> None:
    seen: dict[str, object] = {}

    def decoding_thread() -> None:
        seen["applied"] = batch_scheduling()
        seen["policy"] = os.sched_getscheduler(0)

    thread = threading.Thread(target=decoding_thread)
    thread.start()
    thread.join(5)
    assert seen == {"applied": True, "policy": os.SCHED_BATCH}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # this thread, and so the model's, unchanged


def test_without_the_policy_nothing_changes_and_the_log_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(os, "SCHED_BATCH", raising=False)  # a platform without it
    monkeypatch.setattr(cpus, "_refused", [])
    before = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
    with caplog.at_level("WARNING", logger="embedder.cpus"):
        assert batch_scheduling() is False
        assert batch_scheduling() is False
    assert [r.getMessage() for r in caplog.records] == [
        "search workers keep the default scheduling policy: this platform has no SCHED_BATCH"
    ]
    if before is not None:
        assert os.sched_getscheduler(0) == before


ZEN1 = "flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni\n"
ZEN4 = "flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16\n"
SKYLAKE = "flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512vl\n"
ALDER_LAKE = "flags\t\t: fpu sse2 avx avx2 avx_vnni\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512bw avx512_vnni amx_bf16 amx_tile amx_int8\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 atomics asimddp\n"
OLD_ARM = "Features\t: fp asimd evtstrm\n"


@pytest.mark.parametrize(
    ("cpuinfo", "name", "kind"),
    [
        (ZEN1, "AVX2 without VNNI", cpus.SATURATING),
        (SKYLAKE, "AVX-512 without VNNI", cpus.SATURATING),
        (ZEN4, "AVX512-VNNI", cpus.EXACT),
        (ALDER_LAKE, "AVX-VNNI", cpus.EXACT),
        (SAPPHIRE_RAPIDS, "AMX-INT8", cpus.EXACT),
        (GRAVITON, "Arm dot product", cpus.EXACT),
        (OLD_ARM, "Arm NEON without dot product", cpus.EXACT),
        ("processor\t: 0\n", "unknown", cpus.UNKNOWN),
    ],
)
def test_int8_instructions_from_cpuinfo_flags(cpuinfo: str, name: str, kind: str) -> None:
    found = cpus.parse_int8_instructions(cpuinfo)
    assert (found.name, found.kind) == (name, kind)
    assert kind in found.describe()


def test_this_machines_int8_instructions_are_read_once() -> None:
    found = cpus.int8_instructions()
    assert found is cpus.int8_instructions()
    if Path("/proc/cpuinfo").exists():
        expected = cpus.parse_int8_instructions(Path("/proc/cpuinfo").read_text(errors="replace"))
        assert found == expected and cpus.cpu_name() != ""


@pytest.mark.parametrize(
    ("cpuinfo", "name"),
    [
        (ZEN4, "AVX512-BF16"),
        (SAPPHIRE_RAPIDS, "AMX-BF16"),
        (ZEN1, ""),
        (SKYLAKE, ""),
        (ALDER_LAKE, ""),
        (GRAVITON, ""),
        ("processor\t: 0\n", ""),
    ],
)
def test_bf16_arithmetic_from_cpuinfo_flags(cpuinfo: str, name: str) -> None:
    assert cpus.parse_native_bf16(cpuinfo) == name


def test_this_machines_bf16_is_read_from_its_cpuinfo() -> None:
    if Path("/proc/cpuinfo").exists():
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        assert cpus.native_bf16() == cpus.parse_native_bf16(text)
