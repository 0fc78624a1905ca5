"""Helpers for testing MCP setups with real processes (used by Elaria's own tests).

* :func:`fixture_server` — an ``mcp.json`` server entry for :mod:`elaria.mcp.fixture_server`;
* :func:`wait_until` — wait for a condition with a bound (no fixed sleeps in tests);
* :func:`process_running` / :func:`group_members` — what psutil says is still alive;
* Node peers: :func:`node_packages_problem`, :func:`npx_server`, :func:`run_node_json`.

Call from the event loop running the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "elaria_command",
    "fixture_server",
    "group_members",
    "node_packages_problem",
    "npx_server",
    "process_running",
    "run_node_json",
    "wait_until",
]

_RUN_ELARIA = "import sys; from elaria.cli import main; sys.exit(main())"
#: How often a condition is re-checked while waiting.
POLL_S = 0.02


def fixture_server(mode: str = "serve", **extra: Any) -> dict[str, Any]:
    """An ``mcpServers`` entry starting the fixture server in ``mode`` with this interpreter."""
    # By path, not ``-m``: importing the elaria package would dominate the start time.
    script = str(Path(__file__).with_name("fixture_server.py"))
    return {"command": sys.executable, "args": [script, mode], **extra}


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


# ------------------------------------------------------------------ Node peers


def node_packages_problem(folder: Path, packages: Sequence[str]) -> str | None:
    """Why the Node peers in ``folder/node_modules`` cannot run, or ``None`` when they can."""
    for tool in ("node", "npx"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH: install Node.js 20 or later"
    missing = [p for p in packages if not (folder / "node_modules" / p / "package.json").is_file()]
    if missing:
        return (
            f"Node packages missing from {folder / 'node_modules'}: {', '.join(missing)}. "
            f"Run `npm ci --prefix {folder}` first (the README's test command runs "
            "`npm ci --prefix tests/interop`)."
        )
    return None


def npx_server(folder: Path, package_bin: str, *args: str, **extra: Any) -> dict[str, Any]:
    """An ``mcpServers`` entry starting a bin installed in ``folder`` through npx, offline."""
    return {
        "command": "npx",
        "args": ["--no-install", package_bin, *args],
        "cwd": str(folder),
        **extra,
    }


async def run_node_json(
    script: Path, argument: Any, *, cwd: Path, timeout: float = 60.0
) -> dict[str, Any]:
    """Run ``node script '<argument as JSON>'``; parse its last stdout line as JSON.

    Raises ``RuntimeError`` with the script's stderr when it fails, ``TimeoutError`` (after
    killing it) when it runs past ``timeout``.
    """
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        json.dumps(argument),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise TimeoutError(f"{script.name} did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} failed ({proc.returncode}): {err.decode()[-3000:]}")
    lines = out.decode().strip().splitlines()
    if not lines:
        raise RuntimeError(f"{script.name} printed nothing; stderr: {err.decode()[-3000:]}")
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def elaria_command(*args: str) -> list[str]:
    """``elaria ARGS`` run by this interpreter (no reliance on the console script on PATH)."""
    return [
        sys.executable,
        "-c",
        "import sys; from elaria.cli import main; sys.exit(main())",
        *args,
    ]
