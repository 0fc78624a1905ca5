"""``elaria models``: downloaded and loaded models on each configured LM Studio host.

Hosts come from ``--host`` (repeatable) or ``lmstudio.hosts`` in settings. Every host is asked
at once through the client pool (bounded by ``lmstudio.connect_timeout_ms``); an unreachable
host is listed with the reason. Exit codes: **0** at least one host answered, **1** none did
(one readable error naming each host and why), **2** invalid settings or arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from elaria.config import Settings, load_settings
from elaria.errors import AllTargetsFailed, ConfigError, ElariaError, FailedAttempt
from elaria.lmstudio.failover import Failover
from elaria.lmstudio.pool import ClientPool, check_host


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        action="append",
        default=None,
        metavar="ws://HOST:PORT",
        help="ask this host (repeatable); default: lmstudio.hosts from settings",
    )
    parser.add_argument("--json", action="store_true", help="print the listing as JSON")
    parser.epilog = "exit codes: 0 listed, 1 no host reachable, 2 invalid settings or arguments"


def main(args: argparse.Namespace) -> int:
    settings = load_settings()
    hosts: list[str] = list(args.host or settings.lmstudio.hosts)
    if not hosts:
        raise ConfigError(
            "no LM Studio host to ask",
            where="lmstudio.hosts",
            hint="Pass --host ws://localhost:1234 or set lmstudio.hosts in elaria.toml.",
        )
    for host in hosts:
        # Refused before any network I/O: malformed, or a remote host not allowed.
        check_host(host, settings.lmstudio, settings.security)
    listings = asyncio.run(_collect(settings, hosts))
    if args.json:
        print(json.dumps(listings, indent=2))
    else:
        _render(listings)
    failed = [x for x in listings if "error" in x]
    if len(failed) == len(listings):
        raise AllTargetsFailed(
            [FailedAttempt(x["host"], None, x["error_class"], x["error"]) for x in failed]
        )
    return 0


async def _collect(settings: Settings, hosts: list[str]) -> list[dict[str, Any]]:
    async with ClientPool.from_settings(settings) as pool:
        failover = Failover(pool, settings)
        return list(await asyncio.gather(*(_one(failover, host) for host in hosts)))


async def _one(failover: Failover, host: str) -> dict[str, Any]:
    try:
        return await failover.list_models(host)
    except ElariaError as exc:
        return {"host": host, "error": exc.message, "error_class": type(exc).__name__}


def _render(listings: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    for listing in listings:
        if "error" in listing:
            console.print(f"[bold]{listing['host']}[/]: [red]unreachable[/] ({listing['error']})")
            continue
        loaded = {m["identifier"] for m in listing["loaded"]}
        table = Table(title=listing["host"], title_justify="left")
        for column in ("model", "type", "size", "max context", "loaded"):
            table.add_column(column)
        for m in listing["downloaded"]:
            table.add_row(
                m["model_key"],
                m["type"],
                _size(m["size_bytes"]),
                str(m["max_context_length"]),
                "yes" if m["model_key"] in loaded else "",
            )
        console.print(table)
        extra = sorted(loaded - {m["model_key"] for m in listing["downloaded"]})
        if extra:
            console.print("also loaded: " + ", ".join(extra))


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns
