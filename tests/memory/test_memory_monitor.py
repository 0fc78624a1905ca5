"""MemoryMonitor: cgroup limits from fixture trees, thresholds, callbacks, shedding, leak trend."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from elaria.config import MemorySettings
from elaria.errors import ResourceExhausted
from elaria.memory.cache import Cache
from elaria.memory.monitor import MemoryMonitor, MemoryStatus, read_cgroup_limit

MiB = 1 << 20
WAIT = 5.0  # bound on every wait for a task we started


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ---------------------------------------------------------------- cgroup fixtures


def test_cgroup_v2_limit_along_the_process_path(tmp_path: Path) -> None:
    proc = tmp_path / "proc-self-cgroup"
    write(proc, "0::/user.slice/elaria.scope\n")
    root = tmp_path / "cgroup"
    write(root / "memory.max", "max\n")
    write(root / "user.slice" / "memory.max", "1073741824\n")
    write(root / "user.slice" / "elaria.scope" / "memory.max", "max\n")
    assert read_cgroup_limit(root, proc) == (1 << 30, "cgroup memory.max")


def test_cgroup_v2_max_means_no_limit(tmp_path: Path) -> None:
    proc = tmp_path / "proc-self-cgroup"
    write(proc, "0::/\n")
    write(tmp_path / "cgroup" / "memory.max", "max\n")
    assert read_cgroup_limit(tmp_path / "cgroup", proc) is None


def test_cgroup_v1_limit_and_its_huge_unlimited_value(tmp_path: Path) -> None:
    proc = tmp_path / "proc-self-cgroup"
    write(proc, "5:cpu,cpuacct:/\n4:memory:/docker/abc\n")
    root = tmp_path / "cgroup"
    write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert read_cgroup_limit(root, proc) is None
    write(root / "memory" / "docker" / "abc" / "memory.limit_in_bytes", "536870912\n")
    assert read_cgroup_limit(root, proc) == (512 * MiB, "cgroup memory.limit_in_bytes")


def test_hybrid_host_reads_v2_under_unified(tmp_path: Path) -> None:
    proc = tmp_path / "proc-self-cgroup"
    write(proc, "0::/\n")
    write(tmp_path / "cgroup" / "unified" / "memory.max", "268435456")
    assert read_cgroup_limit(tmp_path / "cgroup", proc) == (256 * MiB, "cgroup memory.max")


def test_monitor_uses_the_cgroup_limit_below_total_memory(tmp_path: Path) -> None:
    proc = tmp_path / "proc-self-cgroup"
    write(proc, "0::/\n")
    write(tmp_path / "cgroup" / "memory.max", str(64 * MiB))
    monitor = MemoryMonitor(
        sampler=lambda: 32 * MiB, cgroup_root=tmp_path / "cgroup", proc_cgroup=proc
    )
    assert (monitor.limit, monitor.limit_source) == (64 * MiB, "cgroup memory.max")
    assert monitor.check()["usage"] == 0.5


def test_no_cgroup_falls_back_to_total_memory(tmp_path: Path) -> None:
    monitor = MemoryMonitor(cgroup_root=tmp_path / "none", proc_cgroup=tmp_path / "none")
    assert monitor.limit_source == "total memory"
    assert monitor.limit > 0
    assert monitor.check()["rss"] > 0  # the real psutil sampler


# ---------------------------------------------------------------- thresholds and callbacks


class Sampler:
    def __init__(self, value: int) -> None:
        self.value = value

    def __call__(self) -> int:
        return self.value


def test_thresholds_fire_callbacks_once_shed_holders_and_refuse_runs() -> None:
    sample = Sampler(10 * MiB)
    clock = iter(range(1_000_000))
    monitor = MemoryMonitor(sampler=sample, limit=100 * MiB, clock=lambda: float(next(clock)))
    seen: list[tuple[str, str]] = []
    monitor.on_warning(lambda s: seen.append(("warning", s.level)))
    monitor.on_critical(lambda s: seen.append(("critical", s.level)))
    monitor.on_recovered(lambda s: seen.append(("recovered", s.level)))
    cache: Cache[str, int] = Cache()
    monitor.register(cache)

    assert monitor.check()["level"] == "ok"
    monitor.check_admission()
    cache.set("a", 1)
    sample.value = 85 * MiB
    assert monitor.check()["level"] == "warning"
    assert len(cache) == 0  # shed on warning
    monitor.check()  # still warning: no second callback
    monitor.check_admission()  # warning still admits runs
    sample.value = 95 * MiB
    assert monitor.check()["level"] == "critical"
    with pytest.raises(ResourceExhausted, match=r"Memory is critical: .*95%.*below 88%"):
        monitor.check_admission()
    sample.value = 89 * MiB  # under 90 % but inside the recovery margin: still refused
    assert monitor.check()["level"] == "critical"
    with pytest.raises(ResourceExhausted):
        monitor.check_admission()
    sample.value = 50 * MiB
    assert monitor.check()["level"] == "ok"
    monitor.check_admission()
    assert seen == [("warning", "warning"), ("critical", "critical"), ("recovered", "ok")]
    stats = monitor.stats()
    assert stats["refused_runs"] == 2
    assert stats["sheds"] == 4


def test_a_failing_callback_or_holder_does_not_stop_the_others() -> None:
    sample = Sampler(95 * MiB)
    monitor = MemoryMonitor(sampler=sample, limit=100 * MiB)
    reached: list[MemoryStatus] = []

    def broken(_status: MemoryStatus) -> None:
        raise RuntimeError("callback bug")

    class BadHolder:
        def shed(self) -> int:
            raise RuntimeError("shed bug")

    monitor.on_critical(broken)
    monitor.on_critical(reached.append)
    bad = BadHolder()
    monitor.register(bad)
    cache: Cache[str, int] = Cache()
    cache.set("x", 1)
    monitor.register(cache)
    assert monitor.check()["level"] == "critical"
    assert len(reached) == 1
    assert reached[0].rss == 95 * MiB
    assert monitor.stats()["shed_items"] == 1


def test_holders_are_held_weakly_and_can_be_unregistered() -> None:
    monitor = MemoryMonitor(sampler=lambda: 1 * MiB, limit=100 * MiB)
    kept: Cache[str, int] = Cache()
    monitor.register(kept)
    monitor.register(Cache())  # nobody else holds this one
    gc.collect()
    assert monitor.stats()["holders"] == 1
    monitor.unregister(kept)
    assert monitor.stats()["holders"] == 0


def test_steady_climb_is_flagged_as_a_leak_and_a_flat_line_is_not() -> None:
    sample = Sampler(100 * MiB)
    now = [0.0]
    settings = MemorySettings(history_samples=20)
    monitor = MemoryMonitor(settings, sampler=sample, limit=10_000 * MiB, clock=lambda: now[0])
    leaks: list[MemoryStatus] = []
    monitor.on_leak(leaks.append)
    for i in range(20):  # flat with jitter
        sample.value = 100 * MiB + (i % 3) * 4096
        now[0] += 30
        monitor.check()
    assert monitor.stats()["trend"]["leak_suspected"] is False
    for _ in range(20):  # +5 MiB every 30 s
        sample.value += 5 * MiB
        now[0] += 30
        monitor.check()
    trend = monitor.stats()["trend"]
    assert trend["leak_suspected"] is True
    assert trend["slope_bytes_per_s"] == pytest.approx(5 * MiB / 30, rel=0.01)
    assert len(leaks) == 1


def test_force_gc_reports_collection_and_samples_again() -> None:
    monitor = MemoryMonitor(sampler=Sampler(1 * MiB), limit=100 * MiB)
    result = monitor.force_gc()
    assert result["rss_after"] == 1 * MiB
    assert monitor.stats()["samples"] == 1


async def test_start_samples_on_the_loop_and_stop_ends_the_task() -> None:
    sampled = asyncio.Event()

    def sampler() -> int:
        sampled.set()
        return 1 * MiB

    monitor = MemoryMonitor(sampler=sampler, limit=100 * MiB)
    await monitor.start()
    await asyncio.wait_for(sampled.wait(), WAIT)
    task = monitor._task
    assert task is not None
    assert not task.done()
    await asyncio.wait_for(monitor.stop(), WAIT)
    assert task.cancelled()
