"""The audit ledger: what a request did, in order, for every outcome, with no secret kept."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from elaria.agent.loop import AgentLoop
from elaria.agent.tools import Tool, ToolRegistry
from elaria.config import Settings
from elaria.errors import ConfigError, HostDown, SecurityViolation
from elaria.lmstudio.rounds import (
    FragmentCallback,
    MalformedCall,
    RequestedCall,
    RoundRequest,
    RoundResult,
)
from elaria.memory.history import ConversationHistory
from elaria.resilience import ManualClock
from elaria.telemetry.ledger import AuditLedger, RequestContext, preview
from elaria.telemetry.logging import current_request_id, current_run_id

LMSTUDIO_KEY = "sk-lm-Ab12Cd34:Zy98Xw76Vu54Ts32Rq10"
OPENAI_KEY = "sk-proj-4fGh7JkL9mNpQrStUvWx0123"
GITHUB_KEY = "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
PASSWORD = "correct-horse-battery-staple"
SECRETS = (LMSTUDIO_KEY, OPENAI_KEY, GITHUB_KEY, PASSWORD, "Zy98Xw76Vu54Ts32Rq10")


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _scan(root: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- RequestContext


def test_prompt_is_hashed_and_previewed_redacted_and_truncated() -> None:
    prompt = f"my key is {OPENAI_KEY} " + "x" * 2000
    ctx = RequestContext.begin(prompt, run_id="r")
    assert ctx.prompt_sha256 == hashlib.sha256(prompt.encode()).hexdigest()
    assert OPENAI_KEY not in ctx.prompt_preview
    assert ctx.prompt_preview.startswith("my key is [REDACTED] xxx")
    assert len(ctx.prompt_preview) == 512 + len("…[truncated]")
    ctx.finish(answer="y" * 5000)
    assert ctx.answer_preview is not None
    assert len(ctx.answer_preview) == 1024 + len("…[truncated]")
    small = RequestContext.begin("abcdef", prompt_preview_chars=3, answer_preview_chars=None)
    small.finish(answer="z" * 5000)
    assert small.prompt_preview == "abc…[truncated]"
    assert small.answer_preview == "z" * 5000


def test_truncation_never_leaves_half_a_secret() -> None:
    # Cut in the middle of the key: redaction ran first, so no recognisable part is left.
    text = "a" * 20 + " " + LMSTUDIO_KEY
    out = preview(text, 30)
    assert "Ab12Cd34" not in out
    assert "sk-lm" not in out


@pytest.mark.parametrize(
    ("events", "error", "outcome"),
    [
        ([], None, "success"),
        (["failover"], None, "mitigated_success"),
        (["approval"], None, "success"),  # an approval is not a mitigation
        (["retry"], RuntimeError("x"), "failure"),
        ([], asyncio.CancelledError(), "cancelled"),
    ],
)
def test_outcome_is_inferred(events: list[str], error: BaseException | None, outcome: str) -> None:
    ctx = RequestContext.begin("p")
    for kind in events:
        ctx.event(kind)
    ctx.finish(answer=None if error else "ok", error=error)
    assert ctx.outcome == outcome


def test_entries_share_one_sequence_with_times_from_the_clock() -> None:
    clock = ManualClock(50.0)
    ctx = RequestContext.begin("p", clock=clock, wall_clock=lambda: 1_700_000_000.0)
    clock.now += 0.5
    ctx.event("failover", from_host="a", to_host="b")
    clock.now += 0.25
    ctx.model_call("b", "m", latency_s=0.2, tokens_in=7, tokens_out=3)
    ctx.tool_call("read_file", {"path": "x", "token": GITHUB_KEY}, "ok", 0.01)
    clock.now += 1
    ctx.finish(answer="done")
    record = ctx.to_record()
    assert [record["events"][0]["seq"], record["calls"][0]["seq"]] == [1, 2]
    assert record["tool_calls"][0]["seq"] == 3
    assert record["events"][0]["t_ms"] == 500.0
    assert record["latency_ms"] == 1750.0
    assert record["started"] == "2023-11-14T22:13:20+00:00"
    assert (record["final_host"], record["final_model"]) == ("b", "m")
    assert (record["tokens_in"], record["tokens_out"], record["model_calls"]) == (7, 3, 1)
    assert GITHUB_KEY not in record["tool_calls"][0]["arguments_preview"]
    assert '"path": "x"' in record["tool_calls"][0]["arguments_preview"]


def test_a_runaway_record_is_bounded() -> None:
    ctx = RequestContext.begin("p")
    for _ in range(1_500):
        ctx.event("retry")
    record = ctx.to_record()
    assert len(record["events"]) == 1_000
    assert record["dropped_entries"] == 500


def test_recorder_adapters_count_each_round_once() -> None:
    ctx = RequestContext.begin("p")
    result = RoundResult(text="t", prompt_tokens=4, predicted_tokens=2, host="h", model="m")
    ctx.record_model_call(result=result, seconds=0.1, request_id="round-1")
    # The loop then reports the same round as an event; it must not count twice.
    ctx.record_agent_event(
        event={"kind": "round_finished", "host": "h", "model": "m", "seconds": 0.1}
    )
    ctx.record_model_error(error=HostDown("gone", host="ws://x"), seconds=0.3)
    ctx.finish_ok("answer", host="h", model="m")
    record = ctx.to_record()
    assert record["model_calls"] == 2
    assert record["calls"][0]["request_id"] == "round-1"
    assert record["calls"][1]["error_class"] == "HostDown"
    assert record["calls"][1]["host"] == "ws://x"
    assert record["outcome"] == "success"


# --------------------------------------------------------------------------- the ledger


async def test_records_are_written_for_success_failure_and_cancellation(tmp_path: Path) -> None:
    ledger = AuditLedger("logs/audit.jsonl", sqlite=True)
    async with ledger:
        async with ledger.request("fine", run_id="run-ok") as ctx:
            ctx.finish(answer="42")
        with pytest.raises(RuntimeError):
            async with ledger.request("doomed", run_id="run-fail"):
                raise RuntimeError(f"backend said {OPENAI_KEY}")
        started = asyncio.Event()

        async def cancelled_run() -> None:
            async with ledger.request("slow", run_id="run-cancel"):
                started.set()
                await asyncio.Event().wait()  # until cancelled

        task = asyncio.create_task(cancelled_run())
        async with asyncio.timeout(5):
            await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    records = {r["run_id"]: r for r in _records(tmp_path / "logs" / "audit.jsonl")}
    assert records["run-ok"]["outcome"] == "success"
    assert records["run-ok"]["answer_preview"] == "42"
    assert records["run-fail"]["outcome"] == "failure"
    assert records["run-fail"]["error_class"] == "RuntimeError"
    assert OPENAI_KEY not in records["run-fail"]["error"]
    assert records["run-cancel"]["outcome"] == "cancelled"
    db = sqlite3.connect(tmp_path / "logs" / "audit.sqlite")
    rows = db.execute("SELECT run_id, outcome FROM requests ORDER BY run_id").fetchall()
    db.close()
    assert rows == [("run-cancel", "cancelled"), ("run-fail", "failure"), ("run-ok", "success")]


async def test_run_summary_records(tmp_path: Path) -> None:
    async with AuditLedger("logs/audit.jsonl", sqlite=True) as ledger:
        ledger.record_run(
            "chat-1", started_wall=100.0, finished_wall=103.5, outcome="success", requests=["a"]
        )
    (record,) = _records(tmp_path / "logs" / "audit.jsonl")
    assert record["record"] == "run"
    assert record["latency_ms"] == 3500.0
    db = sqlite3.connect(tmp_path / "logs" / "audit.sqlite")
    assert db.execute("SELECT run_id FROM runs").fetchall() == [("chat-1",)]
    db.close()


def test_ledger_paths_are_checked_and_settings_apply() -> None:
    with pytest.raises(ConfigError, match=r"telemetry\.ledger_file"):
        AuditLedger("logs/../../audit.jsonl")
    settings = Settings.model_validate(
        {
            "telemetry": {
                "ledger_sqlite": True,
                "prompt_preview_chars": 10,
                "ledger_full_text": False,
            }
        }
    )
    ledger = AuditLedger.from_settings(settings)
    assert ledger.sqlite_path is not None
    assert ledger.sqlite_path.name == "audit.sqlite"
    assert ledger.begin("0123456789abcdef").prompt_preview == "0123456789…[truncated]"
    full = AuditLedger.from_settings(
        Settings.model_validate({"telemetry": {"ledger_full_text": 1}})
    )
    assert full.begin("x" * 5000).prompt_preview == "x" * 5000


# --------------------------------------------------------------------------- with the agent loop


class Script:
    """Stands in for the LM Studio layer at the RoundRequest/RoundResult contract."""

    def __init__(self, *steps: RoundResult) -> None:
        self.steps = list(steps)

    async def predict(
        self, request: RoundRequest, *, on_fragment: FragmentCallback | None = None
    ) -> RoundResult:
        return self.steps.pop(0) if self.steps else RoundResult(text="done")


def _no_parent_paths(value: Any) -> None:
    if ".." in str(value):
        raise SecurityViolation("path.escape", "the path leaves the workspace")


async def test_a_run_that_fails_over_repairs_and_is_refused_has_it_all_in_order(
    tmp_path: Path,
) -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    def write_file(path: str, text: str) -> str:
        """Write a file."""
        raise AssertionError("a refused call must never run")

    script = Script(
        RoundResult(
            text="",
            malformed=[MalformedCall("Failed to parse", raw="add(a=1, b=2)")],
            events=[{"action": "failover", "from_host": "ws://a:1", "to_host": "ws://b:2"}],
            prompt_tokens=30,
            predicted_tokens=8,
            host="ws://b:2",
            model="gemma",
        ),
        RoundResult(
            text="",
            tool_calls=[
                RequestedCall(
                    "write_file",
                    {"path": "../../etc/cron.d/x", "text": f"api_key={OPENAI_KEY}"},
                    id="c9",
                )
            ],
            host="ws://b:2",
            model="gemma",
        ),
        RoundResult(text=f"Done. Your token is {GITHUB_KEY}", host="ws://b:2", model="gemma"),
    )
    settings = Settings()
    loop = AgentLoop(
        script,
        ToolRegistry(
            [Tool.from_function(add), Tool.from_function(write_file, arg_kinds={"path": "path"})]
        ),
        settings,
        ConversationHistory(settings.history),
        validators={"path": _no_parent_paths},
    )
    prompt = f"Use password={PASSWORD} and key {LMSTUDIO_KEY} to add 1 and 2"
    async with AuditLedger("logs/audit.jsonl", sqlite=True) as ledger:
        ctx = ledger.begin(prompt, run_id="run-1")
        try:
            result = await loop.run(prompt, on_event=ctx.observe, run_id="run-1")
            ctx.finish(answer=result.answer)
        finally:
            ledger.record(ctx)
    (record,) = _records(tmp_path / "logs" / "audit.jsonl")
    assert record["outcome"] == "mitigated_success"
    assert record["model_calls"] == 3
    assert (record["final_host"], record["final_model"]) == ("ws://b:2", "gemma")
    timeline = sorted(
        [(e["seq"], e["kind"]) for e in record["events"]]
        + [(t["seq"], f"tool:{t['name']}:{t['outcome']}") for t in record["tool_calls"]]
        + [(c["seq"], "model_call") for c in record["calls"]]
    )
    kinds = [kind for _, kind in timeline]
    assert kinds.index("failover") < kinds.index("repair") < kinds.index("tool:add:ok")
    assert kinds.index("tool:add:ok") < kinds.index("validator_refusal")
    assert kinds.index("validator_refusal") < kinds.index("tool:write_file:refused")
    assert kinds.count("model_call") == 3
    refused = next(t for t in record["tool_calls"] if t["name"] == "write_file")
    assert "../../etc/cron.d/x" in refused["arguments_preview"]
    # No secret from the prompt, the tool arguments or the answer, in any file written.
    written = _scan(tmp_path / "logs")
    assert b"[REDACTED]" in written
    for secret in SECRETS:
        assert secret.encode() not in written, secret


async def test_an_undecodable_prompt_is_still_recorded(tmp_path: Path) -> None:
    ledger = AuditLedger("logs/audit.jsonl")
    async with ledger, ledger.request("read caf\udce9.txt") as ctx:
        ctx.finish(answer="ok")
    (record,) = _records(tmp_path / "logs" / "audit.jsonl")
    assert record["prompt_preview"] == "read caf\udce9.txt"


async def test_log_records_inside_a_request_carry_its_ids() -> None:
    async with AuditLedger("logs/audit.jsonl") as ledger:
        assert current_run_id() is None
        async with ledger.request("p", run_id="run-7") as ctx:
            assert current_run_id() == "run-7"
            assert current_request_id() == ctx.request_id
        assert current_run_id() is None
        assert current_request_id() is None


def test_a_refusal_inside_a_tool_is_recorded_as_a_validator_refusal() -> None:
    ctx = RequestContext.begin("p")
    ctx.observe(
        {"kind": "tool_call_started", "call_id": "c1", "tool": "read", "arguments": {"p": ".."}}
    )
    ctx.observe(
        {
            "kind": "tool_call_failed",
            "call_id": "c1",
            "tool": "read",
            "error_class": "ToolRefused",
            "message": "outside the workspace",
        }
    )
    ctx.observe(
        {
            "kind": "tool_call_failed",
            "call_id": "c2",
            "tool": "read",
            "error_class": "ToolTimeoutError",
            "message": "slow",
        }
    )
    record = ctx.to_record()
    assert [e["kind"] for e in record["events"]] == ["validator_refusal", "tool_error"]
    assert [t["outcome"] for t in record["tool_calls"]] == ["refused", "timeout"]
    assert record["tool_calls"][0]["arguments_preview"] == '{"p": ".."}'
