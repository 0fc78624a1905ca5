"""The public surface of elaria.memory and elaria.telemetry.health: what others import."""

from __future__ import annotations

import elaria.memory
import elaria.telemetry.health


def test_memory_public_names() -> None:
    assert sorted(elaria.memory.__all__) == [
        "Cache",
        "ConversationHistory",
        "MemoryMonitor",
        "MemoryStatus",
        "Shedder",
        "TokenCounter",
        "read_cgroup_limit",
        "spill_reader_tool",
    ]
    for name in elaria.memory.__all__:
        assert getattr(elaria.memory, name) is not None


def test_health_public_names() -> None:
    assert sorted(elaria.telemetry.health.__all__) == [
        "DEFAULT_ASSESSORS",
        "HealthRegistry",
        "HealthServer",
        "Status",
        "assess_generic",
        "assess_hosts",
        "assess_memory",
        "exit_code",
        "machine_registry",
        "probe_host",
        "probe_hosts",
    ]
    for name in elaria.telemetry.health.__all__:
        assert hasattr(elaria.telemetry.health, name)
