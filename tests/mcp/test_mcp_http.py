"""The bridge over streamable HTTP, against ``elaria mcp serve``: calls, refusals, reconnect."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from elaria.config import McpSettings
from elaria.errors import ToolExecutionError
from elaria.mcp.client import McpBridge
from elaria.mcp.config import parse_mcp_config
from elaria.mcp.testing import elaria_command, wait_until

#: Bound on the server announcing its URL (it imports the SDK, uvicorn, starlette).
START_S = 60.0


@asynccontextmanager
async def mcp_serve(workspace: Path, port: int = 0) -> AsyncIterator[str]:
    """``elaria mcp serve --transport http`` in a child; yields its URL; SIGKILLs it after."""
    command = elaria_command(
        "mcp", "serve", "--transport", "http", "--port", str(port), "--workspace", str(workspace)
    )
    proc = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        url = None
        async with asyncio.timeout(START_S):
            while line := (await proc.stderr.readline()).decode():
                if match := re.search(r"serving on (http://\S+)", line):
                    url = match.group(1)
                    break
        if url is None:
            pytest.fail("elaria mcp serve exited without serving")
        yield url
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()


async def test_bridge_over_http_calls_refuses_and_reconnects(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    settings = McpSettings(health_interval_ms=500)
    async with mcp_serve(workspace) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        config = parse_mcp_config({"mcpServers": {"elaria": {"url": url}}}, {})
        bridge = McpBridge(config, settings, restart_initial_delay_s=0.05)
        tools = {t.name: t for t in await bridge.start()}
    try:
        assert {"read_file", "write_file", "runtime_health"} <= set(tools)
        assert bridge.stats()[0]["transport"] == "http"
        assert bridge.stats()[0]["pid"] is None
        # The server is gone now: the health ping notices, and calls fail fast meanwhile.
        supervisor = bridge.supervisors["elaria"]
        await wait_until(lambda: supervisor.state != "ready", "the lost server to be noticed")
        with pytest.raises(ToolExecutionError, match="'elaria'"):
            async with asyncio.timeout(2):
                await tools["runtime_health"].invoke({})
        async with mcp_serve(workspace, port):
            await asyncio.wait_for(supervisor.wait_ready(), 60)
            assert supervisor.restarts >= 1
            await tools["write_file"].invoke({"path": "a.txt", "content": "over http"})
            assert "over http" in await tools["read_file"].invoke({"path": "a.txt"})
            # The server's own validator refuses; the refusal reaches us as a tool error.
            with pytest.raises(ToolExecutionError, match="outside the workspace"):
                await tools["read_file"].invoke({"path": "../../../../etc/passwd"})
    finally:
        await bridge.aclose()
