"""``elaria bench mcp``: the bridge's cost per tool call, and how fast a crashed child is back.

Both measured against the same stdio server (:mod:`elaria.mcp.fixture_server`, tool ``echo``) in
the same run, because absolute rates drift on a shared machine:

* ``direct_calls_per_s`` — sequential calls through the official ``mcp`` SDK client;
* ``bridge_calls_per_s`` — the same calls through :class:`~elaria.mcp.client.McpBridge` (schema
  check, firewall, supervisor, result rendering, audit hook);
* ``bridge_overhead_ratio`` — direct rate / bridge rate (1.0 = free; 1.2 = 20 % slower);
* ``handler_calls_per_s`` / ``handler_overhead_ratio`` — the same without ``Tool.validate``
  (the JSON-schema check), i.e. the bridge's own cost: firewall, supervisor, rendering;
* ``crash_to_next_call_s`` — SIGKILL the child, then call every few ms until one succeeds: the
  supervisor's detection, backoff, respawn and handshake, as a caller sees it.

Rounds alternate direct and bridge blocks; the report gives the median of the rounds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import time
from typing import Any

from mcp import Client, StdioServerParameters

from elaria.config import McpSettings
from elaria.errors import ToolError
from elaria.mcp.client import McpBridge
from elaria.mcp.config import parse_mcp_config
from elaria.mcp.testing import fixture_server

#: Between attempts while waiting for a restarted child (calls to a down server fail at once).
RETRY_EVERY_S = 0.005
#: Give up on one recovery after this long.
RECOVERY_BOUND_S = 60.0


async def run(quick: bool) -> dict[str, Any]:
    calls = 50 if quick else 300
    rounds = 2 if quick else 5
    crashes = 1 if quick else 3
    entry = fixture_server()
    params = StdioServerParameters(command=entry["command"], args=entry["args"])
    config = parse_mcp_config({"mcpServers": {"bench": entry}}, {})
    direct_rates: list[float] = []
    bridge_rates: list[float] = []
    handler_rates: list[float] = []
    async with (
        Client(params, mode="legacy", cache=None) as client,
        McpBridge(config, McpSettings()) as bridge,
    ):
        echo = next(t for t in bridge.tools if t.name == "echo")

        async def direct() -> None:
            await client.call_tool("echo", {"text": "ping"})

        async def bridged() -> None:
            await echo.invoke({"text": "ping"})

        async def handler_only() -> None:
            await echo.handler({"text": "ping"})

        for _ in range(rounds):
            direct_rates.append(await _rate(direct, calls))
            bridge_rates.append(await _rate(bridged, calls))
            handler_rates.append(await _rate(handler_only, calls))

        recoveries = [await _recovery(bridge, bridged) for _ in range(crashes)]
    direct_rate = statistics.median(direct_rates)
    bridge_rate = statistics.median(bridge_rates)
    handler_rate = statistics.median(handler_rates)
    return {
        "benchmark": "mcp",
        "server": "elaria.mcp.fixture_server (python, stdio)",
        "calls_per_round": calls,
        "rounds": rounds,
        "direct_calls_per_s": round(direct_rate, 1),
        "bridge_calls_per_s": round(bridge_rate, 1),
        "bridge_overhead_ratio": round(direct_rate / bridge_rate, 3),
        "handler_calls_per_s": round(handler_rate, 1),
        "handler_overhead_ratio": round(direct_rate / handler_rate, 3),
        "crash_to_next_call_s": round(statistics.median(recoveries), 3),
        "crash_to_next_call_all_s": [round(r, 3) for r in recoveries],
        "python": sys.version.split()[0],
    }


async def _rate(call: Any, count: int) -> float:
    await call()  # warm
    started = time.perf_counter()
    for _ in range(count):
        await call()
    return count / (time.perf_counter() - started)


async def _recovery(bridge: McpBridge, call: Any) -> float:
    supervisor = bridge.supervisors["bench"]
    pid = supervisor.pid
    if pid is None:
        raise RuntimeError("the benchmark server is not running")
    os.kill(pid, signal.SIGKILL)
    started = time.perf_counter()
    async with asyncio.timeout(RECOVERY_BOUND_S):
        while True:
            try:
                await call()
            except ToolError:
                await asyncio.sleep(RETRY_EVERY_S)
                continue
            if supervisor.pid not in (None, pid):
                return time.perf_counter() - started
            # The kill has not been noticed yet; this call still reached the old process.
            await asyncio.sleep(RETRY_EVERY_S)
