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
from elaria.embedded import ScriptedEngine, malformed_call, reply, tool_call
from elaria.errors import ConfigError
from elaria.runtime import Runtime
from elaria.telemetry.logging import reset_logging, setup_logging

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
    # The audit ledger: exactly one record per run, agreeing with the run's own result.
    records = [json.loads(x) for x in (tmp_path / "logs" / "audit.jsonl").read_text().splitlines()]
    by_run = {r["run_id"]: r for r in records}
    assert len(records) == len(by_run) == RUNS
    for result in results:
        record = by_run[result.run_id]
        assert record["outcome"] == "success"
        assert record["model_calls"] == result.rounds
        assert record["tokens_in"] == result.prompt_tokens
        assert record["answer_preview"] == result.answer


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


OPENAI_KEY = "sk-proj-4fGh7JkL9mNpQrStUvWx0123"
GITHUB_KEY = "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
LMSTUDIO_KEY = "sk-lm-Ab12Cd34:Zy98Xw76Vu54Ts32Rq10"
PASSWORD = "correct-horse-battery-staple"


async def test_no_secret_from_prompt_arguments_or_answer_reaches_any_file(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    engine.script(
        malformed_call(f'write_file(path="keys.md", content="api_key={OPENAI_KEY}")'),
        tool_call("read_file", {"path": "../../etc/passwd"}),
        reply(f"Stored. Your token is {GITHUB_KEY}"),
    )
    settings = _settings(ledger_sqlite=True)
    setup_logging(settings.logging.model_copy(update={"console": False, "level": "debug"}))
    try:
        async with Runtime(settings, backend="embedded", engine=engine) as rt:
            async with asyncio.timeout(120):
                result = await rt.run(f"Save my key {LMSTUDIO_KEY} (password={PASSWORD}) to notes")
    finally:
        reset_logging()
    assert GITHUB_KEY in result.answer  # the run itself is untouched; only records are redacted
    record = json.loads((tmp_path / "logs" / "audit.jsonl").read_text().splitlines()[-1])
    kinds = [e["kind"] for e in record["events"]]
    assert kinds.index("repair") < kinds.index("validator_refusal")
    outcomes = {t["name"]: t["outcome"] for t in record["tool_calls"]}
    assert outcomes == {"write_file": "ok", "read_file": "refused"}
    written = b"\n".join(p.read_bytes() for p in (tmp_path / "logs").rglob("*") if p.is_file())
    assert (tmp_path / "logs" / "elaria.jsonl").stat().st_size > 0  # the logs were written too
    assert written.count(b"[REDACTED]") >= 4
    for secret in (OPENAI_KEY, GITHUB_KEY, LMSTUDIO_KEY, PASSWORD, "Zy98Xw76Vu54Ts32Rq10"):
        assert secret.encode() not in written, secret
    # The workspace file itself holds what the user asked to store; it is not a log.
    assert OPENAI_KEY in (tmp_path / "ws" / "keys.md").read_text()
