"""``python -m python_tools [--workspace DIR]``: serve the built-in tools over MCP stdio.

The same tools and validators as inside Elaria; every refusal comes back as an MCP tool error.
Stdout carries the protocol only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m python_tools", description="Serve Elaria's built-in tools over MCP stdio."
    )
    parser.add_argument("--workspace", help="directory the tools may touch (agent.workspace)")
    args = parser.parse_args(argv)

    from elaria.config import load_settings
    from elaria.errors import ElariaError
    from elaria.mcp.serving import default_workspace, serve_builtin

    try:
        settings = load_settings()
        workspace = default_workspace(settings, args.workspace)
        asyncio.run(serve_builtin(settings, workspace=workspace, transport="stdio"))
    except ElariaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
