"""``elaria events tail|stats``: read the inference event log.

``tail [-n N] [--follow]`` prints the newest events (a table, or the JSON lines with ``--json``)
and with ``--follow`` keeps printing new ones as they are appended, across rotation, until Ctrl-C.
``stats [--since 1h]`` prints requests, success rate, p50/p95 latency, tokens and cost per model.
The file is ``logging.log_dir / telemetry.events_file`` unless ``--file`` names another.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, Final

from rich.console import Console, JustifyMethod
from rich.table import Table

from elaria.config import load_settings
from elaria.telemetry.query import JsonlReader, event_stats, parse_since

#: How often ``--follow`` looks for new lines: fast enough to feel live, cheap when idle.
FOLLOW_POLL_S: Final = 0.25
_HINT: Final = (
    "Events are written by runs while telemetry.events is on; check logging.log_dir, or pass "
    "--file PATH."
)


#: Width for tables when stdout is not a terminal (piped, captured): wide enough not to cut ids.
PIPE_WIDTH: Final = 200


def make_console() -> Console:
    """A console for tables: the terminal's width, or :data:`PIPE_WIDTH` when piped."""
    width = None if sys.stdout.isatty() else PIPE_WIDTH
    return Console(highlight=False, soft_wrap=True, width=width)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    tail = sub.add_parser("tail", help="print the newest events")
    tail.add_argument("-n", "--lines", type=_positive_int, default=20, help="how many (20)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    stats = sub.add_parser("stats", help="requests, success rate, latency, tokens, cost per model")
    stats.add_argument(
        "--since",
        type=_since,
        default=None,
        help="only events newer than this: 30m, 1h, 2d, or an ISO time",
    )
    for p in (tail, stats):
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--file", type=Path, default=None, help="event log to read")


def main(args: argparse.Namespace) -> int:
    path = args.file or _configured_path()
    reader = JsonlReader(path, include_rotated=args.action == "stats")
    reader.check("inference event log", _HINT)
    if args.action == "tail":
        return _tail(reader, args)
    return _stats(reader, args)


def _configured_path() -> Path:
    settings = load_settings()
    return settings.logging.log_dir / settings.telemetry.events_file


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _since(text: str) -> Any:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --------------------------------------------------------------------------- tail


def _tail(reader: JsonlReader, args: argparse.Namespace) -> int:
    newest: deque[dict[str, Any]] = deque(maxlen=args.lines)
    # Remember where the complete lines end, so --follow starts exactly there: a line appended
    # while we read is printed once, never skipped or repeated.
    offset = 0
    with reader.path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            offset += len(raw)
            record = reader.parse(raw)
            if record is not None:
                newest.append(record)
    console = make_console()
    if args.json:
        for event in newest:
            print(json.dumps(event, ensure_ascii=False), flush=True)
    else:
        table = _events_table()
        for event in newest:
            table.add_row(*_row(event))
        console.print(table)
    if reader.malformed:
        print(f"({reader.malformed} malformed line(s) skipped)", file=sys.stderr)
    if not args.follow:
        return 0
    for event in follow(reader, start=offset):
        if args.json:
            print(json.dumps(event, ensure_ascii=False), flush=True)
        else:
            console.print("  ".join(_row(event)))
    return 0  # pragma: no cover - follow only ends with Ctrl-C


def follow(
    reader: JsonlReader,
    *,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = FOLLOW_POLL_S,
    start: int | None = None,
) -> Generator[dict[str, Any], None, None]:
    """Yield records appended to ``reader.path`` after byte ``start`` (default: its current
    end); reopens the path after rotation."""
    handle = None
    pending = b""
    identity: tuple[int, int] | None = None
    position = reader.path.stat().st_size if start is None else start
    try:
        while True:
            if handle is None:
                try:
                    handle = reader.path.open("rb")
                except FileNotFoundError:
                    sleep(poll_s)
                    continue
                stat = os.fstat(handle.fileno())
                identity = (stat.st_dev, stat.st_ino)
                handle.seek(min(position, stat.st_size))
            chunk = handle.read()
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    record = reader.parse(line)
                    if record is not None:
                        yield record
                continue
            if _replaced(reader.path, identity, handle.tell()):
                handle.close()
                handle, position, pending = None, 0, b""
                continue
            sleep(poll_s)
    finally:
        if handle is not None:
            handle.close()


def _replaced(path: Path, identity: tuple[int, int] | None, offset: int) -> bool:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False  # mid-rotation: wait for the new file
    return (stat.st_dev, stat.st_ino) != identity or stat.st_size < offset


_NUMERIC_COLUMNS: Final = frozenset({"latency ms", "ttft ms", "tokens in/out", "cost $"})


def _events_table() -> Table:
    table = Table(title="inference events", title_justify="left")
    for name in (
        "time",
        "request",
        "provider",
        "model",
        "host",
        "latency ms",
        "ttft ms",
        "tokens in/out",
        "cost $",
        "result",
    ):
        justify: JustifyMethod = "right" if name in _NUMERIC_COLUMNS else "left"
        table.add_column(name, justify=justify, overflow="fold")
    return table


def _row(event: dict[str, Any]) -> list[str]:
    ok = event.get("success")
    return [
        str(event.get("created", ""))[:23],
        str(event.get("request_id", ""))[:12],
        str(event.get("provider", "")),
        str(event.get("model", "")),
        str(event.get("host", "")),
        _num(event.get("latency_ms"), 1),
        _num(event.get("time_to_first_token_ms"), 1),
        f"{event.get('tokens_in', 0)}/{event.get('tokens_out', 0)}",
        _num(event.get("cost_usd"), 6),
        "ok" if ok else f"failed: {event.get('error_class') or '?'}",
    ]


def _num(value: Any, digits: int) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.{digits}f}"
    return "-"


# --------------------------------------------------------------------------- stats


def _stats(reader: JsonlReader, args: argparse.Namespace) -> int:
    rows = [s.to_dict() for s in event_stats(reader, since=args.since)]
    if args.json:
        print(
            json.dumps(
                {
                    "since": args.since.isoformat() if args.since else None,
                    "models": rows,
                    "malformed_lines": reader.malformed,
                },
                indent=2,
            )
        )
        return 0
    table = Table(title="inference events by model", title_justify="left")
    for name in ("model", "requests", "success", "p50 ms", "p95 ms", "tokens in", "out", "cost $"):
        table.add_column(name, justify="left" if name == "model" else "right", overflow="fold")
    for row in rows:
        rate = row["success_rate"]
        table.add_row(
            row["model"],
            str(row["requests"]),
            "-" if rate is None else f"{rate:.1%}",
            _num(row["p50_latency_ms"], 1),
            _num(row["p95_latency_ms"], 1),
            str(row["tokens_in"]),
            str(row["tokens_out"]),
            _num(row["cost_usd"], 4),
        )
    console = make_console()
    console.print(table)
    if reader.malformed:
        console.print(f"({reader.malformed} malformed line(s) skipped)")
    return 0
