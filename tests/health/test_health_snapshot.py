"""The health registry: sections, assessors, overall status, host probes against real servers."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from elaria.config import Settings
from elaria.memory.cache import Cache
from elaria.memory.history import ConversationHistory
from elaria.memory.monitor import MemoryMonitor
from elaria.telemetry import health
from elaria.telemetry.health import (
    HealthRegistry,
    assess_hosts,
    assess_memory,
    exit_code,
    machine_registry,
    probe_host,
)
from elaria.testing import embedded_server

MiB = 1 << 20


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_snapshot_gathers_every_section_and_the_worst_status_wins() -> None:
    registry = HealthRegistry()
    cache: Cache[str, int] = Cache(name="handles")
    cache.set("m", 1)
    history = ConversationHistory(system_prompt="s")
    monitor = MemoryMonitor(sampler=lambda: 85 * MiB, limit=100 * MiB)

    async def hosts() -> list[dict[str, Any]]:
        return [{"host": "ws://a:1", "state": "up", "breaker": "closed"}]

    registry.register("hosts", hosts, assess=assess_hosts)
    registry.register("memory", monitor.check, assess=assess_memory)
    registry.register("caches", lambda: [cache.stats()])
    registry.register("history", history.stats)
    registry.record_error(RuntimeError("model crashed"), where="pool")
    snap = await registry.snapshot()
    assert set(snap["sections"]) == {"hosts", "memory", "caches", "history"}
    assert snap["sections"]["caches"][0]["entries"] == 1
    assert snap["sections"]["history"]["messages"] == 1
    assert snap["status"] == "degraded"
    assert snap["reasons"] == ["memory: memory warning (85% of the limit)"]
    assert snap["recent_errors"][0]["type"] == "RuntimeError"
    assert snap["version"]
    assert snap["uptime_s"] >= 0


async def test_a_broken_or_stuck_component_degrades_but_does_not_hide_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "STATS_TIMEOUT_S", 0.05)
    registry = HealthRegistry()

    def broken() -> dict[str, Any]:
        raise OSError("stats exploded")

    async def stuck() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    registry.register("broken", broken)
    registry.register("stuck", stuck)
    registry.register("fine", lambda: {"status": "ok"})
    snap = await registry.snapshot()
    assert snap["sections"]["broken"] == {"error": "OSError: stats exploded"}
    assert "TimeoutError" in snap["sections"]["stuck"]["error"]
    assert snap["sections"]["fine"] == {"status": "ok"}
    assert snap["status"] == "degraded"


def test_host_assessment() -> None:
    up = {"host": "a", "state": "up"}
    down = {"host": "b", "state": "down"}
    assert assess_hosts([up]) == ("ok", [])
    assert assess_hosts([up, down]) == ("degraded", ["host b is down"])
    assert assess_hosts({"hosts": [down]}) == ("unhealthy", ["host b is down"])
    assert assess_hosts([{"host": "c", "up": True, "breaker": {"state": "open"}}]) == (
        "degraded",
        ["host c: breaker open"],
    )
    assert assess_hosts([]) == ("ok", [])


def test_memory_assessment_and_exit_codes() -> None:
    assert assess_memory({"level": "critical", "usage": 0.95})[0] == "unhealthy"
    assert assess_memory({"level": "ok", "trend": {"leak_suspected": True}})[0] == "degraded"
    assert [exit_code(s) for s in ("ok", "degraded", "unhealthy", "???")] == [0, 3, 1, 1]


async def test_a_host_that_is_down_turns_the_status_to_degraded() -> None:
    async with embedded_server() as srv:
        dead = f"ws://127.0.0.1:{closed_port()}"
        settings = Settings.model_validate({"lmstudio": {"hosts": [srv.ws_url, dead]}})
        monitor = MemoryMonitor(sampler=lambda: 1 * MiB, limit=100 * MiB)
        snap = await machine_registry(settings, monitor).snapshot()
        hosts = {h["host"]: h for h in snap["sections"]["hosts"]}
        assert hosts[srv.ws_url]["state"] == "up"
        assert hosts[srv.ws_url]["loaded_models"]  # listed through the unmodified SDK
        assert hosts[dead]["state"] == "down"
        assert snap["status"] == "degraded"
        assert snap["reasons"] == [f"hosts: host {dead} is down"]

        only_dead = Settings.model_validate({"lmstudio": {"hosts": [dead]}})
        assert (await machine_registry(only_dead, monitor).snapshot())["status"] == "unhealthy"


async def test_a_server_that_is_not_lmstudio_is_down() -> None:
    async def not_lmstudio(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_lmstudio, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        result = await probe_host(f"ws://127.0.0.1:{port}")
    assert result["state"] == "down"
    assert "not LM Studio" in result["error"]


def test_the_pools_host_map_is_understood() -> None:
    pool = {
        "ws://a:1": {"state": "connected", "in_flight": 0},
        "ws://b:2": {"state": "reconnecting"},
        "ws://c:3": {"state": "down", "last_error": "refused"},
    }
    status, reasons = assess_hosts(pool)
    assert status == "degraded"
    assert reasons == ["host ws://c:3 is down", "host ws://b:2: reconnecting"]
    assert assess_hosts({"ws://c:3": {"state": "down"}})[0] == "unhealthy"
    assert assess_hosts({"ws://a:1": {"state": "idle"}}) == ("ok", [])


async def test_a_runtime_stats_dict_becomes_sections() -> None:
    registry = HealthRegistry()

    def runtime_stats() -> dict[str, Any]:
        return {
            "uptime_s": 12.5,
            "runs_in_flight": 1,
            "pool": {"ws://a:1": {"state": "down"}, "ws://b:2": {"state": "connected"}},
            "memory": {"level": "ok", "usage": 0.1},
            "mcp": [{"name": "files", "state": "running"}],
        }

    registry.register_sections("runtime", runtime_stats)
    snap = await registry.snapshot()
    assert list(snap["sections"]) == ["runtime", "pool", "memory", "mcp"]
    assert snap["sections"]["runtime"] == {"uptime_s": 12.5, "runs_in_flight": 1}
    assert snap["section_status"]["pool"] == "degraded"
    assert snap["status"] == "degraded"
    assert snap["reasons"] == ["pool: host ws://a:1 is down"]
