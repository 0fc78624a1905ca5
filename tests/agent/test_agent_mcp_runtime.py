"""The Runtime with ``mcp.config`` set: an MCP server's tools join the one registry and are
called through the guard by the loop (the server: ``python -m python_tools`` over stdio)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from elaria.agent import events as ev
from elaria.config import Settings
from elaria.embedded import ScriptedEngine, ToolCall, reply, tool_calls
from elaria.runtime import Runtime


async def test_mcp_tools_are_called_through_the_guard(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "hello.txt").write_text("hello from the MCP side\n")
    config = tmp_path / "mcp.json"
    config.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "py": {
                        "command": sys.executable,
                        "args": ["-m", "python_tools", "--workspace", str(workspace)],
                        # Tag the path argument: the guard checks it before the call leaves.
                        "validate": {"read_file": {"path": "path"}},
                    }
                }
            }
        )
    )
    settings = Settings.model_validate(
        {"agent": {"workspace": str(workspace)}, "mcp": {"config": str(config)}}
    )
    engine = ScriptedEngine()
    engine.script(
        tool_calls(
            ToolCall("read_file", {"path": "hello.txt"}),
            ToolCall("read_file", {"path": "../../etc/passwd"}),
        ),
        reply("It says hello."),
    )
    events: list[ev.AgentEvent] = []
    async with Runtime(settings, engine=engine, builtin_tools=False) as rt:
        tool = rt.registry.get("read_file")
        assert tool.source == "mcp:py"
        result = await rt.run("Read hello.txt", on_event=events.append)
        assert len(rt.stats()["mcp"]) == 1
    assert result.answer == "It says hello."
    contents = [str(r["content"]) for r in engine.requests[1].messages[-1]["content"]]
    assert "hello from the MCP side" in contents[0]
    assert contents[1].startswith("Error:")
    assert "root:" not in contents[1]
    denied = [e for e in events if isinstance(e, ev.ToolCallDenied)]
    assert [d.by for d in denied] == ["validator"]
