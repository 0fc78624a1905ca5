"""What ``python -m python_tools``, ``elaria mcp serve`` and ``elaria mcp proxy`` run.

* :func:`serve_builtin` — the built-in ``python_tools`` (plus, for ``elaria mcp serve``, the
  ``runtime_health`` tool returning the health snapshot) behind a
  :class:`~elaria.mcp.firewall.Firewall` whose path validator is rooted at the workspace.
* :func:`serve_proxy` — every tool of the servers in an ``mcp.json``, through the bridge (and so
  through the firewall: keys, lengths, tagged validators, ``approval``; ``ask`` is refused since a
  proxy has nobody to ask). A server that fails to start is retried in the background; its
  tools are listed once it is up, and a restart that changes a server's tools changes the list.

Every call, refused or run, becomes a request record in the audit ledger (:class:`LedgerAudit`).

Both block until the transport ends (stdin closed, or the HTTP server is stopped by a signal or
by cancelling the coroutine) and always close what they started, children included.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from elaria.agent.tools import Tool, ToolRegistry
from elaria.config import Settings
from elaria.errors import ConfigError
from elaria.mcp.client import McpBridge, assess_mcp
from elaria.mcp.config import load_mcp_config
from elaria.mcp.firewall import AuditSink, Firewall, default_validators
from elaria.mcp.server import build_server, serve_http, serve_stdio
from elaria.telemetry.ledger import AuditLedger

__all__ = ["LedgerAudit", "health_tool", "serve_builtin", "serve_proxy"]

Transport = Literal["stdio", "http"]


class LedgerAudit:
    """Firewall records as audit-ledger requests: one per MCP call (``elaria audit list``)."""

    def __init__(self, ledger: AuditLedger) -> None:
        self.ledger = ledger

    def __call__(self, record: dict[str, Any]) -> None:
        tool = str(record.get("tool"))
        server = record.get("server")
        outcome = record.get("outcome")
        ctx = self.ledger.begin(f"MCP call {tool}", source="mcp", server=server)
        if outcome == "refused":
            ctx.event(
                "validator_refusal", tool=tool, rule=record.get("rule"), reason=record.get("reason")
            )
        elif outcome == "denied":
            ctx.event("denial", tool=tool, reason=record.get("reason"))
        duration_ms = record.get("duration_ms")
        ctx.tool_call(
            tool,
            record.get("arguments"),
            str(outcome),
            duration_s=None if duration_ms is None else duration_ms / 1000,
        )
        ctx.finish("success" if outcome == "ok" else "failure")
        self.ledger.record(ctx)


def health_tool(bridge: McpBridge | None, settings: Settings) -> Tool:
    """``runtime_health``: the health snapshot (hosts, memory, and MCP children if any)."""
    from elaria.telemetry.health import machine_registry

    registry = machine_registry(settings)
    if bridge is not None:
        registry.register("mcp", bridge.stats, assess=assess_mcp)

    async def runtime_health() -> dict[str, Any]:
        """Elaria's health snapshot: status, reasons, memory, LM Studio hosts, MCP children."""
        return await registry.snapshot()

    return Tool.from_function(runtime_health)


def builtin_tools(workspace: Path, settings: Settings) -> list[Tool]:
    try:
        # By name: python_tools is a sibling package that may be absent from a broken install.
        make = importlib.import_module("python_tools").builtin_tools
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"the built-in tools are not available: {exc}",
            hint="Reinstall Elaria (pip install -e .) so the python_tools package is importable.",
        ) from exc
    tools: list[Tool] = make(workspace, settings=settings)
    return tools


def _firewall(settings: Settings, workspace: Path, audit: AuditSink | None) -> Firewall:
    roots = [workspace, *settings.security.allowed_roots]
    return Firewall(
        max_argument_chars=settings.agent.max_argument_chars,
        validators=default_validators(
            roots, allowed_remote_hosts=settings.security.allowed_remote_hosts
        ),
        audit=audit,
    )


async def serve_builtin(
    settings: Settings,
    *,
    workspace: Path,
    transport: Transport = "stdio",
    port: int = 0,
    with_health: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the built-in tools (and ``runtime_health``) until the transport ends."""
    os.makedirs(workspace, exist_ok=True)  # once, before serving: blocking is fine here
    tools = builtin_tools(workspace, settings)
    if with_health:
        tools.append(health_tool(None, settings))
    async with AuditLedger.from_settings(settings) as ledger:
        firewall = _firewall(settings, workspace, LedgerAudit(ledger))
        server = build_server("elaria", tools, firewall=firewall, version=_version())
        await _serve(server, transport, port, on_ready)


async def serve_proxy(
    settings: Settings,
    *,
    config_path: Path,
    transport: Transport = "stdio",
    port: int = 0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Expose the configured servers' tools through the firewall until the transport ends."""
    config = load_mcp_config(config_path)
    workspace = settings.agent.workspace.resolve()
    ledger = AuditLedger.from_settings(settings)
    await ledger.start()
    bridge = McpBridge(
        config,
        settings.mcp,
        workspace=workspace,
        audit=LedgerAudit(ledger),
        max_argument_chars=settings.agent.max_argument_chars,
        ask_means_deny=True,
        allowed_remote_hosts=settings.security.allowed_remote_hosts,
        retry_failed_starts=True,
    )
    try:
        await bridge.start()
        # The health tool first: a server tool of the same name becomes ``server.name``.
        tools = ToolRegistry([health_tool(bridge, settings)])
        bridge.register(tools)
        server = build_server(
            "elaria-proxy",
            tools,
            version=_version(),
            instructions="Tools of other MCP servers, checked by Elaria's firewall.",
        )
        await _serve(server, transport, port, on_ready)
    finally:
        await bridge.aclose()
        await ledger.aclose()


async def _serve(
    server: Any, transport: Transport, port: int, on_ready: Callable[[str], None] | None
) -> None:
    if transport == "stdio":
        if on_ready is not None:
            on_ready("stdio")
        await serve_stdio(server)
    else:
        await serve_http(server, port=port, on_ready=on_ready)


def _version() -> str:
    from elaria import __version__

    return __version__


def default_workspace(settings: Settings, given: str | None) -> Path:
    """``--workspace``, else ``agent.workspace``; absolute."""
    return Path(given or os.fspath(settings.agent.workspace)).expanduser().resolve()
