"""Elaria's built-in tools: files in a workspace, SQLite (a read-only query tool and a notes
store), and an allowlisted ``run_command``.

Each tool is a typed, documented method whose hints and Google-style docstring become the tool's
schema and description (:meth:`elaria.agent.tools.Tool.from_function`); ``arg_kinds`` tags the
arguments the guard pipeline validates again before dispatch (``path``, ``sql``, ``shell``).
Every tool also applies the validators itself (a :class:`~elaria.security.PathGuard` over the
workspace, :class:`~elaria.security.SafeSQLite`, the shell checks), so it is safe however it is
called. Tools return JSON-serialisable values; model mistakes raise
:class:`~elaria.errors.ToolExecutionError` (or :class:`~elaria.errors.SecurityViolation`) whose
message says what to fix.

Entry point, used by the agent runtime and by ``python -m python_tools`` (MCP)::

    tools = builtin_tools(workspace, database=None, allowed_commands=None, settings=None)

* ``workspace`` — an existing directory; the file tools stay inside it (plus
  ``security.allowed_roots`` from ``settings``), and ``run_command`` runs there.
* ``database`` — the SQLite file of the SQL and notes tools; default ``<workspace>/notes.db``,
  created by the first ``add_note``.
* ``allowed_commands`` — programs ``run_command`` may start; default
  ``settings.agent.allowed_commands``, else none. With none, ``run_command`` is not offered.
* ``max_read_bytes`` — what one ``read_file`` call returns at most.
* ``command_limits`` — CPU, memory, output and time limits of ``run_command``; default from
  ``settings.security.command_*``, else :class:`~python_tools.commands.CommandLimits`.

Tools are synchronous and run in worker threads; they may be called concurrently.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from elaria.agent.tools import Tool
from elaria.errors import ConfigError
from elaria.security import PathGuard
from python_tools.commands import CommandLimits, CommandTools
from python_tools.database import DatabaseTools
from python_tools.files import DEFAULT_MAX_READ_BYTES, FileTools
from python_tools.notes import NotesStore

if TYPE_CHECKING:
    from elaria.config import Settings

__all__ = [
    "DEFAULT_DATABASE_NAME",
    "DEFAULT_MAX_READ_BYTES",
    "CommandLimits",
    "builtin_tools",
]

#: The notes/SQL database inside the workspace when none is configured.
DEFAULT_DATABASE_NAME = "notes.db"
#: Grace on top of run_command's own wall timeout before the agent gives up waiting.
COMMAND_TIMEOUT_GRACE_S = 10.0


def builtin_tools(
    workspace: str | os.PathLike[str],
    *,
    database: str | os.PathLike[str] | None = None,
    allowed_commands: Sequence[str] | None = None,
    max_read_bytes: int = DEFAULT_MAX_READ_BYTES,
    command_limits: CommandLimits | None = None,
    settings: Settings | None = None,
) -> list[Tool]:
    """The built-in tools bound to ``workspace`` (see the module docstring)."""
    root = Path(workspace)
    if not root.is_dir():
        raise ConfigError(
            f"the workspace {root} is not an existing directory",
            where="agent.workspace",
            hint="Create the directory or point agent.workspace at one.",
        )
    extra_roots: list[Path] = []
    if settings is not None:
        extra_roots = [Path(r) for r in settings.security.allowed_roots if Path(r).is_dir()]
        if allowed_commands is None:
            allowed_commands = settings.agent.allowed_commands
        if command_limits is None:
            command_limits = _limits_from(settings)
    guard = PathGuard([root, *extra_roots], base=root)
    files = FileTools(guard, max_read_bytes=max_read_bytes)
    db_path = Path(database) if database is not None else root / DEFAULT_DATABASE_NAME
    sql = DatabaseTools(db_path)
    notes = NotesStore(db_path)
    tools = [
        Tool.from_function(files.list_dir, arg_kinds={"path": "path"}),
        Tool.from_function(files.read_file, arg_kinds={"path": "path"}),
        Tool.from_function(files.write_file, arg_kinds={"path": "path"}),
        Tool.from_function(files.search_text, arg_kinds={"path": "path"}),
        Tool.from_function(files.file_info, arg_kinds={"path": "path"}),
        Tool.from_function(sql.list_tables),
        Tool.from_function(sql.describe_table),
        Tool.from_function(sql.sql_query, arg_kinds={"sql": "sql"}),
        Tool.from_function(notes.add_note),
        Tool.from_function(notes.find_notes),
        Tool.from_function(notes.update_note),
        Tool.from_function(notes.delete_note),
    ]
    if allowed_commands:
        commands = CommandTools(root, allowed_commands, limits=command_limits)
        tools.append(
            Tool.from_function(
                commands.run_command,
                arg_kinds={"args": "shell"},
                timeout=commands.limits.max_timeout_s + COMMAND_TIMEOUT_GRACE_S,
            )
        )
    return tools


def _limits_from(settings: Settings) -> CommandLimits:
    security = settings.security
    default = CommandLimits()
    return CommandLimits(
        cpu_seconds=security.command_cpu_seconds,
        memory_bytes=security.command_memory_mb * 1024 * 1024,
        output_bytes=security.command_output_bytes,
        default_timeout_s=security.command_timeout_s,
        max_timeout_s=max(default.max_timeout_s, security.command_timeout_s),
    )
