"""Inference events: the schema, the allowed directories, concurrency, failing disks."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from pydantic import ValidationError

from elaria.config import LoggingSettings, Settings, TelemetrySettings
from elaria.errors import ConfigError
from elaria.lmstudio.rounds import RoundResult
from elaria.telemetry.events import EventLog, InferenceEvent, cost_usd
from elaria.telemetry.logging import request_context, run_context
from elaria.telemetry.query import JsonlReader


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    captured: list[dict[str, Any]] = []
    handler = logger.add(
        lambda m: captured.append(
            {"level": m.record["level"].name, "message": m.record["message"]}
        ),
        level="DEBUG",
    )
    yield captured
    logger.remove(handler)


def _event(**kw: Any) -> InferenceEvent:
    base: dict[str, Any] = {
        "request_id": "r1",
        "provider": "embedded",
        "host": "ws://127.0.0.1:1",
        "model": "m",
        "latency_ms": 12.5,
        "success": True,
    }
    return InferenceEvent(**(base | kw))


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    "bad",
    [
        {"latency_ms": -1},
        {"tokens_in": -1},
        {"tokens_out": -5},
        {"cost_usd": -0.01},
        {"cost_usd": float("nan")},
        {"time_to_first_token_ms": -3},
        {"provider": "openai"},
        {"request_id": ""},
        {"unknown_field": 1},
    ],
)
def test_invalid_events_are_refused_when_built(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _event(**bad)


def test_an_event_line_is_versioned_timestamped_and_redacted() -> None:
    event = _event(meta={"authorization": "Bearer abcdefgh12345", "note": "fine"})
    data = json.loads(event.to_line())
    assert data["schema_version"] == 1
    assert data["created"].endswith("Z") or "+00:00" in data["created"]
    assert data["meta"] == {"authorization": "[REDACTED]", "note": "fine"}
    assert event.to_line().endswith(b"\n")
    assert event.to_line().count(b"\n") == 1


def test_cost_is_computed_and_must_be_non_negative() -> None:
    assert cost_usd(600, 400, 0.5) == pytest.approx(0.5)
    assert cost_usd(0, 0, 0.0) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        cost_usd(1, 1, -1.0)
    with pytest.raises(ValueError, match="non-negative"):
        cost_usd(1, 1, float("inf"))
    with pytest.raises(ValidationError):
        TelemetrySettings(cost_per_1k_tokens=-0.5)


def test_an_implausible_price_is_warned_about(records: list[dict[str, Any]]) -> None:
    EventLog("logs/e.jsonl", cost_per_1k_tokens=250.0)
    assert any(r["level"] == "WARNING" and "cost_per_1k_tokens" in r["message"] for r in records)
    records.clear()
    EventLog("logs/e.jsonl", cost_per_1k_tokens=2.0)
    assert records == []


# --------------------------------------------------------------------------- allowed paths


def test_paths_inside_logs_and_the_data_dir_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert EventLog("logs/inference.jsonl").path == (tmp_path / "logs" / "inference.jsonl")
    assert EventLog("logs/sub/../e.jsonl").path == tmp_path / "logs" / "e.jsonl"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    inside = tmp_path / "xdg" / "elaria" / "events" / "e.jsonl"
    assert EventLog(inside).path == inside


@pytest.mark.parametrize(
    "candidate",
    ["outside.jsonl", "logs/../outside.jsonl", "logs/../../x.jsonl", "logs", "/etc/passwd"],
)
def test_paths_outside_are_refused_at_start_up(candidate: str) -> None:
    with pytest.raises(ConfigError) as info:
        EventLog(candidate)
    text = str(info.value)
    assert "outside the allowed log directories" in text
    assert "telemetry.events_file" in text


def test_symlinks_out_of_logs_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "logs").mkdir()
    os.symlink(outside, tmp_path / "logs" / "linked-dir")
    os.symlink(outside / "e.jsonl", tmp_path / "logs" / "dangling.jsonl")
    for candidate in ("logs/linked-dir/e.jsonl", "logs/dangling.jsonl"):
        with pytest.raises(ConfigError):
            EventLog(candidate)
    assert list(outside.iterdir()) == []


def test_from_settings_checks_the_configured_directory() -> None:
    settings = Settings(logging=LoggingSettings(log_dir=Path("elsewhere")))
    with pytest.raises(ConfigError, match="outside"):
        EventLog.from_settings(settings)
    ok = EventLog.from_settings(Settings(telemetry=TelemetrySettings(events_file="custom.jsonl")))
    assert ok.path.name == "custom.jsonl"


# --------------------------------------------------------------------------- writing


def _round(i: int, host: str = "ws://127.0.0.1:1234") -> RoundResult:
    return RoundResult(
        text=f"answer {i}",
        prompt_tokens=100 + i,
        predicted_tokens=20,
        time_to_first_token_s=0.05,
        total_time_s=0.5,
        host=host,
        model="gemma-3-270m",
        provider="embedded",
    )


async def test_round_and_failed_round_fill_the_event(tmp_path: Path) -> None:
    async with EventLog("logs/e.jsonl", cost_per_1k_tokens=2.0, tenant="acme", tier="gold") as log:
        with run_context("run-9"), request_context("req-9"):
            assert log.round(_round(1), attempt=1)
        assert log.failed_round(
            TimeoutError("slow"), host="ws://h", model="m", latency_s=2.0, request_id="req-10"
        )
    ok, failed = _lines(tmp_path / "logs" / "e.jsonl")
    assert ok["request_id"] == "req-9"
    assert ok["run_id"] == "run-9"
    assert ok["provider"] == "embedded"
    assert ok["latency_ms"] == pytest.approx(500.0)
    assert ok["time_to_first_token_ms"] == pytest.approx(50.0)
    assert (ok["tokens_in"], ok["tokens_out"]) == (101, 20)
    assert ok["cost_usd"] == pytest.approx(121 / 1000 * 2.0)
    assert (ok["tenant"], ok["project"], ok["tier"]) == ("acme", None, "gold")
    assert ok["meta"] == {"stop_reason": "eosFound", "attempt": 1}
    assert failed["success"] is False
    assert failed["error_class"] == "TimeoutError"
    assert failed["provider"] == "lmstudio"


async def test_twenty_concurrent_runs_write_exactly_one_whole_line_per_request(
    tmp_path: Path,
) -> None:
    per_run = 50
    async with EventLog("logs/e.jsonl") as log:

        async def run(n: int) -> int:
            written = 0
            for i in range(per_run):
                written += log.round(_round(i), request_id=f"run{n}-req{i}", run_id=f"run{n}")
                await asyncio.sleep(0)  # interleave with the other 19 runs
            return written

        results = await asyncio.gather(*(run(n) for n in range(20)))
    lines = (tmp_path / "logs" / "e.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""
    events = [json.loads(line) for line in lines[:-1]]  # every line parses: none is partial
    assert len(events) == sum(results) == 20 * per_run
    ids = [e["request_id"] for e in events]
    assert len(set(ids)) == len(ids)
    for n in range(20):
        assert sum(1 for e in events if e["run_id"] == f"run{n}") == results[n]
    assert log.stats()["dropped"] == 0


_WRITER_PROCESS = """
import asyncio, sys
from elaria.telemetry.events import EventLog, InferenceEvent

async def main(tag):
    async with EventLog("logs/shared.jsonl") as log:
        for i in range(200):
            log.emit(InferenceEvent(request_id=f"{tag}-{i}", provider="lmstudio", host="h",
                                    model="m", latency_ms=1, success=True,
                                    meta={"pad": tag * 3000}))
            await asyncio.sleep(0)

asyncio.run(main(sys.argv[1]))
"""


def test_concurrent_processes_never_interleave_lines(tmp_path: Path) -> None:
    # Lines of ~3 KB, larger than a pipe buffer, from 3 processes appending to one file.
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER_PROCESS, tag], cwd=tmp_path)
        for tag in ("a", "b", "c")
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    events = _lines(tmp_path / "logs" / "shared.jsonl")
    assert len(events) == 600
    for event in events:
        tag = event["request_id"].split("-")[0]
        assert event["meta"]["pad"] == tag * 3000


async def test_an_unwritable_log_leaves_callers_unaffected_and_is_reported_once(
    tmp_path: Path, records: list[dict[str, Any]]
) -> None:
    # Root ignores read-only permissions, so make the directory impossible instead: its name is
    # taken by a regular file.
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "blocked").write_text("a file, not a directory")
    log = EventLog("logs/blocked/e.jsonl")
    async with log:
        accepted = []
        for i in range(30):
            accepted.append(log.round(_round(i)))
            await asyncio.sleep(0)  # let the writer take several batches
    assert accepted == [True] * 30  # emit never fails the caller
    stats = log.stats()
    assert stats["lines_dropped"] == 30
    assert stats["failed_writes"] == 1
    assert stats["failing"] is True
    assert stats["last_error"].startswith("FileExistsError")
    assert stats["status"] == "degraded"  # what the health snapshot reads
    assert "cannot write e.jsonl" in stats["reasons"][0]
    errors = [r for r in records if "inference event log" in r["message"]]
    assert len(errors) == 1
    assert errors[0]["level"] == "ERROR"


async def test_emit_without_start_is_dropped_counted_and_reported_once(
    records: list[dict[str, Any]],
) -> None:
    log = EventLog("logs/e.jsonl")
    assert not log.emit(_event())
    assert not log.emit(_event())
    assert log.stats()["dropped_not_running"] == 2
    assert sum("not running" in r["message"] for r in records) == 1


async def test_the_event_log_rotates_and_readers_see_every_file_in_order(tmp_path: Path) -> None:
    async with EventLog("logs/e.jsonl", rotate_bytes=4_000, keep=3) as log:
        for i in range(100):
            log.round(_round(i), request_id=f"req-{i:03d}")
            if i % 10 == 0:
                await asyncio.sleep(0)
    names = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert names == ["e.jsonl", "e.jsonl.1", "e.jsonl.2", "e.jsonl.3"]
    ids = [e["request_id"] for e in JsonlReader(tmp_path / "logs" / "e.jsonl", True)]
    assert ids == sorted(ids)  # oldest file first, each in order
    assert ids[-1] == "req-099"
    assert len(ids) < 100  # the oldest files were let go: the log is bounded


def test_from_settings_rotates_at_the_logging_size() -> None:
    log = EventLog.from_settings(Settings(logging=LoggingSettings(rotation_mb=3)))
    assert log.stats()["path"].endswith("inference.jsonl")
    assert log._writer.file._max_bytes == 3 * 1024 * 1024
