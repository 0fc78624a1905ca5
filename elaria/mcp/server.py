"""Elaria as an MCP server: any list of :class:`~elaria.agent.tools.Tool`\\ s over stdio or HTTP.

:func:`build_server` wraps tools in the SDK's low-level ``Server`` (the tools keep their own JSON
schemas, so MCP tools re-exported by the proxy pass through unchanged). Given a
:class:`~elaria.agent.tools.ToolRegistry` instead of a list, it lists and looks tools up in the
registry at each request, so tools the registry gains or loses later (an MCP server behind the
proxy restarted with other tools) are served; the registry must live on the serving loop. Each
call:

1. the tool must exist, and the arguments must pass its schema;
2. the :class:`~elaria.mcp.firewall.Firewall` (when given) checks keys, lengths and the tool's
   tagged arguments;
3. the tool runs; its result becomes text.

Every failure — unknown tool, bad arguments, a validator refusal, the tool raising — is answered
as an MCP tool error (``isError: true``) whose text says what was wrong and what to do, never as
a protocol error and never with a traceback. Transport failures are the SDK's.

:func:`serve_stdio` serves on this process's stdin/stdout; :func:`serve_http` serves streamable
HTTP on loopback until cancelled (``port=0`` picks a free port; ``on_ready`` receives the URL).
Both run on the calling event loop; cancelling them stops the server.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import mcp_types as types
from loguru import logger
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.stdio import stdio_server

from elaria.agent.tools import Tool, ToolRegistry
from elaria.errors import SecurityViolation, ToolError
from elaria.mcp.firewall import Firewall

__all__ = ["build_server", "serve_http", "serve_stdio", "tool_result_text"]

#: Loopback only: the tools touch the user's files; nothing off this machine may call them.
LOOPBACK = "127.0.0.1"
#: Largest tool result text sent back, so one runaway tool cannot flood the host.
MAX_RESULT_CHARS = 1_000_000
#: How often to look whether uvicorn is listening yet.
STARTED_POLL_S = 0.01


def build_server(
    name: str,
    tools: Sequence[Tool] | ToolRegistry,
    *,
    firewall: Firewall | None = None,
    version: str = "",
    instructions: str | None = None,
) -> Server[Any]:
    """A low-level MCP server exposing ``tools`` (names must be unique)."""
    if isinstance(tools, ToolRegistry):
        registry = tools
    else:
        registry = ToolRegistry()
        for t in tools:
            try:
                registry.add(t)
            except ValueError:
                raise ValueError("tool names must be unique") from None

    async def on_list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[_listed(t) for t in registry])

    async def on_call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        by_name = {t.name: t for t in registry}
        return await call_tool(by_name, params.name, params.arguments or {}, firewall)

    return Server(
        name,
        version=version,
        instructions=instructions,
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
    )


def _listed(tool: Tool) -> types.Tool:
    return types.Tool(
        name=tool.name, description=tool.description, input_schema=dict(tool.parameters)
    )


async def call_tool(
    tools: dict[str, Tool],
    name: str,
    arguments: dict[str, Any],
    firewall: Firewall | None,
) -> types.CallToolResult:
    """Run one call through the checks; every failure is an ``isError`` result."""
    tool = tools.get(name)
    if tool is None:
        available = ", ".join(sorted(tools)) or "none"
        return _error(f"Error: there is no tool named {name!r}. Available tools: {available}.")
    started = time.perf_counter()
    try:
        valid = tool.validate(arguments)
        if firewall is not None:
            firewall.check(name, arguments, arg_kinds=tool.arg_kinds)
        result = await tool.handler(valid)
    except ToolError as exc:
        return _error(exc.to_model_text())
    except SecurityViolation as exc:
        if firewall is not None:
            firewall.record(name, arguments, "refused", rule=exc.rule, reason=exc.message)
        return _error(f"Error: refused: {exc}")
    except Exception as exc:
        logger.opt(exception=exc).warning("tool {} failed", name)
        if firewall is not None:
            firewall.record(name, arguments, "error", reason=str(exc))
        return _error(f"Error: tool {name!r} failed: {type(exc).__name__}: {exc}")
    if firewall is not None:
        elapsed = (time.perf_counter() - started) * 1000
        firewall.record(name, arguments, "ok", duration_ms=elapsed)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=tool_result_text(result))]
    )


def tool_result_text(result: Any) -> str:
    """Strings as they are; anything else as JSON; capped at :data:`MAX_RESULT_CHARS`."""
    text = result if isinstance(result, str) else json.dumps(result, default=str, indent=1)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"\n[... truncated: {len(text)} characters in all]"
    return text


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


async def serve_stdio(server: Server[Any]) -> None:
    """Serve on stdin/stdout until the client closes stdin."""
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


async def serve_http(
    server: Server[Any],
    *,
    port: int = 0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve streamable HTTP at ``http://127.0.0.1:PORT/mcp`` until cancelled or signalled."""
    import uvicorn

    app = server.streamable_http_app(host=LOOPBACK)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, port))
    url = f"http://{LOOPBACK}:{sock.getsockname()[1]}/mcp"
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", ws="none", timeout_graceful_shutdown=2
    )
    http = uvicorn.Server(config)

    async def announce() -> None:
        # uvicorn has no "started" event; ``started`` flips within a loop turn of listening.
        while not http.started and not http.should_exit:
            await asyncio.sleep(STARTED_POLL_S)
        if http.started and on_ready is not None:
            on_ready(url)

    announcer = asyncio.create_task(announce())
    try:
        await http.serve(sockets=[sock])
    finally:
        http.should_exit = True
        announcer.cancel()
        sock.close()
