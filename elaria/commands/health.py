"""``elaria health``: the runtime's health snapshot as a table, or as JSON with ``--json``.

It asks a running runtime's endpoint (``--url``, default ``http://<health.host>:<health.port>
/health`` from settings). If nothing listens there, it takes a one-shot snapshot of what this
machine sees instead: the configured LM Studio hosts, reachable or not, and memory.

Exit codes: **0** ok, **3** degraded (still serving, something needs attention), **1** unhealthy,
**2** invalid settings or arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from elaria.config import load_settings
from elaria.errors import ConfigError
from elaria.telemetry.health import exit_code, machine_registry

#: A health endpoint answers from memory; a slow one is as good as absent for this command.
FETCH_TIMEOUT_S = 5.0

_COLOURS = {"ok": "green", "degraded": "yellow", "unhealthy": "red"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    parser.add_argument(
        "--url", help="health endpoint of a running runtime (default: from [health] settings)"
    )
    parser.epilog = "exit codes: 0 ok, 3 degraded, 1 unhealthy, 2 invalid settings"


def main(args: argparse.Namespace) -> int:
    settings = load_settings()
    url = args.url or f"http://{settings.health.host}:{settings.health.port}/health"
    _check_url(url)
    snapshot = _fetch(url)
    if snapshot is None:
        snapshot = asyncio.run(machine_registry(settings).snapshot())
        snapshot["source"] = f"this machine (nothing answered at {url})"
    else:
        snapshot["source"] = url
    if args.json:
        print(json.dumps(snapshot, indent=2))
    else:
        _render(snapshot)
    return exit_code(str(snapshot.get("status")))


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"--url {url!r} is not an http(s) URL",
            where="elaria health --url",
            hint="Pass the runtime's health endpoint, e.g. http://127.0.0.1:8765/health.",
        )


def _fetch(url: str) -> dict[str, Any] | None:
    """The endpoint's snapshot, or None when nothing (or no health endpoint) answers there."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:  # 503 = unhealthy, and still a snapshot
        body = exc.read()
    except (urllib.error.URLError, OSError, TimeoutError):
        return None
    try:
        snapshot = json.loads(body)
    except ValueError:
        return None
    return snapshot if isinstance(snapshot, dict) and "status" in snapshot else None


def _render(snapshot: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    status = str(snapshot.get("status"))
    colour = _COLOURS.get(status, "red")
    console.print(
        f"[bold {colour}]{status.upper()}[/]  elaria {snapshot.get('version')}  "
        f"up {snapshot.get('uptime_s')} s  [dim]({snapshot.get('source')})[/]"
    )
    for reason in snapshot.get("reasons", []):
        console.print(f"  [{colour}]-[/] {reason}", markup=True)
    sections: dict[str, Any] = snapshot.get("sections", {})
    section_status: dict[str, str] = snapshot.get("section_status", {})
    hosts = sections.get("hosts")
    if isinstance(hosts, list) and hosts:
        table = Table(title="LM Studio hosts", title_justify="left")
        for column in ("host", "state", "latency ms", "loaded models", "error"):
            table.add_column(column)
        for h in hosts:
            state = str(h.get("state", "?"))
            table.add_row(
                str(h.get("host")),
                f"[{'green' if state == 'up' else 'red'}]{state}[/]",
                str(h.get("latency_ms", "")),
                ", ".join(h.get("loaded_models") or []),
                str(h.get("error", "")),
            )
        console.print(table)
    table = Table(title="Components", title_justify="left")
    table.add_column("section")
    table.add_column("status")
    table.add_column("stats")
    for name, value in sections.items():
        if name == "hosts" and isinstance(value, list):
            continue
        st = section_status.get(name, "ok")
        table.add_row(name, f"[{_COLOURS.get(st, 'red')}]{st}[/]", _summary(value))
    console.print(table)
    errors = snapshot.get("recent_errors") or []
    if errors:
        console.print("[bold]Recent errors[/]")
        for err in errors[-10:]:
            console.print(f"  {err.get('time')} {err.get('type')}: {err.get('message')}")


def _summary(value: Any, limit: int = 12) -> str:
    """A few ``key=value`` pairs per line: enough to read at a glance, --json for the rest."""
    if isinstance(value, list):
        return "\n".join(_summary(v, limit) for v in value[:limit]) or "-"
    if not isinstance(value, dict):
        return str(value)
    pairs = []
    for key, item in list(value.items())[:limit]:
        if isinstance(item, dict):
            item = ", ".join(f"{k}={v}" for k, v in item.items())
        elif isinstance(item, int) and (key in ("rss", "limit") or key.endswith("_bytes")):
            item = f"{item / (1 << 20):,.0f} MiB"
        pairs.append(f"{key}={item}")
    return "  ".join(pairs)
