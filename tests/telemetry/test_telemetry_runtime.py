"""Telemetry through the real Runtime: the scripted engine behind the embedded server, the
unmodified SDK, the pool — and the inference event log written by every run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from elaria.config import Settings
from elaria.embedded import ScriptedEngine
from elaria.errors import ConfigError
from elaria.runtime import Runtime

RUNS = 20


def _settings(**telemetry: Any) -> Settings:
    return Settings.model_validate(
        {
            "agent": {"workspace": "ws"},
            "lmstudio": {"probe_interval_ms": 200},
            "telemetry": telemetry,
        }
    )


async def test_twenty_concurrent_runs_one_valid_line_per_request(tmp_path: Path) -> None:
    async with Runtime(
        _settings(), backend="embedded", engine=ScriptedEngine(), builtin_tools=False
    ) as rt:
        async with asyncio.timeout(120):
            results = await asyncio.gather(*(rt.run(f"task number {n}") for n in range(RUNS)))
    lines = (tmp_path / "logs" / "inference.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""
    events = [json.loads(line) for line in lines[:-1]]  # none partial, none interleaved
    assert len(events) == sum(r.rounds for r in results)
    for result in results:
        mine = [e for e in events if e["run_id"] == result.run_id]
        assert len(mine) == result.rounds
        assert sum(e["tokens_in"] for e in mine) == result.prompt_tokens
        assert all(e["success"] and e["provider"] == "embedded" for e in mine)
    assert len({e["request_id"] for e in events}) == len(events)


async def test_a_broken_event_log_never_fails_a_run(tmp_path: Path) -> None:
    # A regular file sits where the event log's directory should be: writing fails for
    # everyone, root included.
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "blocked").write_text("")
    reports: list[str] = []
    handler = logger.add(
        lambda m: reports.append(m.record["message"]),
        level="ERROR",
        filter=lambda r: "inference event log" in r["message"],
    )
    try:
        async with Runtime(
            _settings(events_file="blocked/inference.jsonl"),
            backend="embedded",
            engine=ScriptedEngine(),
            builtin_tools=False,
        ) as rt:
            async with asyncio.timeout(120):
                results = await asyncio.gather(*(rt.run(f"task {n}") for n in range(5)))
            assert all(r.answer for r in results)
    finally:
        logger.remove(handler)
    assert rt.telemetry is not None
    events = rt.telemetry.stats()["events"]  # after close: everything queued was attempted
    assert events["failing"] is True
    assert events["failed_writes"] >= 1
    assert events["lines_dropped"] == sum(r.rounds for r in results)
    assert len(reports) == 1


@pytest.mark.parametrize("events_file", ["../outside.jsonl", "/etc/elaria-events.jsonl"])
async def test_a_log_path_outside_is_refused_at_start_up(events_file: str) -> None:
    with pytest.raises(ConfigError, match="outside the allowed log directories"):
        async with Runtime(
            _settings(events_file=events_file),
            backend="embedded",
            engine=ScriptedEngine(),
            builtin_tools=False,
        ):
            pass
