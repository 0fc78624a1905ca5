"""The agent's workspace: a small sample created on first run, and the built-in tools for it.

:func:`ensure_sample_workspace` creates the workspace directory when it does not exist and puts
a few sample files in it (``notes.md``, ``todo.md``, ``data/cities.csv``) so that the README's
first command has something to list and read. An existing directory is never touched: the
sample is written only into a directory this function created itself, atomically (files are
written into a temporary sibling that is renamed into place), so an interrupted first run never
leaves a half-made workspace.

:func:`builtin_tools` returns the ``python_tools`` for the workspace (files, notes/SQLite,
``run_command``), each already going through the security validators.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from elaria.agent.tools import Tool
from elaria.config import Settings

__all__ = ["SAMPLE_FILES", "builtin_tools", "ensure_sample_workspace"]

SAMPLE_FILES: dict[str, str] = {
    "notes.md": (
        "# Garden notes\n\n"
        "These notes are about planning a small garden: tomatoes and basil go in the sunny\n"
        "bed, lettuce in the shade, and everything is watered early in the morning.\n"
    ),
    "todo.md": (
        "# To do\n\n- Buy tomato seedlings\n- Fix the watering timer\n- Plant basil next to "
        "the tomatoes\n"
    ),
    "data/cities.csv": "city,country,population\nLyon,France,522969\nPorto,Portugal,231800\n",
}


def ensure_sample_workspace(workspace: Path) -> bool:
    """Create ``workspace`` with the sample files if it does not exist; True if created."""
    workspace = Path(workspace)
    if workspace.exists():
        return False
    workspace.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{workspace.name}.", dir=workspace.parent))
    try:
        for rel, text in SAMPLE_FILES.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        os.rename(staging, workspace)
    except FileExistsError:
        shutil.rmtree(staging, ignore_errors=True)  # another process created it first
        return False
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if workspace.is_dir():
            return False
        raise OSError(f"cannot create the sample workspace {workspace}: {exc.strerror}") from exc
    return True


def builtin_tools(settings: Settings, workspace: Path) -> list[Tool]:
    """The built-in python_tools bound to ``workspace``."""
    # Imported here: python_tools is a sibling package that imports elaria in turn.
    from python_tools import builtin_tools as python_builtin_tools

    return python_builtin_tools(workspace, settings=settings)
