"""MCP both ways: other servers' tools as Elaria tools, and Elaria's tools as an MCP server.

* :class:`McpBridge` (:mod:`elaria.mcp.client`) — every server of an LM Studio-style ``mcp.json``
  (:func:`load_mcp_config`) supervised (:mod:`elaria.mcp.supervisor`: own process group,
  restart with backoff, RSS cap, fail-fast calls) and exposed as tools behind the
  :class:`Firewall`.
* :func:`build_server` (:mod:`elaria.mcp.server`) — any tools served over stdio or streamable
  HTTP; :mod:`elaria.mcp.serving` runs ``python -m python_tools``, ``elaria mcp serve`` and
  ``elaria mcp proxy``.
* :mod:`elaria.mcp.testing` and :mod:`elaria.mcp.fixture_server` — helpers and a misbehaving
  server for tests.

Imports are light: the SDK loads only with the submodule that needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from elaria.mcp.client import McpBridge
    from elaria.mcp.config import McpConfig, load_mcp_config, parse_mcp_config
    from elaria.mcp.firewall import Firewall
    from elaria.mcp.server import build_server

__all__ = [
    "Firewall",
    "McpBridge",
    "McpConfig",
    "build_server",
    "load_mcp_config",
    "parse_mcp_config",
]

_WHERE = {
    "McpBridge": "elaria.mcp.client",
    "McpConfig": "elaria.mcp.config",
    "load_mcp_config": "elaria.mcp.config",
    "parse_mcp_config": "elaria.mcp.config",
    "Firewall": "elaria.mcp.firewall",
    "build_server": "elaria.mcp.server",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'elaria.mcp' has no attribute {name!r}")
