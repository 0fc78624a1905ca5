"""``elaria bench telemetry``: what the event log, the ledger and logging cost.

Reports, all measured in the same run (the machine is shared: compare ratios, not absolutes):

* ``events_per_s`` / ``ledger_records_per_s`` — emits until the writer has flushed everything;
* ``log_record_us`` — one ``logger.bind(...).info(...)`` through the redacting JSONL sinks,
  ``loguru_null_sink_us`` — the same into a do-nothing sink (loguru's own cost), their ratio
  ``log_overhead_ratio``, and ``redact_us`` for the redaction of a typical record alone;
* ``round`` — agent round time through the real :class:`~elaria.runtime.Runtime` (scripted engine
  behind the embedded server, unmodified SDK) with the event log and the audit ledger on vs off,
  runs alternated between two runtimes so drift hits both alike; ``overhead_ratio`` is on/off of
  the medians. When the ledger is not wired into the Runtime yet, it is attached through the
  run's ``on_event`` hook (``RequestContext.observe``) and recorded after each run, as the run
  recorder does. If the Runtime cannot start here, a simulated round (one event emit and one
  ledger record) is timed instead and ``round.mode`` says ``simulated``.

Files go to ``./logs/bench-telemetry-<id>/`` and are removed afterwards.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from loguru import logger

from elaria.config import LoggingSettings, Settings
from elaria.lmstudio.rounds import RoundResult
from elaria.security.redact import redact
from elaria.telemetry.events import EventLog
from elaria.telemetry.ledger import AuditLedger
from elaria.telemetry.logging import reset_logging, setup_logging


async def run(quick: bool) -> dict[str, Any]:
    bench_dir = Path("logs") / f"bench-telemetry-{uuid.uuid4().hex[:8]}"
    bench_dir.mkdir(parents=True)
    try:
        return {
            "benchmark": "telemetry",
            "quick": quick,
            **await _writers(bench_dir, 2_000 if quick else 50_000),
            **_logging(bench_dir, 500 if quick else 10_000),
            "round": await _rounds(bench_dir, 10 if quick else 100),
        }
    finally:
        shutil.rmtree(bench_dir, ignore_errors=True)


def _round_result(i: int) -> RoundResult:
    return RoundResult(
        text=f"answer {i}",
        prompt_tokens=120,
        predicted_tokens=30,
        time_to_first_token_s=0.02,
        total_time_s=0.2,
        host="ws://127.0.0.1:1234",
        model="bench-model",
    )


async def _writers(bench_dir: Path, count: int) -> dict[str, Any]:
    events = EventLog(bench_dir / "inference.jsonl", queue_size=count + 1)
    started = time.perf_counter()
    async with events:
        for i in range(count):
            events.round(_round_result(i), request_id=f"r{i}", run_id="bench")
    events_s = time.perf_counter() - started
    ledger = AuditLedger(bench_dir / "audit.jsonl", queue_size=count + 1)
    started = time.perf_counter()
    async with ledger:
        for i in range(count):
            ctx = ledger.begin("Summarise the notes in notes.md", run_id=f"run-{i}")
            ctx.model_call("ws://127.0.0.1:1234", "bench-model", latency_s=0.2, tokens_in=120)
            ctx.tool_call("read_file", {"path": "notes.md"}, "ok", 0.001)
            ctx.finish(answer="The notes say hello.")
            ledger.record(ctx)
    ledger_s = time.perf_counter() - started
    return {
        "events": count,
        "events_per_s": round(count / events_s),
        "events_dropped": events.stats()["dropped"],
        "ledger_records_per_s": round(count / ledger_s),
        "ledger_dropped": ledger.stats()["dropped"],
    }


def _logging(bench_dir: Path, count: int) -> dict[str, Any]:
    record = {
        "kind": "tool",
        "tool": "read_file",
        "arguments": {"path": "notes/today.md", "max_bytes": 4096},
        "outcome": "ok",
        "duration_ms": 1.25,
        "headers": {"Authorization": "Bearer abc123def456", "Accept": "application/json"},
    }
    started = time.perf_counter()
    for _ in range(count):
        redact(record)
    redact_s = time.perf_counter() - started
    setup_logging(LoggingSettings(log_dir=bench_dir / "logs", console=False))
    try:
        started = time.perf_counter()
        for i in range(count):
            logger.bind(**record).info(f"tool read_file ok ({i})")
        log_s = time.perf_counter() - started
    finally:
        reset_logging()
    # The same records into a sink that does nothing, without our patcher: loguru's own cost.
    bare = logger.add(lambda message: None, level="INFO")
    try:
        started = time.perf_counter()
        for i in range(count):
            logger.bind(**record).info(f"tool read_file ok ({i})")
        bare_s = time.perf_counter() - started
    finally:
        logger.remove(bare)
    return {
        "redact_us": round(redact_s / count * 1e6, 2),
        "log_record_us": round(log_s / count * 1e6, 2),
        "loguru_null_sink_us": round(bare_s / count * 1e6, 2),
        "log_overhead_ratio": round(log_s / bare_s, 3),
    }


async def _rounds(bench_dir: Path, runs: int) -> dict[str, Any]:
    try:
        return await _runtime_rounds(bench_dir, runs)
    except Exception as exc:  # the Runtime is another component; fall back, and say so
        logger.warning(f"Runtime unusable for the round benchmark ({exc!r}); simulating rounds")
        return await _simulated_rounds(bench_dir, runs * 20, reason=repr(exc))


def _settings(on: bool, bench_dir: Path) -> Settings:
    return Settings.model_validate(
        {
            "agent": {"workspace": str(bench_dir / "workspace")},
            "logging": {"log_dir": str(bench_dir / "runtime-logs")},
            "lmstudio": {"probe_interval_ms": 60_000},
            "telemetry": {"events": on, "ledger": on},
        }
    )


async def _runtime_rounds(bench_dir: Path, runs: int) -> dict[str, Any]:
    from elaria.embedded import ScriptedEngine
    from elaria.runtime import Runtime

    times: dict[bool, list[float]] = {True: [], False: []}
    rounds: dict[bool, int] = {True: 0, False: 0}
    async with (
        Runtime(
            _settings(True, bench_dir),
            backend="embedded",
            engine=ScriptedEngine(),
            builtin_tools=False,
            configure_logging=False,  # the logging part above measured that; leave loguru be
        ) as on,
        Runtime(
            _settings(False, bench_dir),
            backend="embedded",
            engine=ScriptedEngine(),
            builtin_tools=False,
            configure_logging=False,
        ) as off,
    ):
        assert on.telemetry is not None
        built_in_ledger = on.telemetry.ledger is not None
        ledger = None if built_in_ledger else AuditLedger(bench_dir / "audit-rounds.jsonl")
        if ledger is not None:
            await ledger.start()
        try:
            for _ in range(2):  # warm-up: model load, first connection
                await on.run("warm up")
                await off.run("warm up")
            for i in range(runs):
                for telemetry_on in (i % 2 == 0, i % 2 != 0):  # alternate who goes first
                    rt = on if telemetry_on else off
                    started = time.perf_counter()
                    if telemetry_on and ledger is not None:
                        async with ledger.request(f"task {i}") as ctx:
                            result = await rt.run(f"task {i}", on_event=ctx.observe)
                            ctx.finish(answer=result.answer)
                    else:
                        result = await rt.run(f"task {i}")
                    times[telemetry_on].append((time.perf_counter() - started) / result.rounds)
                    rounds[telemetry_on] += result.rounds
        finally:
            if ledger is not None:
                await ledger.aclose()
    return _round_report("runtime", times, rounds, ledger="runtime" if built_in_ledger else "hook")


async def _simulated_rounds(bench_dir: Path, rounds_n: int, *, reason: str) -> dict[str, Any]:
    times: dict[bool, list[float]] = {True: [], False: []}
    async with (
        EventLog(bench_dir / "sim-inference.jsonl") as events,
        AuditLedger(bench_dir / "sim-audit.jsonl") as ledger,
    ):
        for i in range(rounds_n):
            for telemetry_on in (i % 2 == 0, i % 2 != 0):
                started = time.perf_counter()
                result = _round_result(i)
                await asyncio.sleep(0)  # the round's own await on the model
                if telemetry_on:
                    events.round(result, request_id=f"s{i}")
                    ctx = ledger.begin(f"task {i}")
                    ctx.model_call(result.host, result.model, latency_s=result.total_time_s)
                    ctx.finish(answer=result.text)
                    ledger.record(ctx)
                times[telemetry_on].append(time.perf_counter() - started)
    report = _round_report("simulated", times, {True: rounds_n, False: rounds_n}, ledger="direct")
    report["why_simulated"] = reason
    return report


def _round_report(
    mode: str, times: dict[bool, list[float]], rounds: dict[bool, int], *, ledger: str
) -> dict[str, Any]:
    on_ms = statistics.median(times[True]) * 1000
    off_ms = statistics.median(times[False]) * 1000
    return {
        "mode": mode,
        "ledger_attached": ledger,
        "samples_each": len(times[True]),
        "rounds_on": rounds[True],
        "rounds_off": rounds[False],
        "median_round_ms_on": round(on_ms, 3),
        "median_round_ms_off": round(off_ms, 3),
        "overhead_ratio": round(on_ms / off_ms, 3) if off_ms else None,
    }
