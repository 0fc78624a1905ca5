"""Helpers for testing MCP setups with real processes (used by Elaria's own tests).

* :func:`fixture_server` — an ``mcp.json`` server entry for :mod:`elaria.mcp.fixture_server`;
* :func:`wait_until` — wait for a condition with a bound (no fixed sleeps in tests);
* :func:`process_running` / :func:`group_members` — what psutil says is still alive.

Call from the event loop running the test.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

import psutil

__all__ = ["fixture_server", "group_members", "process_running", "wait_until"]

#: How often a condition is re-checked while waiting.
POLL_S = 0.02


def fixture_server(mode: str = "serve", **extra: Any) -> dict[str, Any]:
    """An ``mcpServers`` entry starting the fixture server in ``mode`` with this interpreter."""
    return {"command": sys.executable, "args": ["-m", "elaria.mcp.fixture_server", mode], **extra}


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Return once ``predicate()`` holds; ``TimeoutError`` naming ``what`` after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}") from None


def process_running(pid: int) -> bool:
    """Alive and not a zombie (a zombie runs no code and holds no memory)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def group_members(pgid: int) -> list[int]:
    """Running processes whose process group is ``pgid``."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and process_running(proc.pid):
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members
