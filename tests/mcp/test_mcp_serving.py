"""``serve_builtin`` and ``serve_proxy`` in-process over HTTP, and the fixture server's protocol."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from elaria.config import Settings
from elaria.mcp import fixture_server as fixture
from elaria.mcp.serving import serve_builtin, serve_proxy
from elaria.mcp.testing import POLL_S, fixture_server, node_packages_problem

Serve = Callable[[Callable[[str], None]], Coroutine[Any, Any, None]]


@asynccontextmanager
async def serving(serve: Serve) -> AsyncIterator[str]:
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(ready.set_result))
    waiters: set[asyncio.Future[Any]] = {task, ready}
    try:
        async with asyncio.timeout(30):
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises what stopped it
            pytest.fail("the server stopped before it was ready")
        yield ready.result()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _settings(tmp_path: Path) -> Settings:
    return Settings.model_validate({"agent": {"workspace": str(tmp_path / "ws")}})


def _text(result: Any) -> str:
    return "\n".join(b.text for b in result.content if b.type == "text")


async def test_serve_builtin_over_http_in_process(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    workspace = tmp_path / "ws"

    async def serve(on_ready: Callable[[str], None]) -> None:
        await serve_builtin(
            settings,
            workspace=workspace,
            transport="http",
            with_health=True,
            on_ready=on_ready,
        )

    async with serving(serve) as url, Client(url, mode="legacy", cache=None) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"read_file", "write_file", "runtime_health"} <= names
        written = await client.call_tool("write_file", {"path": "n.txt", "content": "hi"})
        assert not written.is_error
        assert (workspace / "n.txt").read_text() == "hi"
        health = json.loads(_text(await client.call_tool("runtime_health", {})))
        assert {"status", "sections"} <= set(health)
        refused = await client.call_tool("read_file", {"path": "../../../etc/hostname"})
        assert refused.is_error


async def test_serve_proxy_over_http_in_process(tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"fx": fixture_server()}}))
    settings = _settings(tmp_path)

    async def serve(on_ready: Callable[[str], None]) -> None:
        await serve_proxy(settings, config_path=config, transport="http", on_ready=on_ready)

    async with serving(serve) as url, Client(url, mode="legacy", cache=None) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {"echo", "block", "grow", "runtime_health"}
        assert _text(await client.call_tool("echo", {"text": "via proxy"})) == "via proxy"
        refused = await client.call_tool("echo", {"text": '{"__proto__": {"x": 1}}'})
        assert refused.is_error
        assert "__proto__" in _text(refused)
        health = json.loads(_text(await client.call_tool("runtime_health", {})))
        assert health["sections"]["mcp"][0]["server"] == "fx"
        assert health["sections"]["mcp"][0]["state"] == "ready"


async def test_the_proxy_lists_a_late_server_tools_once_it_is_up(tmp_path: Path) -> None:
    may_start = tmp_path / "may-start"
    late = fixture_server(env={"FIXTURE_FAIL_UNTIL": str(may_start)})
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"late": late}}))
    settings = _settings(tmp_path)

    async def serve(on_ready: Callable[[str], None]) -> None:
        await serve_proxy(settings, config_path=config, transport="http", on_ready=on_ready)

    async with serving(serve) as url, Client(url, mode="legacy", cache=None) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {"late.unavailable", "runtime_health"}
        down = await client.call_tool("late.unavailable", {})
        assert down.is_error
        assert "late" in _text(down)
        may_start.write_text("go")
        async with asyncio.timeout(30):
            while "echo" not in {t.name for t in (await client.list_tools()).tools}:
                await asyncio.sleep(POLL_S)
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {"echo", "block", "grow", "runtime_health"}
        assert _text(await client.call_tool("echo", {"text": "late but here"})) == "late but here"


def test_fixture_server_protocol() -> None:
    init = fixture._answer({"method": "initialize", "params": {}}, "serve")
    assert init is not None
    assert init["serverInfo"]["name"] == "fixture"
    assert fixture._answer({"method": "ping"}, "serve") == {}
    listed = fixture._answer({"method": "tools/list"}, "broken-schema")
    assert listed is not None
    assert [t["name"] for t in listed["tools"]] == ["echo", "block", "grow", "broken"]
    echoed = fixture._answer(
        {"method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}, "serve"
    )
    assert echoed == {"content": [{"type": "text", "text": "x"}], "isError": False}
    with pytest.raises(ValueError, match="Unknown tool"):
        fixture._answer({"method": "tools/call", "params": {"name": "nope"}}, "serve")
    with pytest.raises(LookupError, match="method not found"):
        fixture._answer({"method": "resources/list"}, "serve")


def test_missing_node_packages_name_the_command_to_run(tmp_path: Path) -> None:
    problem = node_packages_problem(tmp_path, ["@modelcontextprotocol/sdk"])
    assert problem is not None
    assert "@modelcontextprotocol/sdk" in problem
    assert "npm ci --prefix tests/interop" in problem
    package = tmp_path / "node_modules" / "@modelcontextprotocol" / "sdk"
    package.mkdir(parents=True)
    (package / "package.json").write_text("{}")
    assert node_packages_problem(tmp_path, ["@modelcontextprotocol/sdk"]) is None
