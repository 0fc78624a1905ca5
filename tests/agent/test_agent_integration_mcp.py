"""Security settings reach MCP: served built-in tools honour ``agent.allowed_commands``; the
runtime's bridge and guard honour ``security.allowed_remote_hosts``; its health lists the child."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from elaria.agent import events as ev
from elaria.config import Settings
from elaria.embedded import ScriptedEngine, ToolCall, reply, tool_calls
from elaria.mcp.serving import serve_builtin
from elaria.mcp.testing import fixture_server
from elaria.runtime import Runtime

#: Bound on a server becoming ready (a child interpreter on a busy 2-core machine).
READY_S = 30.0


@asynccontextmanager
async def serving_builtin(settings: Settings, workspace: Path) -> AsyncIterator[str]:
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve_builtin(settings, workspace=workspace, transport="http", on_ready=ready.set_result)
    )
    waiters: set[asyncio.Future[Any]] = {task, ready}
    try:
        async with asyncio.timeout(READY_S):
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            pytest.fail("the server stopped before it was ready")
        yield ready.result()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _text(result: Any) -> str:
    return "\n".join(b.text for b in result.content if b.type == "text")


@pytest.mark.parametrize("allowed", [["echo"], []])
async def test_served_tools_honour_the_command_allowlist(
    tmp_path: Path, allowed: list[str]
) -> None:
    workspace = tmp_path / "ws"
    settings = Settings.model_validate(
        {"agent": {"workspace": str(workspace), "allowed_commands": allowed}}
    )
    async with (
        serving_builtin(settings, workspace) as url,
        Client(url, mode="legacy", cache=None) as client,
    ):
        names = {t.name for t in (await client.list_tools()).tools}
        if not allowed:
            assert "run_command" not in names  # nothing allowlisted: no way to run anything
            return
        assert "run_command" in names
        ran = await client.call_tool("run_command", {"program": "echo", "args": ["served"]})
        assert not ran.is_error, _text(ran)
        assert "served" in _text(ran)
        refused = await client.call_tool("run_command", {"program": "ls", "args": []})
        assert refused.is_error


async def test_allowed_remote_hosts_reach_the_mcp_bridge_and_the_guard(tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    # The fixture server's echo takes any text: tag it as a URL so the firewall checks it.
    entry = fixture_server(validate={"echo": {"text": "url"}})
    config.write_text(json.dumps({"mcpServers": {"fx": entry}}))
    settings = Settings.model_validate(
        {
            "agent": {"workspace": str(tmp_path / "ws")},
            "mcp": {"config": str(config)},
            "security": {"allowed_remote_hosts": ["api.example.com"]},
        }
    )
    engine = ScriptedEngine()
    engine.script(
        tool_calls(
            ToolCall("echo", {"text": "https://api.example.com/items"}),
            ToolCall("echo", {"text": "https://elsewhere.example.org/"}),
        ),
        reply("checked"),
    )
    events: list[ev.AgentEvent] = []
    async with Runtime(settings, engine=engine, builtin_tools=False) as rt:
        result = await rt.run("echo both", on_event=events.append)
        snap = await rt.health.snapshot()
    assert result.answer == "checked"
    contents = [str(r["content"]) for r in engine.requests[1].messages[-1]["content"]]
    assert contents[0] == "https://api.example.com/items"  # allowed: it reached the server
    assert contents[1].startswith("Error:")
    assert "allowed_remote_hosts" in contents[1]
    denied = [e for e in events if isinstance(e, ev.ToolCallDenied)]
    assert [d.by for d in denied] == ["validator"]
    assert snap["sections"]["mcp"][0]["server"] == "fx"
    assert snap["section_status"]["mcp"] == "ok"
