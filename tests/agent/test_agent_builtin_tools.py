"""Each family of built-in tools end to end through the agent loop (scripted model, real tools)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from elaria.agent import events as ev
from elaria.agent.workspace import SAMPLE_FILES
from elaria.config import Settings
from elaria.embedded import ScriptedEngine, ToolCall, reply, tool_call, tool_calls
from elaria.runtime import Runtime


def settings(tmp_path: Path, **agent: Any) -> Settings:
    return Settings.model_validate({"agent": {"workspace": str(tmp_path / "ws"), **agent}})


def results(engine: ScriptedEngine, request: int) -> list[str]:
    """The tool results the model received in its ``request``-th prediction."""
    return [str(r["content"]) for r in engine.requests[request].messages[-1]["content"]]


async def test_file_tools_list_and_read_the_sample_workspace(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    engine.script(
        tool_call("list_dir", {"path": "."}),
        tool_call("read_file", {"path": "notes.md"}),
        tool_call("read_file", {"path": "../outside.txt"}),
        reply("The notes are about a garden."),
    )
    (tmp_path / "outside.txt").write_text("secret")
    events: list[ev.AgentEvent] = []
    async with Runtime(settings(tmp_path), engine=engine) as rt:
        result = await rt.run("What is in notes.md?", on_event=events.append)
    assert result.answer == "The notes are about a garden."
    listing = results(engine, 1)[0]
    for name in ("notes.md", "todo.md", "data"):
        assert name in listing
    assert "planning a small garden" in results(engine, 2)[0]
    refused = results(engine, 3)[0]
    assert refused.startswith("Error:")
    assert "secret" not in refused
    denied = [e for e in events if isinstance(e, ev.ToolCallDenied)]
    assert [(d.tool, d.by) for d in denied] == [("read_file", "validator")]
    assert [c["status"] for c in result.tool_calls] == ["ok", "ok", "denied"]


async def test_notes_and_sql_tools_store_find_and_refuse_literals(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    hostile = "'; DROP TABLE notes; --"
    engine.script(
        tool_call("add_note", {"title": "Seeds", "body": hostile, "tags": ["garden"]}),
        tool_call("find_notes", {"text": "DROP TABLE"}),
        tool_calls(
            ToolCall("sql_query", {"sql": "SELECT title FROM notes WHERE title = 'Seeds'"}),
            ToolCall(
                "sql_query", {"sql": "SELECT title FROM notes WHERE title = ?", "params": ["Seeds"]}
            ),
        ),
        reply("Saved and found."),
    )
    async with Runtime(settings(tmp_path), engine=engine) as rt:
        result = await rt.run("Save a note about seeds")
    assert result.answer == "Saved and found."
    found = json.loads(results(engine, 2)[0])
    assert json.dumps(found).count("Seeds") >= 1
    assert hostile in json.dumps(found)
    literal, bound = results(engine, 3)
    assert literal.startswith("Error:")
    assert "param" in literal.lower()
    assert "Seeds" in bound
    assert [c["status"] for c in result.tool_calls] == ["ok", "ok", "denied", "ok"]


@pytest.mark.skipif(shutil.which("echo") is None, reason="needs the echo program")
async def test_run_command_runs_an_allowed_program_and_refuses_others(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    engine.script(
        tool_calls(
            ToolCall("run_command", {"program": "echo", "args": ["hello", "garden"]}),
            ToolCall("run_command", {"program": "echo", "args": ["x; rm -rf /"]}),
            ToolCall("run_command", {"program": "rm", "args": ["notes.md"]}),
        ),
        reply("Done."),
    )
    async with Runtime(settings(tmp_path, allowed_commands=["echo"]), engine=engine) as rt:
        assert "run_command" in rt.registry
        result = await rt.run("Say hello")
    ok, injected, forbidden = results(engine, 1)
    assert "hello garden" in ok
    assert injected.startswith("Error:")
    assert forbidden.startswith("Error:")
    assert (tmp_path / "ws" / "notes.md").read_text() == SAMPLE_FILES["notes.md"]
    assert result.tool_calls[0]["status"] == "ok"
    assert {c["status"] for c in result.tool_calls[1:]} <= {"denied", "error"}


async def test_run_command_is_not_offered_without_an_allowlist(tmp_path: Path) -> None:
    async with Runtime(settings(tmp_path), engine=ScriptedEngine()) as rt:
        assert "run_command" not in rt.registry
        assert "read_file" in rt.registry
