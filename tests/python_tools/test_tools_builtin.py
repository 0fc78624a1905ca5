"""builtin_tools: the set of tools, their schemas, settings, and the guard tags."""

from __future__ import annotations

from pathlib import Path

import pytest

from elaria.agent.tools import ToolRegistry
from elaria.config import Settings
from elaria.errors import ConfigError, SecurityViolation, ToolArgumentsError
from python_tools import builtin_tools

FILE_TOOLS = ["list_dir", "read_file", "write_file", "search_text", "file_info"]
SQL_TOOLS = ["list_tables", "describe_table", "sql_query"]
NOTE_TOOLS = ["add_note", "find_notes", "update_note", "delete_note"]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "notes.md").write_text("hello")
    return ws


def test_the_tool_set(workspace: Path) -> None:
    names = [t.name for t in builtin_tools(workspace)]
    assert names == FILE_TOOLS + SQL_TOOLS + NOTE_TOOLS
    with_commands = [t.name for t in builtin_tools(workspace, allowed_commands=["ls"])]
    assert with_commands[-1] == "run_command"
    ToolRegistry(builtin_tools(workspace, allowed_commands=["ls"]))  # no clashes


def test_schemas_come_from_hints_and_docstrings(workspace: Path) -> None:
    tools = {t.name: t for t in builtin_tools(workspace, allowed_commands=["ls"])}
    read = tools["read_file"].parameters
    assert read["required"] == ["path"]
    assert read["properties"]["start_line"] == {
        "default": 1,
        "description": "First line to return, counting from 1.",
        "type": "integer",
    }
    assert read["additionalProperties"] is False
    note = tools["add_note"].parameters
    assert note["required"] == ["title"]
    assert note["properties"]["title"] == {"description": "A short title.", "type": "string"}
    assert "title" in tools["update_note"].parameters["properties"]
    assert (
        tools["list_dir"].description == "List the files and directories in a workspace directory."
    )
    for tool in tools.values():
        assert tool.description
        for spec in tool.parameters["properties"].values():
            assert spec.get("description"), tool.name


def test_arguments_are_tagged_for_the_guard(workspace: Path) -> None:
    tools = {t.name: t for t in builtin_tools(workspace, allowed_commands=["ls"])}
    for name in FILE_TOOLS:
        assert tools[name].arg_kinds == {"path": "path"}
    assert tools["sql_query"].arg_kinds == {"sql": "sql"}
    assert tools["run_command"].arg_kinds == {"args": "shell"}
    assert tools["run_command"].timeout is not None


async def test_tools_run_through_their_handlers(workspace: Path) -> None:
    tools = {t.name: t for t in builtin_tools(workspace)}
    listing = await tools["list_dir"].invoke({})
    assert [e["name"] for e in listing["entries"]] == ["notes.md"]
    note = await tools["add_note"].invoke({"title": "t", "body": "b"})
    assert note["id"] == 1
    assert (workspace / "notes.db").is_file()
    rows = await tools["sql_query"].invoke({"sql": "SELECT title FROM notes", "params": []})
    assert rows["rows"] == [{"title": "t"}]
    with pytest.raises(SecurityViolation):
        await tools["read_file"].invoke({"path": "../secret"})
    with pytest.raises(ToolArgumentsError):
        await tools["read_file"].invoke({"path": "notes.md", "bogus": 1})


def test_settings_supply_commands_and_extra_roots(workspace: Path, tmp_path: Path) -> None:
    extra = tmp_path / "shared"
    extra.mkdir()
    (extra / "data.csv").write_text("a,b\n")
    settings = Settings.model_validate(
        {"agent": {"allowed_commands": ["cat"]}, "security": {"allowed_roots": [str(extra)]}}
    )
    tools = {t.name: t for t in builtin_tools(workspace, settings=settings)}
    assert "run_command" in tools
    read = tools["read_file"].handler
    assert read is not None
    explicit = {t.name for t in builtin_tools(workspace, settings=settings, allowed_commands=[])}
    assert "run_command" not in explicit


async def test_extra_roots_are_readable(workspace: Path, tmp_path: Path) -> None:
    extra = tmp_path / "shared"
    extra.mkdir()
    (extra / "data.csv").write_text("a,b\n")
    settings = Settings.model_validate({"security": {"allowed_roots": [str(extra)]}})
    tools = {t.name: t for t in builtin_tools(workspace, settings=settings)}
    result = await tools["read_file"].invoke({"path": str(extra / "data.csv")})
    assert result["content"] == "a,b\n"


async def test_settings_supply_command_limits(workspace: Path) -> None:
    settings = Settings.model_validate(
        {
            "agent": {"allowed_commands": ["cat"]},
            "security": {"command_cpu_seconds": 3, "command_memory_mb": 256},
        }
    )
    tools = {t.name: t for t in builtin_tools(workspace, settings=settings)}
    result = await tools["run_command"].invoke({"program": "cat", "args": ["/proc/self/limits"]})
    rows = {line[:26].strip(): line[26:].split() for line in result["stdout"].splitlines()[1:]}
    assert rows["Max cpu time"][:2] == ["3", "3"]
    assert rows["Max address space"][:2] == [str(256 * 1024 * 1024)] * 2


def test_a_configured_database(workspace: Path, tmp_path: Path) -> None:
    db = tmp_path / "elsewhere.db"
    tools = {t.name: t for t in builtin_tools(workspace, database=db)}
    assert tools["list_tables"].handler is not None
    assert not db.exists()


def test_a_missing_workspace_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an existing directory"):
        builtin_tools(tmp_path / "missing")


def test_public_surface() -> None:
    import python_tools

    assert python_tools.__all__ == [
        "DEFAULT_DATABASE_NAME",
        "DEFAULT_MAX_READ_BYTES",
        "CommandLimits",
        "builtin_tools",
    ]
