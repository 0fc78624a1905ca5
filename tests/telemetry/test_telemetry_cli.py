"""``elaria events`` and ``elaria audit``: tables, --json, --since, follow, readable errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Generator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from elaria.cli import main
from elaria.commands.events import follow
from elaria.telemetry.query import JsonlReader, event_stats, parse_since, percentile

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def _event(i: int, *, model: str = "m1", ok: bool = True, age_s: float = 0) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "created": (datetime.now(UTC) - timedelta(seconds=age_s)).isoformat(),
        "request_id": f"req-{i}",
        "run_id": "run-a",
        "provider": "lmstudio",
        "host": "ws://localhost:1234",
        "model": model,
        "latency_ms": float(i),
        "time_to_first_token_ms": 1.0,
        "tokens_in": 10,
        "tokens_out": 5,
        "cost_usd": 0.01,
        "success": ok,
        "error_class": None if ok else "HostDown",
        "meta": {},
    }


def _write(path: Path, records: list[dict[str, Any]], *, extra: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + extra)


@pytest.fixture
def event_file() -> Path:
    path = Path("logs/inference.jsonl")
    events = [_event(i) for i in range(1, 101)]
    events += [_event(500, model="m2", ok=False), _event(7, model="m2", age_s=7200)]
    _write(path, events, extra=b'{"cut short by a full disk\n')
    return path


def test_parse_since() -> None:
    assert parse_since("90m", now=NOW) == NOW - timedelta(minutes=90)
    assert parse_since("1h", now=NOW) == NOW - timedelta(hours=1)
    assert parse_since("2d", now=NOW) == NOW - timedelta(days=2)
    assert parse_since("2026-01-01T00:00:00") == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a duration or a time"):
        parse_since("yesterday-ish")


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([3.0], 95) == 3.0
    assert percentile([], 50) is None


def test_stats_per_model_and_since(event_file: Path) -> None:
    reader = JsonlReader(event_file)
    rows = {s.model: s.to_dict() for s in event_stats(reader)}
    assert reader.malformed == 1
    assert rows["(all)"]["requests"] == 102
    assert rows["m1"]["p50_latency_ms"] == 50.0
    assert rows["m1"]["p95_latency_ms"] == 95.0
    assert rows["m1"]["success_rate"] == 1.0
    assert rows["m1"]["tokens_in"] == 1000
    assert rows["m1"]["cost_usd"] == pytest.approx(1.0)
    assert rows["m2"]["success_rate"] == 0.5
    recent = {
        s.model: s.to_dict() for s in event_stats(JsonlReader(event_file), since=parse_since("1h"))
    }
    assert recent["m2"]["requests"] == 1  # the two-hour-old event is left out


def test_events_stats_json(event_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "stats", "--since", "1h", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_model = {row["model"]: row for row in data["models"]}
    assert by_model["(all)"]["requests"] == 101
    assert data["malformed_lines"] == 1


def test_events_stats_table(event_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "stats"]) == 0
    out = capsys.readouterr().out
    assert "m1" in out
    assert "m2" in out
    assert "50.0%" in out


def test_events_tail(event_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "tail", "-n", "3", "--json"]) == 0
    out = capsys.readouterr()
    ids = [json.loads(line)["request_id"] for line in out.out.splitlines()]
    assert ids == ["req-100", "req-500", "req-7"]
    assert "1 malformed line(s) skipped" in out.err
    assert main(["events", "tail", "-n", "2"]) == 0
    table = capsys.readouterr().out
    assert "HostDown" in table


def test_readable_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "tail"]) == 1
    err = capsys.readouterr().err
    assert "no inference event log at logs/inference.jsonl" in err
    assert "Traceback" not in err
    assert main(["audit", "list", "--file", "nowhere.jsonl"]) == 1
    assert "no audit ledger at nowhere.jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["events", "stats", "--since", "last tuesday"])
    assert info.value.code == 2
    assert "not a duration or a time" in capsys.readouterr().err


def test_follow_prints_new_lines_across_rotation(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    _write(path, [_event(1)])
    changes: list[Callable[[], object]] = [
        lambda: _append(path, b'{"request_id": "new-1"}\n{"request_id": "par'),
        lambda: _append(path, b'tial"}\n'),
        lambda: os.replace(path, tmp_path / "e.jsonl.1"),
        lambda: _append(path, b'{"request_id": "after-rotation"}\n'),
    ]

    def sleep(_: float) -> None:  # each poll makes the next change to the file
        changes.pop(0)()

    seen: Generator[dict[str, Any], None, None] = follow(JsonlReader(path), sleep=sleep, poll_s=0)
    got = [next(seen)["request_id"] for _ in range(3)]
    seen.close()
    assert got == ["new-1", "partial", "after-rotation"]  # the old line is not repeated


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


# --------------------------------------------------------------------------- audit


@pytest.fixture
def ledger_file() -> Path:
    path = Path("logs/audit.jsonl")
    base = {"record": "request", "schema_version": 1, "latency_ms": 12.0, "model_calls": 1}
    records = [
        base
        | {
            "run_id": "aaaa1111",
            "request_id": "req-a",
            "started": "2026-01-31T10:00:00+00:00",
            "outcome": "success",
            "final_model": "gemma",
            "calls": [{"seq": 2, "t_ms": 5.0, "host": "ws://b", "model": "gemma", "success": True}],
            "events": [{"seq": 1, "t_ms": 1.0, "kind": "failover", "to_host": "ws://b"}],
            "tool_calls": [
                {
                    "seq": 3,
                    "t_ms": 9.0,
                    "name": "read_file",
                    "outcome": "ok",
                    "duration_ms": 1.0,
                    "arguments_preview": '{"path": "notes.md"}',
                }
            ],
        },
        base
        | {
            "run_id": "bbbb2222",
            "request_id": "req-b",
            "started": "2026-01-31T11:00:00+00:00",
            "outcome": "failure",
            "error_class": "AllTargetsFailed",
            "error": "every host is down",
        },
        base | {"run_id": "aaaa3333", "request_id": "req-c", "outcome": "cancelled"},
    ]
    _write(path, records)
    return path


def test_audit_list_and_failed(ledger_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "list", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert main(["audit", "list", "--failed", "--json"]) == 0
    failed = [json.loads(x)["run_id"] for x in capsys.readouterr().out.splitlines()]
    assert failed == ["bbbb2222", "aaaa3333"]
    assert main(["audit", "list", "--failed"]) == 0
    table = capsys.readouterr().out
    assert "AllTargetsFailed" in table
    assert "aaaa1111" not in table


def test_audit_show_timeline_in_order(
    ledger_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "show", "aaaa1111"]) == 0
    out = capsys.readouterr().out
    timeline = out[out.index("timeline") :]
    assert timeline.index("failover") < timeline.index("model call")
    assert timeline.index("model call") < timeline.index("read_file -> ok")
    assert main(["audit", "show", "bbbb", "--json"]) == 0  # a unique prefix
    assert json.loads(capsys.readouterr().out)["error_class"] == "AllTargetsFailed"


def test_audit_show_errors(ledger_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "show", "zzzz"]) == 1
    assert "no audit record with run or request id 'zzzz'" in capsys.readouterr().err
    assert main(["audit", "show", "aaaa"]) == 1  # ambiguous prefix
    assert "matches 2 runs" in capsys.readouterr().err


def test_tail_follow_in_a_real_process_until_ctrl_c(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    _write(path, [_event(1)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "elaria.cli", "events", "tail", "-f", "--json", "--file", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    guard = threading.Timer(60, proc.kill)  # bounds every read below
    guard.start()
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["request_id"] == "req-1"
        _append(path, json.dumps(_event(2)).encode() + b"\n")
        assert json.loads(proc.stdout.readline())["request_id"] == "req-2"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert b"Traceback" not in err


def test_stats_and_audit_read_rotated_files_too(
    ledger_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(Path("logs/inference.jsonl.2"), [_event(1, model="old")])
    _write(Path("logs/inference.jsonl.1"), [_event(2, model="old")])
    _write(Path("logs/inference.jsonl"), [_event(3)])
    assert main(["events", "stats", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["old"]["requests"] == 2
    assert rows["(all)"]["requests"] == 3
    os.replace(ledger_file, "logs/audit.jsonl.1")
    _write(ledger_file, [])
    assert main(["audit", "show", "bbbb2222", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == "bbbb2222"
