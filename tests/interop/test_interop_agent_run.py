"""An agent run (scripted engine, embedded server, real pool) using npx-started Node servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elaria.config import Settings
from elaria.embedded import ScriptedEngine, ToolCall, reply, tool_call, tool_calls
from elaria.embedded.engine import PredictRequest
from elaria.mcp.testing import group_members, npx_server, wait_until
from elaria.runtime import Runtime

pytestmark = pytest.mark.interop


def tool_results(request: PredictRequest) -> list[str]:
    """The tool results the model was shown in this request (after the last user message)."""
    texts: list[str] = []
    for message in request.messages:
        if message.get("role") == "user":
            texts = []
        elif message.get("role") == "tool":
            texts += [str(part.get("content", "")) for part in message.get("content", [])]
    return texts


async def test_agent_run_calls_filesystem_and_everything_tools(
    interop_dir: Path, tmp_path: Path
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "plan.md").write_text("ship the bridge\n")
    config = tmp_path / "mcp.json"
    config.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "files": npx_server(
                        interop_dir,
                        "mcp-server-filesystem",
                        str(notes),
                        validate={"read_text_file": {"path": "path"}},
                        roots=[str(notes)],
                    ),
                    "everything": npx_server(interop_dir, "mcp-server-everything"),
                }
            }
        )
    )
    settings = Settings.model_validate(
        {"agent": {"workspace": str(tmp_path / "ws")}, "mcp": {"config": str(config)}}
    )
    engine = ScriptedEngine()
    engine.script(
        tool_calls(
            ToolCall("read_text_file", {"path": str(notes / "plan.md")}),
            ToolCall("get-sum", {"a": 20, "b": 22}),
        ),
        tool_call("read_text_file", {"path": "/etc/passwd"}),
        reply("The plan is to ship the bridge; 20+22=42; /etc/passwd is off limits."),
    )
    async with Runtime(settings, engine=engine, builtin_tools=False) as rt:
        names = {t.name for t in rt.tools()}
        assert {"read_text_file", "list_directory", "echo", "get-sum"} <= names
        result = await rt.run("What is the plan, and what is 20+22?")
        pids = [s["pid"] for s in rt.stats()["mcp"]]
    assert result.answer.startswith("The plan is to ship the bridge")
    statuses = [(c["tool"], c["status"]) for c in result.tool_calls]
    assert statuses[:2] == [("read_text_file", "ok"), ("get-sum", "ok")]
    assert statuses[2][0] == "read_text_file"
    assert statuses[2][1] != "ok"
    # What the model read back: the file and the sum, then the firewall's refusal.
    second = tool_results(engine.requests[1])
    assert any("ship the bridge" in text for text in second)
    assert any("42" in text for text in second)
    third = tool_results(engine.requests[2])
    assert any("outside" in text for text in third)
    assert not any("root:" in text for text in third)
    await wait_until(
        lambda: all(group_members(p) == [] for p in pids), "the MCP children to die", 5
    )
