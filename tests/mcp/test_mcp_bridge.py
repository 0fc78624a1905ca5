"""The bridge over fixture servers: names, filters, schemas, approval, timeouts, a frozen child."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

import elaria.mcp
from elaria.agent.tools import Tool, ToolRegistry
from elaria.config import McpSettings
from elaria.errors import ToolDenied, ToolExecutionError, ToolTimeoutError
from elaria.mcp.client import McpBridge
from elaria.mcp.config import parse_mcp_config
from elaria.mcp.testing import fixture_server, wait_until


def _bridge(settings: McpSettings | None = None, **servers: dict[str, Any]) -> McpBridge:
    config = parse_mcp_config({"mcpServers": servers}, {})
    return McpBridge(config, settings or McpSettings(), restart_initial_delay_s=0.05)


async def test_names_collide_into_server_dot_tool_and_filters_apply() -> None:
    bridge = _bridge(
        a=fixture_server(),
        b=fixture_server(allowed_tools=["echo", "gr*"], approval={"grow": "ask"}),
        c=fixture_server(disabled_tools=["*"]),
    )
    async with bridge:
        names = sorted(t.name for t in bridge.tools)
        assert names == ["a.echo", "a.grow", "b.echo", "b.grow", "block"]
        assert bridge.approvals() == {"b.grow": "ask"}
        tools = {t.name: t for t in bridge.tools}
        assert await tools["a.echo"].invoke({"text": "from a"}) == "from a"
        assert await tools["b.echo"].invoke({"text": "from b"}) == "from b"
        assert tools["block"].source == "mcp:a"
        # Registering beside a python tool of the same name namespaces the MCP one.

        def block() -> str:
            """A local tool named like a remote one."""
            return "local"

        registry = ToolRegistry([Tool.from_function(block)])
        added = bridge.register(registry)
        assert "a.block" in [t.name for t in added]
        assert registry.get("block").source == "python"
        assert "McpBridge 5 tools" in repr(bridge)


async def test_deny_is_refused_before_the_server_sees_it() -> None:
    records: list[dict[str, Any]] = []
    config = parse_mcp_config({"mcpServers": {"a": fixture_server(approval={"grow": "deny"})}}, {})
    async with McpBridge(config, audit=records.append) as bridge:
        grow = next(t for t in bridge.tools if t.name == "grow")
        with pytest.raises(ToolDenied):
            await grow.invoke({"mb": 1})
        echo = next(t for t in bridge.tools if t.name == "echo")
        await echo.invoke({"text": "hi"})
    assert [r["outcome"] for r in records] == ["denied", "ok"]
    assert records[1]["duration_ms"] >= 0


async def test_call_timeout_is_a_tool_timeout(tmp_path: Path) -> None:
    bridge = _bridge(a=fixture_server(timeout={"call": 0.5}))
    async with bridge:
        block = next(t for t in bridge.tools if t.name == "block")
        assert block.timeout == 0.5
        with pytest.raises(ToolTimeoutError, match=r"did not answer within 0\.5 s"):
            async with asyncio.timeout(10):
                await block.invoke({"marker": str(tmp_path / "m")})
        # The server is still fine for other calls.
        echo = next(t for t in bridge.tools if t.name == "echo")
        assert await echo.invoke({"text": "ok"}) == "ok"


async def test_a_frozen_child_fails_its_ping_and_is_replaced() -> None:
    bridge = _bridge(McpSettings(health_interval_ms=500), a=fixture_server())
    async with bridge:
        supervisor = bridge.supervisors["a"]
        frozen = supervisor.pid
        assert frozen is not None
        os.kill(frozen, signal.SIGSTOP)
        await wait_until(lambda: supervisor.restarts == 1, "the frozen child to be replaced")
        await asyncio.wait_for(supervisor.wait_ready(), 30)
        assert "health ping failed" in (supervisor.last_error or "")
        assert supervisor.pid != frozen
        echo = next(t for t in bridge.tools if t.name == "echo")
        assert await echo.invoke({"text": "thawed"}) == "thawed"


async def test_a_protocol_error_is_a_tool_error_and_the_server_lives_on() -> None:
    async with _bridge(a=fixture_server()) as bridge:
        supervisor = bridge.supervisors["a"]
        with pytest.raises(ToolExecutionError, match="rejected the call: Unknown tool: gone"):
            await supervisor.call("gone", {})
        assert supervisor.state == "ready"
        assert supervisor.restarts == 0


async def test_a_tool_with_an_invalid_schema_is_left_out() -> None:
    async with _bridge(a=fixture_server("broken-schema")) as bridge:
        assert sorted(t.name for t in bridge.tools) == ["block", "echo", "grow"]
        last_error = bridge.stats()[0]["last_error"]
        assert "tool 'broken' left out: invalid schema" in last_error


def test_package_surface() -> None:
    assert set(elaria.mcp.__all__) == {
        "Firewall",
        "McpBridge",
        "McpConfig",
        "build_server",
        "load_mcp_config",
        "parse_mcp_config",
    }
    assert elaria.mcp.McpBridge is McpBridge
    with pytest.raises(AttributeError):
        _ = elaria.mcp.nothing_here
