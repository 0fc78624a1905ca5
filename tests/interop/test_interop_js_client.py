"""The official TypeScript SDK client against Elaria's MCP servers (stdio and streamable HTTP)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from elaria.mcp.testing import elaria_command, run_node_json

pytestmark = pytest.mark.interop

#: Bound on the HTTP server announcing its URL (it imports the SDK, uvicorn, starlette).
SERVER_START_S = 60.0


def _calls() -> list[dict[str, Any]]:
    return [
        {"name": "write_file", "arguments": {"path": "hello.txt", "content": "hi from node"}},
        {"name": "read_file", "arguments": {"path": "hello.txt"}},
        {"name": "read_file", "arguments": {"path": "../../../../etc/passwd"}},
        {"name": "write_file", "arguments": {"path": "x.json", "content": "{}", "__proto__": {}}},
    ]


def _check_results(report: dict[str, Any], workspace: Path) -> None:
    assert {"read_file", "write_file", "list_dir", "sql_query"} <= set(report["tools"])
    written, read, escape, polluting = report["results"]
    assert written["isError"] is False
    assert (workspace / "hello.txt").read_text() == "hi from node"
    assert read["isError"] is False
    assert "hi from node" in read["text"]
    assert escape["isError"] is True
    assert "outside the workspace" in escape["text"] or "escape" in escape["text"]
    assert "root:" not in escape["text"]
    assert polluting["isError"] is True
    assert "__proto__" in polluting["text"]
    assert not (workspace / "x.json").exists()


async def test_js_client_over_stdio_to_python_tools(interop_dir: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    report = await run_node_json(
        interop_dir / "client.mjs",
        {
            "transport": "stdio",
            "command": sys.executable,
            "args": ["-m", "python_tools", "--workspace", str(workspace)],
            "cwd": str(tmp_path),
            "calls": _calls(),
        },
        cwd=interop_dir,
    )
    assert report["server"]["name"] == "elaria"
    assert "runtime_health" not in report["tools"]
    _check_results(report, workspace)


async def test_js_client_over_http_to_elaria_mcp_serve(interop_dir: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    command = elaria_command(
        "mcp", "serve", "--transport", "http", "--port", "0", "--workspace", str(workspace)
    )
    server = await asyncio.create_subprocess_exec(
        *command, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL, cwd=tmp_path
    )
    try:
        url = await _announced_url(server)
        assert url.startswith("http://127.0.0.1:")
        calls = [*_calls(), {"name": "runtime_health", "arguments": {}}]
        report = await run_node_json(
            interop_dir / "client.mjs",
            {"transport": "http", "url": url, "calls": calls},
            cwd=interop_dir,
        )
        health = report["results"].pop()
        _check_results(report, workspace)
        assert health["isError"] is False
        assert json.loads(health["text"])["status"] in ("ok", "degraded", "unhealthy")
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            await server.wait()


async def _announced_url(server: asyncio.subprocess.Process) -> str:
    assert server.stderr is not None
    seen: list[str] = []
    async with asyncio.timeout(SERVER_START_S):
        while line := (await server.stderr.readline()).decode():
            seen.append(line)
            if match := re.search(r"serving on (http://\S+)", line):
                return match.group(1)
    pytest.fail(f"elaria mcp serve exited without a URL: {''.join(seen)[-2000:]}")
