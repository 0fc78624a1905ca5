"""``elaria serve-health``: serve ``GET /health`` and ``GET /metrics`` for this machine.

Without a runtime in this process, the snapshot is what this machine sees: the configured
LM Studio hosts (probed at each request) and this process's memory, sampled every
``memory.check_interval_ms``. A runtime serves its own, richer snapshot with the same server
(:class:`~elaria.telemetry.health.HealthServer`). Loopback unless ``--host`` or
``health.host`` say otherwise. Runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio

from elaria.config import Settings, load_settings
from elaria.errors import ElariaError
from elaria.memory.monitor import MemoryMonitor
from elaria.telemetry.health import HealthServer, machine_registry


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default: health.host, loopback)")
    parser.add_argument("--port", type=_port, help="port (default: health.port; 0 = a free one)")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65_535:
        raise argparse.ArgumentTypeError(f"{port} is outside 0..65535 (0 picks a free port)")
    return port


def main(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = load_settings()
    if overrides:
        settings = load_settings(health=settings.health.model_copy(update=overrides).model_dump())
    asyncio.run(_serve(settings))
    return 0


async def _serve(settings: Settings) -> None:
    monitor = MemoryMonitor(settings.memory)
    server = HealthServer(machine_registry(settings, monitor), settings.health)
    try:
        await server.start()
    except OSError as exc:
        raise ElariaError(
            f"cannot listen on {settings.health.host}:{settings.health.port}: {exc.strerror}",
            where="elaria serve-health",
            hint="Pick another --port (0 picks a free one) or stop what holds that one.",
        ) from None
    await monitor.start()
    print(f"serving {server.url}/health and {server.url}/metrics (Ctrl-C to stop)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await monitor.stop()
        await server.stop()
