"""The built-in tools end to end through the agent: Runtime, unmodified SDK, embedded server.

The scripted engine plays the model; each test checks what the tools did on disk or in SQLite and
what the model was shown as tool results (including the refusals it must be able to read).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from elaria.config import Settings
from elaria.embedded import ScriptedEngine, ToolCall, reply, tool_call, tool_calls
from elaria.runtime import Runtime

INJECTION = "'; DROP TABLE notes; --"


def _settings(workspace: Path, **agent: Any) -> Settings:
    return Settings.model_validate(
        {
            "agent": {"workspace": str(workspace), **agent},
            "reconnect": {"initial_delay_ms": 100, "max_delay_ms": 1_000, "stable_after_ms": 0},
            "logging": {"log_dir": str(workspace.parent / "logs"), "console": False},
        }
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "notes.md").write_text("# Notes\ngarden plans\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET")
    return ws


@pytest.fixture
async def agent(workspace: Path) -> AsyncIterator[tuple[Runtime, ScriptedEngine]]:
    engine = ScriptedEngine()
    async with Runtime(_settings(workspace, allowed_commands=["cat"]), engine=engine) as rt:
        yield rt, engine


def _results(engine: ScriptedEngine, request: int) -> list[str]:
    """The tool results the model saw at the start of round ``request``."""
    return [r["content"] for r in engine.requests[request].messages[-1]["content"]]


async def test_file_tools_through_the_agent(
    agent: tuple[Runtime, ScriptedEngine], workspace: Path
) -> None:
    rt, engine = agent
    engine.script(
        tool_call("write_file", {"path": "plan.md", "content": "tomatoes\nbasil\n"}),
        tool_calls(
            ToolCall("read_file", {"path": "plan.md", "start_line": 2}),
            ToolCall("list_dir", {"path": "."}),
            ToolCall("search_text", {"query": "garden"}),
            ToolCall("file_info", {"path": "notes.md"}),
        ),
        reply("done"),
    )
    result = await rt.run("write a plan and read it back")
    assert result.answer == "done"
    assert (workspace / "plan.md").read_text() == "tomatoes\nbasil\n"
    written = json.loads(_results(engine, 1)[0])
    assert written == {"path": "plan.md", "bytes_written": 15, "created": True}
    read, listing, search, info = (json.loads(t) for t in _results(engine, 2))
    assert read["content"] == "basil\n"
    assert {e["name"] for e in listing["entries"]} >= {"notes.md", "plan.md"}
    assert search["matches"] == [{"path": "notes.md", "line": 2, "text": "garden plans"}]
    assert info["type"] == "file"
    assert [c["status"] for c in result.tool_calls] == ["ok"] * 5


async def test_path_attacks_come_back_to_the_model_as_refusals(
    agent: tuple[Runtime, ScriptedEngine], workspace: Path
) -> None:
    rt, engine = agent
    engine.script(
        tool_calls(
            ToolCall("read_file", {"path": "../outside/secret.txt"}),
            ToolCall("read_file", {"path": "%2e%2e/outside/secret.txt"}),
            ToolCall("write_file", {"path": "..\\outside\\planted.txt", "content": "x"}),
            ToolCall("list_dir", {"path": {"__proto__": {"polluted": True}}}),
        ),
        reply("I cannot read that"),
    )
    result = await rt.run("read the secret")
    assert result.answer == "I cannot read that"
    seen = _results(engine, 1)
    assert len(seen) == 4
    assert all("SECRET" not in text for text in seen)
    assert "outside the workspace" in seen[0] or "leaves the workspace" in seen[0]
    assert not (workspace.parent / "outside" / "planted.txt").exists()
    assert all(c["status"] != "ok" for c in result.tool_calls)


async def test_notes_and_sql_tools_through_the_agent(
    agent: tuple[Runtime, ScriptedEngine], workspace: Path
) -> None:
    rt, engine = agent
    engine.script(
        tool_call("add_note", {"title": "groceries", "body": INJECTION, "tags": ["home"]}),
        tool_calls(
            ToolCall("find_notes", {"text": "DROP TABLE"}),
            ToolCall("list_tables", {}),
            ToolCall(
                "sql_query",
                {"sql": "SELECT id, body FROM notes WHERE title = ?", "params": ["groceries"]},
            ),
            ToolCall("sql_query", {"sql": "SELECT * FROM notes WHERE title = 'groceries'"}),
            ToolCall("sql_query", {"sql": "ATTACH ? AS x", "params": ["x.db"]}),
        ),
        tool_call("update_note", {"note_id": 1, "title": "shopping"}),
        tool_call("delete_note", {"note_id": 1}),
        reply("notes handled"),
    )
    result = await rt.run("manage my notes")
    assert result.answer == "notes handled"
    added = json.loads(_results(engine, 1)[0])
    assert added["body"] == INJECTION
    found, tables, rows, literal, attach = _results(engine, 2)
    assert json.loads(found)["notes"][0]["body"] == INJECTION
    assert json.loads(tables)["tables"][0]["name"] == "notes"
    assert json.loads(rows)["rows"] == [{"id": 1, "body": INJECTION}]
    assert "parameters" in literal
    assert "ATTACH" in attach
    assert not (workspace / "x.db").exists()
    assert json.loads(_results(engine, 3)[0])["title"] == "shopping"
    assert json.loads(_results(engine, 4)[0]) == {"deleted": 1}


async def test_run_command_through_the_agent(
    agent: tuple[Runtime, ScriptedEngine], workspace: Path
) -> None:
    rt, engine = agent
    engine.script(
        tool_calls(
            ToolCall("run_command", {"program": "cat", "args": ["notes.md"]}),
            ToolCall("run_command", {"program": "cat", "args": ["notes.md; rm -rf /"]}),
            ToolCall("run_command", {"program": "rm", "args": ["notes.md"]}),
        ),
        reply("ran"),
    )
    result = await rt.run("show the notes")
    assert result.answer == "ran"
    ok, metachar, not_allowed = _results(engine, 1)
    assert json.loads(ok)["stdout"] == "# Notes\ngarden plans\n"
    assert "shell" in metachar
    assert "not allowed" in not_allowed
    assert (workspace / "notes.md").exists()
