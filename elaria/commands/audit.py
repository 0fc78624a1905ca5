"""``elaria audit list|show``: read the audit ledger.

``list [--failed] [-n N]`` prints the newest records (``--failed``: failures and cancellations
only). ``show RUN_ID`` prints every record of that run (or the request with that id; a unique
prefix is enough): its summary and the merged timeline of model calls, resilience events and
tool calls in the order they happened. ``--json`` prints the records themselves. The file is
``logging.log_dir / telemetry.ledger_file`` unless ``--file`` names another.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from pathlib import Path
from typing import Any, Final

from rich.console import Console, JustifyMethod
from rich.table import Table

from elaria.commands.events import make_console
from elaria.config import load_settings
from elaria.errors import ElariaError
from elaria.telemetry.query import JsonlReader

_HINT: Final = (
    "Audit records are written by runs while telemetry.ledger is on; check logging.log_dir, or "
    "pass --file PATH."
)
_FAILED: Final = frozenset({"failure", "cancelled"})


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="the newest audit records")
    listing.add_argument("--failed", action="store_true", help="only failed or cancelled runs")
    listing.add_argument("-n", "--limit", type=int, default=50, help="how many (50)")
    show = sub.add_parser("show", help="one run's records and timeline")
    show.add_argument("run_id", metavar="RUN_ID", help="run id or request id (a unique prefix)")
    for p in (listing, show):
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--file", type=Path, default=None, help="ledger file to read")


def main(args: argparse.Namespace) -> int:
    path = args.file or _configured_path()
    reader = JsonlReader(path, include_rotated=True)
    reader.check("audit ledger", _HINT)
    console = make_console()
    show = _list if args.action == "list" else _show
    code = show(reader, args, console)
    if reader.malformed:
        print(f"({reader.malformed} malformed line(s) skipped)", file=sys.stderr)
    return code


def _configured_path() -> Path:
    settings = load_settings()
    return settings.logging.log_dir / settings.telemetry.ledger_file


def _list(reader: JsonlReader, args: argparse.Namespace, console: Console) -> int:
    if args.limit < 1:
        raise ElariaError("--limit must be at least 1", hint="Pass e.g. -n 20.")
    chosen = (r for r in reader if not args.failed or r.get("outcome") in _FAILED)
    newest = list(deque(chosen, maxlen=args.limit))
    if args.json:
        for record in newest:
            print(json.dumps(record, ensure_ascii=False))
        return 0
    title = "failed audit records" if args.failed else "audit records"
    table = Table(title=title, title_justify="left")
    for name in ("started", "run", "request", "outcome", "latency ms", "calls", "tools", "model"):
        table.add_column(
            name, justify="right" if name in ("latency ms", "calls", "tools") else "left"
        )
    for r in newest:
        table.add_row(
            str(r.get("started", ""))[:19],
            str(r.get("run_id") or "-")[:12],
            str(r.get("request_id") or "-")[:12] if r.get("record") != "run" else "(run)",
            _outcome(r),
            _num(r.get("latency_ms")),
            str(r.get("model_calls", "-")),
            str(len(r.get("tool_calls") or ())),
            str(r.get("final_model") or "-"),
        )
    console.print(table)
    if not newest:
        console.print("no failed records" if args.failed else "no records")
    return 0


def _show(reader: JsonlReader, args: argparse.Namespace, console: Console) -> int:
    wanted = args.run_id.strip()
    if not wanted:
        raise ElariaError("RUN_ID is empty", hint="Copy a run id from `elaria audit list`.")
    records = [r for r in reader if _matches(r, wanted)]
    ids = {str(r.get("run_id") or r.get("request_id")) for r in records}
    if not records:
        raise ElariaError(
            f"no audit record with run or request id {wanted!r} in {reader.path}",
            hint="List the recorded runs with `elaria audit list`.",
        )
    if len(ids) > 1 and not any(wanted in (r.get("run_id"), r.get("request_id")) for r in records):
        raise ElariaError(
            f"{wanted!r} matches {len(ids)} runs: {', '.join(sorted(ids)[:5])}",
            hint="Give more characters of the id.",
        )
    if args.json:
        for record in records:
            print(json.dumps(record, ensure_ascii=False, indent=2))
        return 0
    for record in records:
        _print_record(record, console)
    return 0


def _matches(record: dict[str, Any], wanted: str) -> bool:
    return any(
        isinstance(value, str) and value.startswith(wanted)
        for value in (record.get("run_id"), record.get("request_id"))
    )


def _print_record(r: dict[str, Any], console: Console) -> None:
    console.rule(f"{r.get('record', 'request')} {r.get('request_id') or r.get('run_id')}")
    for label, key in (
        ("run", "run_id"),
        ("started", "started"),
        ("finished", "finished"),
        ("outcome", "outcome"),
        ("latency ms", "latency_ms"),
        ("error", "error"),
        ("final host", "final_host"),
        ("final model", "final_model"),
        ("model calls", "model_calls"),
        ("tokens in/out", None),
        ("prompt sha256", "prompt_sha256"),
        ("prompt", "prompt_preview"),
        ("answer", "answer_preview"),
    ):
        if key is None:
            if "tokens_in" in r:
                console.print(f"[bold]{label}:[/] {r.get('tokens_in')}/{r.get('tokens_out')}")
            continue
        value = r.get(key)
        if value is None or value == "":
            continue
        if key == "error":
            value = f"{r.get('error_class')}: {value}"
        console.print(f"[bold]{label}:[/] ", end="")
        console.print(str(value), markup=False)
    timeline = _timeline(r)
    if not timeline:
        return
    table = Table(title="timeline", title_justify="left")
    for name in ("#", "t ms", "what", "detail"):
        justify: JustifyMethod = "right" if name in ("#", "t ms") else "left"
        table.add_column(name, justify=justify, overflow="fold")
    for seq, t_ms, what, detail in timeline:
        table.add_row(str(seq), _num(t_ms), what, detail)
    console.print(table)


def _timeline(r: dict[str, Any]) -> list[tuple[int, Any, str, str]]:
    rows: list[tuple[int, Any, str, str]] = []
    for call in r.get("calls") or ():
        ok = "ok" if call.get("success") else f"failed: {call.get('error_class')}"
        detail = (
            f"{call.get('host')} {call.get('model')} {_num(call.get('latency_ms'))} ms "
            f"tokens {call.get('tokens_in')}/{call.get('tokens_out')} {ok}"
        )
        rows.append((int(call.get("seq", 0)), call.get("t_ms"), "model call", detail))
    for event in r.get("events") or ():
        data = {k: v for k, v in event.items() if k not in ("seq", "t_ms", "kind")}
        detail = " ".join(f"{k}={v}" for k, v in data.items() if v is not None)
        rows.append((int(event.get("seq", 0)), event.get("t_ms"), str(event.get("kind")), detail))
    for tool in r.get("tool_calls") or ():
        detail = (
            f"{tool.get('name')} -> {tool.get('outcome')}"
            f"{' (' + str(tool.get('error_class')) + ')' if tool.get('error_class') else ''} "
            f"{_num(tool.get('duration_ms'))} ms args {tool.get('arguments_preview')}"
        )
        rows.append((int(tool.get("seq", 0)), tool.get("t_ms"), "tool call", detail))
    return sorted(rows, key=lambda row: row[0])


def _outcome(record: dict[str, Any]) -> str:
    outcome = str(record.get("outcome", "?"))
    if outcome in _FAILED and record.get("error_class"):
        return f"{outcome} ({record['error_class']})"
    return outcome


def _num(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.1f}"
    return "-"
