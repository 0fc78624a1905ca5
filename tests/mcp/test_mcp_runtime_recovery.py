"""The Runtime with an MCP server that is down when it starts: the loop calls its tool once up."""

from __future__ import annotations

import json
from pathlib import Path

from elaria.agent.approval import Answer, ApprovalRequest
from elaria.config import Settings
from elaria.embedded import ScriptedEngine, ToolCall, reply, tool_calls
from elaria.mcp.testing import fixture_server, wait_until
from elaria.runtime import Runtime


async def test_a_server_down_at_start_joins_the_runtime_registry_once_up(tmp_path: Path) -> None:
    may_start = tmp_path / "may-start"
    config = tmp_path / "mcp.json"
    late = fixture_server(env={"FIXTURE_FAIL_UNTIL": str(may_start)})
    config.write_text(json.dumps({"mcpServers": {"late": late}}))
    settings = Settings.model_validate(
        {"agent": {"workspace": str(tmp_path)}, "mcp": {"config": str(config)}}
    )
    engine = ScriptedEngine()
    engine.script(tool_calls(ToolCall("echo", {"text": "back again"})), reply("Done."))
    async with Runtime(settings, engine=engine, builtin_tools=False) as rt:
        assert rt.registry.names() == ["late.unavailable"]
        may_start.write_text("go")
        await wait_until(lambda: "echo" in rt.registry, "the late server's tools in the runtime")
        assert "late.unavailable" not in rt.registry
        result = await rt.run("Echo something")
        [server] = rt.stats()["mcp"]
        assert server["state"] == "ready"
        assert server["attempts"] >= 2
    assert result.answer == "Done."
    contents = [str(r["content"]) for r in engine.requests[1].messages[-1]["content"]]
    assert contents == ["back again"]


async def test_an_ask_tool_that_appears_after_start_is_asked_about(tmp_path: Path) -> None:
    may_start = tmp_path / "may-start"
    config = tmp_path / "mcp.json"
    late = fixture_server(
        env={"FIXTURE_FAIL_UNTIL": str(may_start)}, approval={"echo": "ask", "shout": "deny"}
    )
    config.write_text(json.dumps({"mcpServers": {"late": late}}))
    settings = Settings.model_validate(
        {"agent": {"workspace": str(tmp_path)}, "mcp": {"config": str(config)}}
    )
    asked: list[tuple[str, dict[str, object]]] = []

    def approve(request: ApprovalRequest) -> Answer:
        asked.append((request.tool, dict(request.arguments)))
        return "yes" if request.arguments.get("text") == "allowed" else "no"

    engine = ScriptedEngine()
    engine.script(
        tool_calls(ToolCall("echo", {"text": "allowed"})),
        tool_calls(ToolCall("echo", {"text": "refused"})),
        reply("Done."),
    )
    async with Runtime(settings, engine=engine, builtin_tools=False, approve=approve) as rt:
        may_start.write_text("go")
        await wait_until(lambda: "echo" in rt.registry, "the late server's tools in the runtime")
        result = await rt.run("Echo twice")
    assert result.answer == "Done."
    # Both calls were put to the approver: the tool's "ask" came with it when it appeared.
    assert asked == [("echo", {"text": "allowed"}), ("echo", {"text": "refused"})]
    first, second = (str(r["content"]) for r in _last_tool_results(engine, 2))
    assert first == "allowed"
    assert "refused by the operator" in second


def _last_tool_results(engine: ScriptedEngine, count: int) -> list[dict[str, object]]:
    """The last tool result the model saw in each of the first ``count`` follow-up rounds."""
    return [engine.requests[i].messages[-1]["content"][-1] for i in range(1, count + 1)]
