"""The supervisor against a real stdio child: crash, restart, hang, RSS cap, budget, cleanup."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from elaria.config import McpSettings
from elaria.errors import McpError
from elaria.mcp.config import StdioServerConfig, parse_mcp_config
from elaria.mcp.supervisor import ServerSupervisor
from elaria.mcp.testing import fixture_server, group_members, process_running, wait_until


@pytest.fixture
def fast_settings() -> McpSettings:
    """A health check twice a second, so watch-loop behaviour shows up quickly."""
    return McpSettings(health_interval_ms=500, init_timeout_ms=30_000, call_timeout_ms=20_000)


def _supervisor(settings: McpSettings, mode: str = "serve", **extra: object) -> ServerSupervisor:
    entry = fixture_server(mode, **extra)
    config = parse_mcp_config({"mcpServers": {"fx": entry}}, {}).servers["fx"]
    assert isinstance(config, StdioServerConfig)
    return ServerSupervisor("fx", config, settings, restart_initial_delay_s=0.05)


async def test_kill_mid_call_fails_fast_restarts_and_next_call_succeeds(
    tmp_path: Path, fast_settings: McpSettings
) -> None:
    sup = _supervisor(fast_settings)
    try:
        tools = await sup.start()
        assert {t.name for t in tools} >= {"echo", "block"}
        first_pid = sup.pid
        assert first_pid is not None
        assert process_running(first_pid)
        stats = sup.stats()
        assert stats.state == "ready"
        assert stats.rss_mb is not None
        assert stats.rss_mb > 1

        marker = tmp_path / "call-started"
        call = asyncio.create_task(sup.call("block", {"marker": str(marker)}))
        await wait_until(marker.exists, "the blocking call to reach the child")
        os.kill(first_pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(McpError, match="killed by signal 9") as info:
            async with asyncio.timeout(10):  # far below the 20 s call timeout: it failed fast
                await call
        assert "again" in str(info.value)
        assert time.monotonic() - started < fast_settings.call_timeout_ms / 1000

        await asyncio.wait_for(sup.wait_ready(), 30)
        assert sup.restarts == 1
        assert sup.pid not in (None, first_pid)
        assert "killed by signal 9" in (sup.stats().last_error or "")
        result = await sup.call("echo", {"text": "after restart"})
        assert result.content[0].text == "after restart"  # type: ignore[union-attr]
    finally:
        await sup.aclose()
    assert not process_running(first_pid)
    # Closing does not overwrite what went wrong last.
    assert "killed by signal 9" in (sup.stats().last_error or "")


async def test_call_to_a_down_server_fails_at_once(fast_settings: McpSettings) -> None:
    settings = fast_settings.model_copy(update={"restart_budget": 0})
    sup = _supervisor(settings)
    try:
        await sup.start()
        pid = sup.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: sup.state == "failed", "the spent budget to fail the server")
        with pytest.raises(McpError, match=r"down for good: process .* killed by signal 9"):
            async with asyncio.timeout(1):
                await sup.call("echo", {"text": "x"})
    finally:
        await sup.aclose()


async def test_child_hanging_on_start_hits_its_timeout(fast_settings: McpSettings) -> None:
    sup = _supervisor(fast_settings, "hang", timeout={"init": 1})
    try:
        with pytest.raises(McpError, match=r"failed to start: .*within 1 s"):
            async with asyncio.timeout(15):
                await sup.start()
        assert sup.stats().state == "failed"
        assert sup._child is not None
        pgid = sup._child.pid
        await wait_until(lambda: group_members(pgid) == [], "the hung child's group to die", 5)
    finally:
        await sup.aclose()


async def test_child_crashing_on_start_reports_exit_and_stderr(
    fast_settings: McpSettings,
) -> None:
    sup = _supervisor(fast_settings, "crash")
    with pytest.raises(McpError, match=r"exited with 3.*crashing on purpose"):
        await sup.start()
    await sup.aclose()


async def test_rss_over_the_cap_restarts_the_child(fast_settings: McpSettings) -> None:
    settings = fast_settings.model_copy(update={"rss_cap_mb": 64})
    sup = _supervisor(settings)
    try:
        await sup.start()
        first = sup.pid
        await sup.call("grow", {"mb": 100})
        await wait_until(lambda: sup.restarts >= 1 and sup.state == "ready", "an RSS restart")
        assert "over the cap of 64 MB" in (sup.last_error or "")
        assert sup.pid != first
    finally:
        await sup.aclose()


async def test_aclose_leaves_no_process_of_the_group(fast_settings: McpSettings) -> None:
    sup = _supervisor(fast_settings)
    await sup.start()
    pid = sup.pid
    assert pid is not None
    assert group_members(pid) == [pid]
    await sup.aclose()
    # SIGKILL is delivered asynchronously; the group must be gone moments later.
    await wait_until(lambda: group_members(pid) == [], "the closed child's group to die", 5)
    assert sup.stats().state == "closed"
    with pytest.raises(McpError, match="is closed"):
        await sup.call("echo", {"text": "x"})
