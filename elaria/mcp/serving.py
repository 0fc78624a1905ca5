"""What ``python -m python_tools``, ``elaria mcp serve`` and ``elaria mcp proxy`` run.

* :func:`serve_builtin` — the built-in ``python_tools`` (plus, for ``elaria mcp serve``, the
  ``runtime_health`` tool returning the health snapshot) behind a
  :class:`~elaria.mcp.firewall.Firewall` whose path validator is rooted at the workspace.
* :func:`serve_proxy` — every tool of the servers in an ``mcp.json``, through the bridge (and so
  through the firewall: keys, lengths, tagged validators, ``approval``; ``ask`` is refused since a
  proxy has nobody to ask), each call audited to the JSONL ledger.

Both block until the transport ends (stdin closed, or the HTTP server is stopped by a signal or
by cancelling the coroutine) and always close what they started, children included.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from elaria.agent.tools import Tool
from elaria.config import Settings
from elaria.errors import ConfigError
from elaria.mcp.client import McpBridge, assess_mcp
from elaria.mcp.config import load_mcp_config
from elaria.mcp.firewall import AuditSink, Firewall, default_validators
from elaria.mcp.server import build_server, serve_http, serve_stdio

__all__ = ["JsonlAudit", "health_tool", "serve_builtin", "serve_proxy"]

Transport = Literal["stdio", "http"]


class JsonlAudit:
    """Append audit records, redacted, one JSON object a line (the ledger's file format)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, record: dict[str, Any]) -> None:
        from elaria.security.redact import redact

        line = json.dumps(redact(record), ensure_ascii=False, default=str)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def audit_sink(settings: Settings) -> AuditSink:
    return JsonlAudit(settings.logging.log_dir / settings.telemetry.ledger_file)


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


def builtin_tools(workspace: Path) -> list[Tool]:
    try:
        # By name: python_tools is a sibling package that may be absent from a broken install.
        make = importlib.import_module("python_tools").builtin_tools
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"the built-in tools are not available: {exc}",
            hint="Reinstall Elaria (pip install -e .) so the python_tools package is importable.",
        ) from exc
    tools: list[Tool] = make(workspace)
    return tools


def _firewall(settings: Settings, workspace: Path, audit: AuditSink | None) -> Firewall:
    roots = [workspace, *settings.security.allowed_roots]
    return Firewall(
        max_argument_chars=settings.agent.max_argument_chars,
        validators=default_validators(roots),
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
    tools = builtin_tools(workspace)
    if with_health:
        tools.append(health_tool(None, settings))
    firewall = _firewall(settings, workspace, audit_sink(settings))
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
    audit = audit_sink(settings)
    bridge = McpBridge(
        config,
        settings.mcp,
        workspace=workspace,
        audit=audit,
        max_argument_chars=settings.agent.max_argument_chars,
        ask_means_deny=True,
    )
    try:
        tools = await bridge.start()
        tools.append(health_tool(bridge, settings))
        server = build_server(
            "elaria-proxy",
            tools,
            version=_version(),
            instructions="Tools of other MCP servers, checked by Elaria's firewall.",
        )
        await _serve(server, transport, port, on_ready)
    finally:
        await bridge.aclose()


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
