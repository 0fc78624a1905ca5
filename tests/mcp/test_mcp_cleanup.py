"""No orphans: SIGTERM to an Elaria process running a bridge leaves none of its MCP children."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

import psutil
import pytest

from elaria.mcp.testing import elaria_command, fixture_server, process_running, wait_until

#: Bound on the proxy starting its children and answering (two Python children import the SDK).
START_S = 60.0


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(
        json.dumps({"mcpServers": {"a": fixture_server(), "b": fixture_server("spawn")}})
    )
    return path


async def _ready_over_stdio(proc: asyncio.subprocess.Process) -> None:
    """The proxy answers ``initialize`` only once its bridge has started every child."""
    assert proc.stdin is not None
    assert proc.stdout is not None
    request = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "cleanup-test", "version": "1"},
        },
    }
    proc.stdin.write(json.dumps(request).encode() + b"\n")
    await proc.stdin.drain()
    async with asyncio.timeout(START_S):
        answer = json.loads(await proc.stdout.readline())
    assert answer["id"] == 1
    assert "result" in answer


async def _ready_over_http(proc: asyncio.subprocess.Process) -> None:
    assert proc.stderr is not None
    async with asyncio.timeout(START_S):
        while line := (await proc.stderr.readline()).decode():
            if re.search(r"serving on http://", line):
                return
    pytest.fail("the proxy exited before serving")


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_sigterm_to_elaria_leaves_no_mcp_child(tmp_path: Path, transport: str) -> None:
    command = elaria_command(
        "mcp", "proxy", "--config", str(_config(tmp_path)), "--transport", transport
    )
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if transport == "http" else asyncio.subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        if transport == "stdio":
            await _ready_over_stdio(proc)
        else:
            await _ready_over_http(proc)
        children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        # Two servers, and the helper that "b" leaves behind unless its group is killed.
        assert len(children) >= 3, "the proxy should run both MCP servers and b's helper"
        assert all(process_running(pid) for pid in children)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await proc.wait()
        await wait_until(
            lambda: not any(process_running(pid) for pid in children),
            "the MCP children of the terminated proxy to die",
            5,
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
