"""Servers that recover by themselves: a failed first start retried, new tools after restart."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from elaria.agent.approval import ApprovalPolicy
from elaria.agent.tools import ToolRegistry
from elaria.config import AgentSettings, McpSettings
from elaria.errors import ToolExecutionError
from elaria.mcp.client import McpBridge
from elaria.mcp.config import parse_mcp_config
from elaria.mcp.testing import fixture_server, wait_until

#: Backoff start for these tests: retries follow each other quickly.
FAST_RETRY_S = 0.05


def _bridge(settings: McpSettings, **servers: dict[str, Any]) -> McpBridge:
    config = parse_mcp_config({"mcpServers": servers}, {})
    return McpBridge(
        config, settings, restart_initial_delay_s=FAST_RETRY_S, retry_failed_starts=True
    )


def _server_stats(bridge: McpBridge, name: str) -> dict[str, Any]:
    return next(s for s in bridge.stats() if s["server"] == name)


async def test_a_server_failing_its_first_start_comes_up_later_and_its_tools_appear(
    tmp_path: Path,
) -> None:
    may_start = tmp_path / "may-start"
    # A budget large enough that the test, not the budget, decides when the server comes up.
    settings = McpSettings(restart_budget=200, health_interval_ms=500)
    bridge = _bridge(
        settings,
        good=fixture_server(),
        late=fixture_server(env={"FIXTURE_FAIL_UNTIL": str(may_start)}),
    )
    registry = ToolRegistry()
    async with bridge:
        bridge.register(registry)
        assert "late.unavailable" in registry
        assert "echo" in registry  # the healthy server's tools are there at once

        def retrying() -> bool:
            stats = _server_stats(bridge, "late")
            return stats["state"] == "restarting" and stats["next_attempt_at"] is not None

        await wait_until(
            lambda: retrying() and _server_stats(bridge, "late")["attempts"] >= 2,
            "a second failed attempt of the late server",
        )
        stats = _server_stats(bridge, "late")
        assert "failing this start on purpose" in stats["last_error"]
        assert "exited with 3" in stats["last_error"]
        assert stats["restarts"] >= 1

        # While it is down, the placeholder fails at once and says it is retrying.
        with pytest.raises(ToolExecutionError, match="has not started yet") as info:
            await registry.get("late.unavailable").invoke({})
        assert "retrying" in str(info.value)
        assert "failing this start on purpose" in str(info.value)

        may_start.write_text("go")
        await wait_until(lambda: "late.echo" in registry, "the late server's tools")
        assert "late.unavailable" not in registry
        assert _server_stats(bridge, "late")["state"] == "ready"
        assert _server_stats(bridge, "late")["next_attempt_at"] is None
        # Its echo clashes with the good server's: exposed as server.tool, and it works.
        assert await registry.get("late.echo").invoke({"text": "up at last"}) == "up at last"
        assert registry.get("late.grow").source == "mcp:late"
        assert await registry.get("echo").invoke({"text": "still here"}) == "still here"
        assert {t.name for t in bridge.tools} == set(registry.names())


async def test_a_restart_with_a_new_tool_list_updates_the_registry(tmp_path: Path) -> None:
    tools_file = tmp_path / "tools.txt"
    tools_file.write_text("echo,block")
    settings = McpSettings(health_interval_ms=500)
    entry = fixture_server(
        env={"FIXTURE_TOOLS_FILE": str(tools_file)},
        approval={"echo": "ask", "shout": "ask", "grow": "ask"},
    )
    bridge = _bridge(settings, fx=entry)
    async with bridge:
        registry = ToolRegistry()
        bridge.register(registry)
        assert registry.names() == ["block", "echo"]
        assert bridge.approvals() == {"echo": "ask"}
        # A filtered copy, as the runtime keeps one: a new tool must pass the same filter.
        filtered = ToolRegistry(list(registry))
        bridge.track(filtered, accept=lambda name: name != "grow")

        tools_file.write_text("echo,shout,grow,wave")
        pid = bridge.supervisors["fx"].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: "shout" in filtered, "the restarted server's new tool")
        assert filtered.names() == ["echo", "shout", "wave"]  # block gone, grow filtered out
        assert sorted(t.name for t in bridge.tools) == ["echo", "grow", "shout", "wave"]
        assert await filtered.get("wave").invoke({"text": "hi"}) == "wave: hi"
        assert await filtered.get("echo").invoke({"text": "known"}) == "known"
        # A tool that first appeared with the restart carries its "ask": the agent's policy
        # asks about it like about the tools it knew from the start.
        policy = ApprovalPolicy(AgentSettings())
        for name in ("echo", "shout"):
            tool = filtered.get(name)
            assert tool.approval == "ask"
            assert policy.decide(name, {"text": "hi"}, tool.approval).verdict == "ask"
        assert policy.decide("wave", {"text": "hi"}, filtered.get("wave").approval).verdict == (
            "allow"
        )
        assert bridge.supervisors["fx"].restarts == 1
        # The registry it no longer tracks is left as it was.
        assert registry.names() == ["block", "echo"]


async def test_an_unchanged_tool_list_keeps_the_registered_tools(tmp_path: Path) -> None:
    settings = McpSettings(health_interval_ms=500)
    bridge = _bridge(settings, fx=fixture_server())
    async with bridge:
        registry = ToolRegistry()
        bridge.register(registry)
        before = registry.get("echo")
        pid = bridge.supervisors["fx"].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        sup = bridge.supervisors["fx"]
        await wait_until(lambda: sup.restarts == 1 and sup.state == "ready", "the restart")
        assert sup.pid not in (None, pid)
        assert registry.get("echo") is before
        assert await before.invoke({"text": "same tool"}) == "same tool"


async def test_a_server_that_never_starts_stops_after_its_budget() -> None:
    settings = McpSettings(restart_budget=2, health_interval_ms=500)
    bridge = _bridge(settings, bad=fixture_server("crash"))
    registry = ToolRegistry()
    async with bridge:
        bridge.register(registry)
        await wait_until(
            lambda: _server_stats(bridge, "bad")["state"] == "failed", "the budget to run out"
        )
        stats = _server_stats(bridge, "bad")
        assert stats["attempts"] == 3  # the first start and two retries
        assert stats["restarts"] == 2
        assert stats["next_attempt_at"] is None
        assert "crashing on purpose" in stats["last_error"]
        with pytest.raises(ToolExecutionError, match="is unavailable: failed to start") as info:
            await registry.get("bad.unavailable").invoke({})
        assert "gave up after 3 attempts" in str(info.value)
        assert registry.names() == ["bad.unavailable"]
