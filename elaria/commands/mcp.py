"""``elaria mcp``: serve the built-in tools over MCP, proxy other MCP servers, or check a config.

* ``elaria mcp serve [--transport stdio|http] [--port N] [--workspace DIR]`` — the built-in tools
  plus ``runtime_health``; HTTP listens on 127.0.0.1 only and prints its URL on stderr.
* ``elaria mcp proxy --config mcp.json [--transport stdio|http] [--port N]`` — the configured
  servers' tools through Elaria's firewall and audit ledger, for LM Studio or any MCP host.
* ``elaria mcp check --config mcp.json`` — start every server once, print its tools and state as
  JSON, stop them; exit 1 if any failed.

In stdio mode stdout belongs to the protocol: everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from elaria.config import load_settings


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="mcp_command", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="serve the built-in tools (and runtime_health)")
    _transport_args(serve)
    serve.add_argument("--workspace", help="directory the tools may touch (agent.workspace)")
    proxy = sub.add_parser("proxy", help="expose mcp.json servers through Elaria's firewall")
    _transport_args(proxy)
    proxy.add_argument("--config", required=True, help="an LM Studio-style mcp.json")
    check = sub.add_parser("check", help="start each configured server once and list its tools")
    check.add_argument("--config", required=True, help="an LM Studio-style mcp.json")


def _transport_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument(
        "--port", type=int, default=0, help="HTTP port on 127.0.0.1 (0 = a free one)"
    )


def main(args: argparse.Namespace) -> int:
    from elaria.mcp.serving import default_workspace, serve_builtin, serve_proxy

    settings = load_settings()
    port = getattr(args, "port", 0)
    if not 0 <= port <= 65_535:
        print(f"error: --port {port} must be 0..65535 (0 picks a free port)", file=sys.stderr)
        return 2

    def announce(where: str) -> None:
        if where != "stdio":
            print(f"elaria mcp: serving on {where}", file=sys.stderr, flush=True)

    if args.mcp_command == "serve":
        workspace = default_workspace(settings, args.workspace)
        coro = serve_builtin(
            settings,
            workspace=workspace,
            transport=args.transport,
            port=args.port,
            with_health=True,
            on_ready=announce,
        )
    elif args.mcp_command == "proxy":
        coro = serve_proxy(
            settings,
            config_path=Path(args.config),
            transport=args.transport,
            port=args.port,
            on_ready=announce,
        )
    else:
        return asyncio.run(_check(Path(args.config)))
    asyncio.run(coro)
    return 0


async def _check(config_path: Path) -> int:
    from elaria.mcp.client import McpBridge
    from elaria.mcp.config import load_mcp_config

    settings = load_settings()
    bridge = McpBridge(load_mcp_config(config_path), settings.mcp)
    try:
        tools = await bridge.start()
        report = {
            "servers": bridge.stats(),
            "tools": [{"name": t.name, "source": t.source} for t in tools],
        }
    finally:
        await bridge.aclose()
    print(json.dumps(report, indent=2))
    return 1 if any(s["state"] == "failed" for s in report["servers"]) else 0
