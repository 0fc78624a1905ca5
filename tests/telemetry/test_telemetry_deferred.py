"""Lines built by the writer with its batch: what the caller captured is what gets written.

``EventLog.round`` and ``AuditLedger.record`` check and capture values when called and leave
redaction and encoding to the writer (``LineWriter.submit_deferred``). These tests hold the
contract that makes that safe: order is kept, a line that cannot be built is dropped, counted
and reported once without stopping the others, secrets never reach the file, and values that
would overflow or cannot be encoded take the validated path instead of a broken line.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from elaria.lmstudio.rounds import RoundResult
from elaria.resilience import ManualClock
from elaria.telemetry.events import EventLog, InferenceEvent
from elaria.telemetry.ledger import AuditLedger, RequestContext
from elaria.telemetry.writer import JsonlFile, LineWriter

OPENAI_KEY = "sk-proj-4fGh7JkL9mNpQrStUvWx0123"
GITHUB_KEY = "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_deferred_and_ready_lines_keep_their_order(tmp_path: Path) -> None:
    writer = LineWriter(JsonlFile(tmp_path / "w.jsonl"), queue_size=100)
    await writer.start()
    for i in range(6):
        line = f'{{"i": {i}}}\n'.encode()
        if i % 2:
            assert writer.submit_deferred(functools.partial(bytes, line))
        else:
            assert writer.submit(line)
    await writer.aclose()
    assert [row["i"] for row in _rows(tmp_path / "w.jsonl")] == list(range(6))
    assert writer.stats()["dropped"] == 0


async def test_the_time_spent_building_deferred_lines_is_counted(tmp_path: Path) -> None:
    writer = LineWriter(JsonlFile(tmp_path / "w.jsonl"), queue_size=100)

    def slow_line() -> bytes:
        time.sleep(0.02)
        return b'{"i": 0}\n'

    await writer.start()
    writer.submit(b'{"i": 1}\n')  # a ready line costs the writer no building
    await writer.aclose()
    assert writer.stats()["build_seconds"] < 0.02
    writer = LineWriter(JsonlFile(tmp_path / "w.jsonl"), queue_size=100)
    await writer.start()
    writer.submit_deferred(slow_line)
    writer.submit_deferred(slow_line)
    await writer.aclose()
    assert writer.stats()["build_seconds"] >= 0.04


async def test_a_line_that_cannot_be_built_is_dropped_counted_and_reported_once(
    tmp_path: Path,
) -> None:
    reports: list[str] = []
    writer = LineWriter(JsonlFile(tmp_path / "w.jsonl"), queue_size=100, on_failure=reports.append)

    def broken() -> bytes:
        raise ValueError("cannot encode this")

    await writer.start()
    writer.submit(b'{"i": 0}\n')
    writer.submit_deferred(broken)
    writer.submit_deferred(lambda: None)  # a builder may decline: dropped the same way
    writer.submit_deferred(broken)
    writer.submit(b'{"i": 1}\n')
    await writer.aclose()
    assert [row["i"] for row in _rows(tmp_path / "w.jsonl")] == [0, 1]
    stats = writer.stats()
    assert stats["dropped_unbuilt"] == 3
    assert stats["dropped"] == 3
    assert stats["status"] == "degraded"
    assert "3 line(s) dropped: could not be built" in stats["reasons"]
    assert len(reports) == 1
    assert "cannot encode this" in reports[0]


async def test_deferred_lines_are_dropped_when_the_writer_is_not_running(tmp_path: Path) -> None:
    writer = LineWriter(JsonlFile(tmp_path / "w.jsonl"), queue_size=100)
    assert not writer.submit_deferred(lambda: b"{}\n")
    assert writer.stats()["dropped_not_running"] == 1


async def test_round_lines_are_built_later_from_the_values_captured_now(tmp_path: Path) -> None:
    log = EventLog(Path("logs") / "events.jsonl", tenant="acme")
    result = RoundResult(
        text="",
        host=f"https://user:{OPENAI_KEY}@example.com",
        model="scripted-llm",
        prompt_tokens=12,
        predicted_tokens=3,
        total_time_s=0.25,
    )
    async with log:
        assert log.round(result, request_id="r1", run_id="run-1")
        assert log.round(result, request_id="r2", run_id="run-1", latency_s=0.5)
    raw = log.path.read_bytes()
    assert OPENAI_KEY.encode() not in raw
    events = [InferenceEvent.model_validate_json(line) for line in raw.splitlines()]
    assert [(e.request_id, e.latency_ms, e.tokens_in, e.tenant) for e in events] == [
        ("r1", 250.0, 12, "acme"),
        ("r2", 500.0, 12, "acme"),
    ]


async def test_text_utf8_cannot_hold_is_escaped_by_the_validated_path(tmp_path: Path) -> None:
    log = EventLog(Path("logs") / "events.jsonl")
    result = RoundResult(text="", host="h", model="lone \ud800 surrogate", total_time_s=0.1)
    assert log._round_line(result, "r1", None, None) is None  # the fast builder declines
    async with log:
        assert log.round(result, request_id="r1")
    (event,) = _rows(log.path)
    assert event["request_id"] == "r1"
    assert event["model"] == "lone \ud800 surrogate"
    assert log.stats()["dropped"] == 0


def test_seconds_that_overflow_as_milliseconds_take_the_validated_path() -> None:
    log = EventLog(Path("logs") / "events.jsonl")
    result = RoundResult(text="", host="h", model="m", total_time_s=1e306)
    assert log._round_line(result, "r1", None, None) is None


async def test_ledger_records_are_redacted_when_built_and_keep_what_the_run_did(
    tmp_path: Path,
) -> None:
    ledger = AuditLedger(Path("logs") / "audit.jsonl")
    async with ledger:
        ctx = ledger.begin(f"use {OPENAI_KEY} to read notes", run_id="run-1")
        ctx.model_call("ws://h", "m", latency_s=0.1, tokens_in=5, tokens_out=2)
        ctx.event("retry", reason=f"Bearer {GITHUB_KEY}")
        ctx.tool_call("read_file", {"path": "notes.md", "token": GITHUB_KEY}, "ok", 0.01)
        ctx.finish(answer=f"done, key {OPENAI_KEY}")
        assert ledger.record(ctx)
    raw = ledger.path.read_text()
    assert OPENAI_KEY not in raw
    assert GITHUB_KEY not in raw
    (record,) = _rows(ledger.path)
    assert record["outcome"] == "mitigated_success"
    assert [(c["host"], c["tokens_in"]) for c in record["calls"]] == [("ws://h", 5)]
    assert [e["kind"] for e in record["events"]] == ["retry"]
    (tool,) = record["tool_calls"]
    assert tool["name"] == "read_file"
    assert json.loads(tool["arguments_preview"]) == {"path": "notes.md", "token": "[REDACTED]"}
    assert [tool["seq"], record["events"][0]["seq"], record["calls"][0]["seq"]] == [3, 2, 1]
    assert record["prompt_preview"] == "use [REDACTED] to read notes"


async def test_a_ledger_record_that_cannot_be_built_does_not_stop_the_next(
    tmp_path: Path,
) -> None:
    ledger = AuditLedger(Path("logs") / "audit.jsonl")
    async with ledger:
        bad = ledger.begin("first", run_id="run-1")
        bad.meta["broken"] = _Unprintable()
        bad.finish(answer="x")
        ledger.record(bad)
        good = ledger.begin("second", run_id="run-2")
        good.finish(answer="y")
        ledger.record(good)
    assert [r["run_id"] for r in _rows(ledger.path)] == ["run-2"]
    stats = ledger.stats()
    assert stats["dropped_unbuilt"] == 1
    assert stats["status"] == "degraded"


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for this object")


# ------------------------------------------------------------------ entries queued by the run


def test_queued_entries_keep_their_order_and_times_among_direct_ones() -> None:
    from elaria.agent import events as ev

    clock = ManualClock()
    ctx = RequestContext.begin("p", clock=clock)
    round_result = RoundResult(text="", host="h", model="m", prompt_tokens=5, predicted_tokens=2)
    clock.now += 0.1
    ctx.record_model_call(result=round_result, seconds=0.05, request_id="r1")  # queued
    clock.now += 0.1
    ctx.observe(ev.ToolCallStarted(run_id="x", call_id="c1", tool="add", arguments={"a": 1}))
    clock.now += 0.1
    ctx.observe(
        ev.ToolCallFinished(run_id="x", call_id="c1", tool="add", seconds=0.01, result_chars=1)
    )
    assert ctx.calls == []
    assert ctx.tool_calls == []
    clock.now += 0.1
    ctx.event("failover", from_host="h", to_host="h2")  # a direct entry settles the queue first
    clock.now += 0.1
    ctx.observe(ev.FinalAnswer(run_id="x", round=2, text="3"))
    ctx.finish_ok("3", host="h2", model="m2")
    clock.now += 5  # applied much later, by the writer: the times are those of the calls
    record = ctx.to_record()
    assert [record["calls"][0]["seq"], record["tool_calls"][0]["seq"]] == [1, 2]
    assert record["events"][0]["seq"] == 3
    assert record["calls"][0]["t_ms"] == pytest.approx(100.0)
    assert record["tool_calls"][0]["t_ms"] == pytest.approx(300.0)
    assert record["events"][0]["t_ms"] == pytest.approx(400.0)
    assert record["latency_ms"] == pytest.approx(500.0)  # finished when finish_ok was called
    assert record["outcome"] == "mitigated_success"  # the failover counts, applied in order
    assert (record["final_host"], record["final_model"]) == ("h2", "m2")
    assert record["tool_calls"][0]["arguments_preview"] == '{"a": 1}'
    assert record["answer_preview"] == "3"


def test_a_queued_entry_that_cannot_be_applied_is_counted_and_the_rest_kept() -> None:
    ctx = RequestContext.begin("p")
    ctx.observe({"kind": "tool_call_finished", "call_id": "c1"})  # no tool, no seconds
    ctx.observe({"kind": "resilience", "action": "retry", "detail": {"attempt": 2}})
    record = ctx.to_record()
    assert record["dropped_entries"] == 1
    assert [(e["kind"], e["attempt"]) for e in record["events"]] == [("retry", 2)]
    assert record["tool_calls"] == []


def test_the_queue_is_applied_when_it_gets_long() -> None:
    ctx = RequestContext.begin("p")
    for _ in range(1_000):
        ctx.observe({"kind": "history_trimmed", "dropped_messages": 1, "tokens": 10})
    assert len(ctx._queued) < 256
    assert len(ctx.events) > 700
    assert len(ctx.to_record()["events"]) == 1_000


async def test_a_round_the_schema_refuses_is_dropped_by_the_writer_not_raised() -> None:
    log = EventLog(Path("logs") / "events.jsonl")
    good = RoundResult(text="", host="h", model="m", total_time_s=0.1)
    async with log:
        assert log.round(good, request_id="r" * 500)  # too long an id: refused when built
        assert log.round(good, request_id="r2")
    (event,) = _rows(log.path)
    assert event["request_id"] == "r2"
    stats = log.stats()
    assert stats["dropped_unbuilt"] == 1
    assert "1 line(s) dropped: could not be built" in stats["reasons"]


async def test_ledger_lines_stay_valid_json_whatever_the_record_holds() -> None:
    ledger = AuditLedger(Path("logs") / "audit.jsonl")
    async with ledger:
        odd = RequestContext.begin("lone \ud800 surrogate", run_id="run-s")
        odd.event("retry", reason=ValueError("boom"), delay_s=float("nan"))
        odd.finish(answer="ok")
        assert ledger.record(odd)
        plain = RequestContext.begin("plain", run_id="run-p")
        plain.event("retry", reason=ValueError("boom"), delay_s=float("nan"))
        plain.finish(answer="ok")
        assert ledger.record(plain)
    rows = _rows(ledger.path)  # each line parses; no raw surrogate reached the file
    assert [r["run_id"] for r in rows] == ["run-s", "run-p"]
    assert rows[0]["prompt_preview"] == "lone \ud800 surrogate"  # escaped, then read back
    assert rows[0]["events"][0]["reason"] == "boom"  # str() of what JSON has no form for
    assert rows[1]["events"][0]["reason"] == "boom"
    assert rows[1]["events"][0]["delay_s"] is None  # NaN is not JSON: null
    assert ledger.stats()["dropped"] == 0
