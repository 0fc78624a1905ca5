"""Official Node MCP servers started with npx through the supervisor, called as Elaria tools."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from elaria.config import McpSettings
from elaria.errors import ToolArgumentsError, ToolExecutionError, ToolRefused
from elaria.mcp.client import McpBridge
from elaria.mcp.config import parse_mcp_config
from elaria.mcp.testing import (
    group_members,
    npx_server,
    process_running,
    wait_until,
)

pytestmark = pytest.mark.interop


def _config(interop_dir: Path, files_root: Path) -> dict[str, object]:
    return {
        "mcpServers": {
            "files": npx_server(
                interop_dir,
                "mcp-server-filesystem",
                str(files_root),
                validate={"read_text_file": {"path": "path"}, "write_file": {"path": "path"}},
                roots=[str(files_root)],
                disabled_tools=["read_media_file"],
            ),
            "everything": npx_server(interop_dir, "mcp-server-everything"),
        }
    }


async def test_filesystem_and_everything_tools_through_the_bridge(
    interop_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "notes"
    root.mkdir()
    (root / "todo.txt").write_text("buy milk\n")
    config = parse_mcp_config(_config(interop_dir, root), {})
    async with McpBridge(config, McpSettings()) as bridge:
        tools = {t.name: t for t in bridge.tools}
        assert {"read_text_file", "write_file", "list_directory", "echo", "get-sum"} <= set(tools)
        assert "read_media_file" not in tools  # disabled_tools honoured
        assert tools["read_text_file"].source == "mcp:files"
        assert tools["echo"].source == "mcp:everything"
        assert tools["read_text_file"].arg_kinds == {"path": "path"}

        text = await tools["read_text_file"].invoke({"path": str(root / "todo.txt")})
        assert text.strip() == "buy milk"
        await tools["write_file"].invoke({"path": str(root / "new.txt"), "content": "hello"})
        assert (root / "new.txt").read_text() == "hello"
        listing = await tools["list_directory"].invoke({"path": str(root)})
        assert "[FILE] new.txt" in listing
        assert "[FILE] todo.txt" in listing
        assert "Echo: ping" in await tools["echo"].invoke({"message": "ping"})
        assert "42" in await tools["get-sum"].invoke({"a": 40, "b": 2})

        # The firewall refuses an escape before the Node server sees it.
        with pytest.raises(ToolRefused):
            await tools["read_text_file"].invoke({"path": str(root / ".." / ".." / "etc")})
        # A schema violation is the model's to fix, reported with the expected shape.
        with pytest.raises(ToolArgumentsError, match="'forty' is not of type 'number'"):
            await tools["get-sum"].invoke({"a": "forty", "b": 2})
        # The server's own error (isError) reaches the model as a tool error with its text.
        with pytest.raises(ToolExecutionError, match="ENOENT"):
            await tools["read_text_file"].invoke({"path": str(root / "absent.txt")})
        stats = {s["server"]: s for s in bridge.stats()}
        assert stats["files"]["state"] == stats["everything"]["state"] == "ready"
        assert stats["files"]["rss_mb"] > 1
        pids = [s["pid"] for s in stats.values()]
    await wait_until(lambda: all(group_members(pid) == [] for pid in pids), "both groups to die", 5)


async def test_killing_npx_kills_its_node_child_and_the_server_comes_back(
    interop_dir: Path, tmp_path: Path
) -> None:
    config = parse_mcp_config(
        {"mcpServers": {"everything": npx_server(interop_dir, "mcp-server-everything")}}, {}
    )
    bridge = McpBridge(config, McpSettings(health_interval_ms=500), restart_initial_delay_s=0.05)
    try:
        tools = {t.name: t for t in await bridge.start()}
        supervisor = bridge.supervisors["everything"]
        npx_pid = supervisor.pid
        assert npx_pid is not None
        members = group_members(npx_pid)
        assert len(members) >= 2, "npx runs the server as a child process"
        os.kill(npx_pid, signal.SIGKILL)  # the node child survives unless the group is killed
        await wait_until(lambda: supervisor.restarts == 1, "the restart")
        await asyncio.wait_for(supervisor.wait_ready(), 60)
        await wait_until(
            lambda: not any(process_running(p) for p in members), "the old group to die", 5
        )
        assert "killed by signal 9" in (supervisor.last_error or "")
        assert "Echo: back" in await tools["echo"].invoke({"message": "back"})
    finally:
        await bridge.aclose()
    assert all(s["state"] == "closed" for s in bridge.stats())


async def test_one_failing_server_does_not_stop_the_others(interop_dir: Path) -> None:
    config = parse_mcp_config(
        {
            "mcpServers": {
                "everything": npx_server(interop_dir, "mcp-server-everything"),
                "missing": npx_server(interop_dir, "no-such-mcp-server-bin", timeout=30),
            }
        },
        {},
    )
    async with McpBridge(config) as bridge:
        tools = {t.name: t for t in bridge.tools}
        assert "echo" in tools
        assert "missing.unavailable" in tools
        with pytest.raises(
            ToolExecutionError, match=r"'missing' is unavailable: .*failed to start"
        ):
            await tools["missing.unavailable"].invoke({})
        assert "Echo: still here" in await tools["echo"].invoke({"message": "still here"})
        states = {s["server"]: s["state"] for s in bridge.stats()}
        assert states == {"everything": "ready", "missing": "failed"}
        assert json.dumps(bridge.stats())  # the health snapshot can carry it as JSON
