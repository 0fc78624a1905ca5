"""The guard pipeline, retry budget and round state: sans-I/O, an injected clock."""

from __future__ import annotations

from typing import Any

import pytest

from elaria.agent.approval import ApprovalPolicy
from elaria.agent.guard import Guard, RetryBudget, call_signature
from elaria.agent.state import CallRecord, RoundState, RunState, result_text
from elaria.agent.tools import Tool, ToolRegistry
from elaria.config import AgentSettings
from elaria.errors import (
    LoopDetected,
    SecurityViolation,
    ToolArgumentsError,
    ToolBudgetExhausted,
    ToolDenied,
    ToolRefused,
    UnknownToolError,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def read_file(path: str) -> str:
    """Read a file."""
    return path


def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """Echo."""
    return payload


def refuse_parent(value: Any) -> None:
    if ".." in str(value):
        raise SecurityViolation("path.escape", f"{value!r} leaves the workspace")


def make_guard(clock: FakeClock | None = None, **agent: Any) -> Guard:
    settings = AgentSettings.model_validate(agent)
    registry = ToolRegistry(
        [
            Tool.from_function(read_file, arg_kinds={"path": "path"}),
            Tool.from_function(echo),
        ]
    )
    return Guard(
        registry,
        settings,
        ApprovalPolicy(settings),
        validators={"path": refuse_parent},
        clock=clock or FakeClock(),
    )


def test_check_runs_schema_then_keys_then_validators() -> None:
    guard = make_guard(max_argument_chars=20)
    tool, args = guard.check("read_file", {"path": "notes/a.md"})
    assert (tool.name, args) == ("read_file", {"path": "notes/a.md"})
    assert guard.check("read_file", '{"path": "x",}')[1] == {"path": "x"}
    with pytest.raises(UnknownToolError):
        guard.check("nope", {})
    with pytest.raises(ToolArgumentsError, match="path"):
        guard.check("read_file", {})
    with pytest.raises(ToolRefused) as refused:
        guard.check("echo", {"payload": {"__proto__": {"polluted": True}}})
    assert refused.value.rule.startswith("keys.")
    with pytest.raises(ToolRefused) as too_long:
        guard.check("read_file", {"path": "x" * 21})
    assert too_long.value.rule == "length.argument"
    with pytest.raises(ToolRefused) as escape:
        guard.check("read_file", {"path": "../etc/passwd"})
    assert escape.value.rule == "path.escape"
    assert "leaves the workspace" in escape.value.to_model_text()


def test_rate_limit_is_a_sliding_window_per_tool() -> None:
    clock = FakeClock()
    guard = make_guard(clock, tool_calls_per_minute=2, max_repeated_calls=10)
    tool = guard.registry.get("read_file")
    guard.admit(tool, {"path": "a"})
    guard.admit(tool, {"path": "b"})
    with pytest.raises(ToolDenied, match="rate limit"):
        guard.admit(tool, {"path": "c"})
    guard.admit(guard.registry.get("echo"), {"payload": {}})  # another tool is unaffected
    clock.now += 61
    guard.admit(tool, {"path": "c"})


def test_repeated_identical_calls_end_the_run_at_the_limit() -> None:
    guard = make_guard(max_repeated_calls=3)
    guard.observe("read_file", {"path": "a"})
    guard.observe("read_file", {"path": "a"})
    guard.observe("read_file", {"path": "b"})  # a different call resets the count
    guard.observe("read_file", {"path": "b"})
    with pytest.raises(LoopDetected) as info:
        guard.observe("read_file", {"path": "b"})
    assert info.value.repeats == 3


def test_signature_ignores_key_order() -> None:
    assert call_signature("t", {"a": 1, "b": 2}) == call_signature("t", {"b": 2, "a": 1})
    assert call_signature("t", None) == call_signature("t", {})


def test_retry_budget_counts_per_tool_and_resets_on_success() -> None:
    budget = RetryBudget(2)
    err = ToolArgumentsError("bad", tool="t")
    assert budget.fail("t", err) == 1
    assert budget.fail("t", err) == 0
    budget.succeed("t")
    assert budget.fail("t", err) == 1
    assert budget.fail("u", err) == 1
    budget.fail("t", err)
    with pytest.raises(ToolBudgetExhausted) as info:
        budget.fail("t", err)
    assert info.value.tool == "t"
    assert info.value.last is err
    with pytest.raises(ToolBudgetExhausted):
        RetryBudget(0).fail("t", err)


def test_round_state_never_gives_a_call_without_its_result() -> None:
    state = RoundState(1, "Let me look.")
    state.calls = [CallRecord("c1", "read_file", {"path": "a"}), CallRecord("c2", "echo", {})]
    state.calls[0].record("ok", "contents", executed=True)
    with pytest.raises(ValueError, match="c2"):
        state.messages()
    assert state.close_pending() == 1
    assistant, tool = state.messages()
    assert assistant["content"][0] == {"type": "text", "text": "Let me look."}
    assert [p["toolCallRequest"]["id"] for p in assistant["content"][1:]] == ["c1", "c2"]
    assert [p["toolCallId"] for p in tool["content"]] == ["c1", "c2"]
    assert tool["content"][1]["content"].startswith("Error: the run was cancelled")
    with pytest.raises(ValueError, match="final status"):
        state.calls[0].record("pending", "x")


def test_run_state_counts_executed_calls() -> None:
    run = RunState()
    done = CallRecord("c1", "read_file", {"path": "a"})
    done.record("ok", "text", executed=True)
    failed = CallRecord("c2", "read_file", {"path": "b"})
    failed.record("error", "Error", executed=False)
    run.add_round(RoundState(1, "", [done, failed]))
    assert run.executed == 1
    assert [c.call_id for c in run.calls] == ["c1", "c2"]
    assert done.summary()["status"] == "ok"


def test_result_text_follows_the_sdk_rule() -> None:
    assert result_text("plain") == "plain"
    assert result_text({"a": [1, "é"]}) == '{"a": [1, "é"]}'
    assert result_text(3) == "3"
