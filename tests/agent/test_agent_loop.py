"""The agent loop over a scripted predictor (no server): rounds, calls, guard, budget, events.

The predictor here stands in for the LM Studio layer at the pinned ``RoundRequest`` /
``RoundResult`` contract; the same behaviours are covered end to end through the unmodified SDK
and the embedded server in ``test_agent_runtime.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from elaria.agent import events as ev
from elaria.agent.approval import (
    Answer,
    ApprovalAnswer,
    ApprovalPolicy,
    ApprovalRequest,
    ApprovalStore,
)
from elaria.agent.loop import AgentLoop
from elaria.agent.tools import Tool, ToolRegistry
from elaria.config import Settings
from elaria.errors import (
    LoopDetected,
    SecurityViolation,
    ToolBudgetExhausted,
    TransientBackendError,
)
from elaria.lmstudio.rounds import (
    FragmentCallback,
    MalformedCall,
    RequestedCall,
    RoundRequest,
    RoundResult,
)
from elaria.memory.history import ConversationHistory

Step = RoundResult | BaseException | Callable[[RoundRequest], RoundResult]


class ScriptedPredictor:
    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests: list[RoundRequest] = []

    async def predict(
        self, request: RoundRequest, *, on_fragment: FragmentCallback | None = None
    ) -> RoundResult:
        self.requests.append(request)
        step = self.steps.pop(0) if self.steps else RoundResult(text="done")
        if isinstance(step, BaseException):
            raise step
        result = step(request) if callable(step) else step
        if on_fragment is not None and result.text:
            on_fragment(result.text)
        return result


def calls(*items: tuple[str, dict[str, Any]], text: str = "") -> RoundResult:
    return RoundResult(
        text=text,
        tool_calls=[
            RequestedCall(name, args, id=f"c{i}") for i, (name, args) in enumerate(items, 1)
        ],
        prompt_tokens=10,
        predicted_tokens=5,
    )


class Counter:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def tools(self) -> list[Tool]:
        def add(a: int, b: int) -> int:
            """Add two numbers."""
            self.counts["add"] = self.counts.get("add", 0) + 1
            return a + b

        async def lookup(key: str) -> dict[str, str]:
            """Look a key up."""
            self.counts["lookup"] = self.counts.get("lookup", 0) + 1
            if key == "boom":
                raise RuntimeError("kaboom")
            if key == "secret":
                raise SecurityViolation("path.escape", "that file is outside the workspace")
            return {"key": key, "value": key.upper()}

        def write_file(path: str, text: str) -> str:
            """Write a file."""
            self.counts["write_file"] = self.counts.get("write_file", 0) + 1
            return f"wrote {len(text)} characters to {path}"

        return [
            Tool.from_function(add),
            Tool.from_function(lookup),
            Tool.from_function(write_file, arg_kinds={"path": "path"}),
        ]


def make_loop(
    predictor: ScriptedPredictor, counter: Counter, **agent: Any
) -> tuple[AgentLoop, list[ev.AgentEvent]]:
    settings = Settings.model_validate({"agent": agent})
    loop = AgentLoop(
        predictor,
        ToolRegistry(counter.tools()),
        settings,
        ConversationHistory(settings.history),
    )
    return loop, []


def kinds(events: Sequence[ev.AgentEvent]) -> list[str]:
    return [e.kind for e in events if e.kind != "text_fragment"]


async def test_several_tools_over_several_rounds_then_an_answer() -> None:
    counter = Counter()
    predictor = ScriptedPredictor(
        calls(("add", {"a": 1, "b": 2}), text="Adding."),
        calls(("lookup", {"key": "x"})),
        RoundResult(text="The sum is 3 and x is X.", prompt_tokens=20, predicted_tokens=8),
    )
    loop, events = make_loop(predictor, counter)
    result = await loop.run("add and look up", on_event=events.append)
    assert result.answer == "The sum is 3 and x is X."
    assert result.rounds == 3
    assert [c["tool"] for c in result.tool_calls] == ["add", "lookup"]
    assert result.prompt_tokens == 40
    assert result.predicted_tokens == 18
    assert counter.counts == {"add": 1, "lookup": 1}
    second = predictor.requests[1].messages
    assert second[-1]["role"] == "tool"
    assert second[-1]["content"][0] == {
        "type": "toolCallResult",
        "content": "3",
        "toolCallId": "c1",
    }
    assert second[-2]["content"][0] == {"type": "text", "text": "Adding."}
    assert predictor.requests[2].messages[-1]["content"][0]["content"] == (
        '{"key": "x", "value": "X"}'
    )
    assert kinds(events)[:6] == [
        "run_started",
        "round_started",
        "round_finished",
        "tool_call_requested",
        "tool_call_approved",
        "tool_call_started",
    ]
    assert kinds(events)[-1] == "final_answer"
    assert any(isinstance(e, ev.TextFragment) and e.text == "Adding." for e in events)


async def test_parallel_calls_run_concurrently_within_the_bound() -> None:
    running = 0
    peak = 0
    both_started = asyncio.Event()

    async def slow(n: int) -> int:
        """Wait for the other call."""
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 2:
            both_started.set()
        async with asyncio.timeout(5):
            await both_started.wait()
        running -= 1
        return n

    predictor = ScriptedPredictor(
        calls(("slow", {"n": 1}), ("slow", {"n": 2})), RoundResult(text="ok")
    )
    settings = Settings.model_validate({"agent": {"max_parallel_tools": 2}})
    loop = AgentLoop(
        predictor,
        ToolRegistry([Tool.from_function(slow)]),
        settings,
        ConversationHistory(settings.history),
    )
    result = await loop.run("go")
    assert peak == 2
    assert [c["status"] for c in result.tool_calls] == ["ok", "ok"]
    results = predictor.requests[1].messages[-1]["content"]
    assert [r["content"] for r in results] == ["1", "2"]


async def test_unknown_tool_bad_arguments_and_a_failing_tool_reach_the_model() -> None:
    counter = Counter()
    predictor = ScriptedPredictor(
        calls(("nosuch", {}), ("add", {"a": "x"}), ("lookup", {"key": "boom"})),
        RoundResult(text="sorry"),
    )
    loop, events = make_loop(predictor, counter)
    result = await loop.run("try things", on_event=events.append)
    texts = [r["content"] for r in predictor.requests[1].messages[-1]["content"]]
    assert "there is no tool named 'nosuch'" in texts[0]
    assert "add, lookup, write_file" in texts[0]
    assert "argument 'a'" in texts[1]
    assert "missing required argument 'b'" in texts[1]
    assert "RuntimeError: kaboom" in texts[2]
    assert result.answer == "sorry"
    failed = [e for e in events if isinstance(e, ev.ToolCallFailed)]
    assert [f.error_class for f in failed] == [
        "UnknownToolError",
        "ToolArgumentsError",
        "ToolExecutionError",
    ]
    assert counter.counts == {"lookup": 1}


async def test_a_validator_refusal_inside_a_tool_is_readable_for_the_model() -> None:
    counter = Counter()
    predictor = ScriptedPredictor(calls(("lookup", {"key": "secret"})), RoundResult(text="ok"))
    loop, _ = make_loop(predictor, counter)
    await loop.run("read the secret")
    text = predictor.requests[1].messages[-1]["content"][0]["content"]
    assert text.startswith("Error: that file is outside the workspace")


async def test_malformed_calls_are_repaired_or_explained() -> None:
    counter = Counter()
    predictor = ScriptedPredictor(
        RoundResult(
            text="",
            malformed=[
                MalformedCall("Failed to parse", raw="<tool_call>{'name': 'add', 'arguments': "),
                MalformedCall("Failed to parse", raw="add(a=1, b=2)"),
                MalformedCall("Failed to parse", raw="I want to add things"),
            ],
        ),
        RoundResult(text="3"),
    )
    loop, events = make_loop(predictor, counter)
    await loop.run("add", on_event=events.append)
    texts = [r["content"] for r in predictor.requests[1].messages[-1]["content"]]
    assert "missing required argument 'a'" in texts[0]
    assert texts[1] == "3"
    assert "could not be parsed (Failed to parse)" in texts[2]
    repaired = [e for e in events if isinstance(e, ev.ToolCallRepaired)]
    assert [(r.tool, r.method) for r in repaired] == [("add", "python_call")]
    assert counter.counts == {"add": 1}


async def test_a_call_leaked_into_text_is_repaired_and_run() -> None:
    counter = Counter()
    predictor = ScriptedPredictor(
        RoundResult(text='Sure. <tool_call>{"name": "add", "arguments": {"a": 2, "b": 2}}'),
        RoundResult(text="4"),
    )
    loop, _ = make_loop(predictor, counter)
    result = await loop.run("add")
    assert result.answer == "4"
    assert counter.counts == {"add": 1}
    assistant = predictor.requests[1].messages[-2]
    assert assistant["content"][0] == {"type": "text", "text": "Sure."}


async def test_repeated_identical_calls_stop_the_run() -> None:
    counter = Counter()
    same = calls(("lookup", {"key": "a"}))
    predictor = ScriptedPredictor(same, same, same, same)
    loop, events = make_loop(predictor, counter, max_repeated_calls=3, max_iterations=10)
    with pytest.raises(LoopDetected):
        await loop.run("loop", on_event=events.append)
    assert counter.counts == {"lookup": 2}
    assert isinstance(events[-1], ev.RunFailed)
    messages = loop.history.get_all()
    assert messages[-1]["role"] == "tool"  # the stopped call has its result in history


async def test_budget_exhausted_ends_the_run_with_a_clear_error() -> None:
    counter = Counter()
    bad = calls(("add", {"a": 1}))
    predictor = ScriptedPredictor(
        bad, calls(("add", {"a": 2})), calls(("add", {"a": 3})), calls(("add", {"a": 4}))
    )
    loop, _ = make_loop(predictor, counter, tool_retry_budget=2, max_iterations=10)
    with pytest.raises(ToolBudgetExhausted) as info:
        await loop.run("add")
    assert info.value.tool == "add"
    assert info.value.attempts == 3
    assert "missing required argument 'b'" in str(info.value)
    assert len(predictor.requests) == 3


async def test_the_last_round_is_sent_without_tools() -> None:
    counter = Counter()
    predictor = ScriptedPredictor(
        calls(("lookup", {"key": "a"})),
        calls(("lookup", {"key": "b"})),
        RoundResult(text="final"),
    )
    loop, events = make_loop(predictor, counter, max_iterations=3)
    result = await loop.run("go", on_event=events.append)
    assert [r.tools is None for r in predictor.requests] == [False, False, True]
    assert result.answer == "final"
    started = [e for e in events if isinstance(e, ev.RoundStarted)]
    assert [s.tools_enabled for s in started] == [True, True, False]


async def test_a_transient_error_retries_the_round_without_rerunning_tools() -> None:
    counter = Counter()
    predictor = ScriptedPredictor(
        calls(("add", {"a": 1, "b": 1})),
        TransientBackendError("connection lost", host="h"),
        RoundResult(text="2"),
    )
    settings = Settings()
    sleeps: list[float] = []

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    loop = AgentLoop(
        predictor,
        ToolRegistry(counter.tools()),
        settings,
        ConversationHistory(settings.history),
        sleep=no_sleep,
    )
    events: list[ev.AgentEvent] = []
    result = await loop.run("add", on_event=events.append)
    assert result.answer == "2"
    assert counter.counts == {"add": 1}
    assert predictor.requests[1].messages == predictor.requests[2].messages
    retries = [e for e in events if isinstance(e, ev.ResilienceEvent)]
    assert [r.action for r in retries] == ["retry"]
    assert len(sleeps) == 1
    assert result.round_details[1]["attempts"] == 2


async def test_approval_allow_deny_always_with_the_rule_saved(tmp_path: Any) -> None:
    counter = Counter()
    answers: list[Answer | ApprovalAnswer] = [
        "no",
        ApprovalAnswer("always", argument="path", pattern="notes/*"),
    ]
    asked: list[ApprovalRequest] = []

    async def approve(request: ApprovalRequest) -> Answer | ApprovalAnswer:
        asked.append(request)
        return answers.pop(0)

    predictor = ScriptedPredictor(
        calls(("write_file", {"path": "notes/a.md", "text": "x"})),
        calls(("write_file", {"path": "notes/b.md", "text": "y"})),
        calls(("write_file", {"path": "notes/c.md", "text": "z"})),
        RoundResult(text="written"),
    )
    settings = Settings.model_validate({"agent": {"approval": {"write_file": "ask"}}})
    store = ApprovalStore(tmp_path / "approvals.json")
    loop = AgentLoop(
        predictor,
        ToolRegistry(counter.tools()),
        settings,
        ConversationHistory(settings.history),
        policy=ApprovalPolicy(settings.agent, store),
        approve=approve,
    )
    events: list[ev.AgentEvent] = []
    await loop.run("write notes", on_event=events.append)
    assert len(asked) == 2  # the third call matched the saved rule
    assert asked[0].scope_argument == "path"
    assert counter.counts == {"write_file": 2}
    denied = [e for e in events if isinstance(e, ev.ToolCallDenied)]
    assert [(d.by, d.tool) for d in denied] == [("user", "write_file")]
    approved = [e for e in events if isinstance(e, ev.ToolCallApproved)]
    assert [a.by for a in approved] == ["user", "rule"]
    assert approved[1].rule is not None
    assert "notes/*" in approved[1].rule
    first_result = predictor.requests[1].messages[-1]["content"][0]["content"]
    assert "refused by the operator" in first_result
    assert [r.model_dump(exclude_none=True) for r in store.load()] == [
        {"tool": "write_file", "decision": "allow", "argument": "path", "pattern": "notes/*"}
    ]


async def test_ask_without_a_callback_is_a_denial_the_model_reads() -> None:
    counter = Counter()
    predictor = ScriptedPredictor(
        calls(("write_file", {"path": "a", "text": "x"})), RoundResult(text="ok")
    )
    loop, _ = make_loop(predictor, counter, default_approval="ask")
    await loop.run("write")
    assert "needs approval" in predictor.requests[1].messages[-1]["content"][0]["content"]
    assert counter.counts == {}


async def test_cancellation_mid_tool_leaves_history_consistent() -> None:
    started = asyncio.Event()
    finished = False

    async def hang() -> str:
        """Never returns on its own."""
        nonlocal finished
        started.set()
        await asyncio.Event().wait()
        finished = True
        return "never"

    def quick() -> str:
        """Returns at once."""
        return "quick"

    predictor = ScriptedPredictor(calls(("quick", {}), ("hang", {})))
    settings = Settings()
    loop = AgentLoop(
        predictor,
        ToolRegistry([Tool.from_function(hang), Tool.from_function(quick)]),
        settings,
        ConversationHistory(settings.history),
    )
    events: list[ev.AgentEvent] = []
    task = asyncio.create_task(loop.run("go", on_event=events.append))
    async with asyncio.timeout(5):
        await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not finished
    assistant, tool = loop.history.get_all()[-2:]
    assert [p["toolCallRequest"]["name"] for p in assistant["content"][1:]] == ["quick", "hang"]
    assert tool["content"][0]["content"] == "quick"
    assert "cancelled" in tool["content"][1]["content"]
    assert isinstance(events[-1], ev.RunFailed)
    assert events[-1].error_class == "cancelled"


async def test_tool_timeout_and_result_cap() -> None:
    async def sleepy() -> str:
        """Sleeps too long."""
        await asyncio.Event().wait()
        return ""

    def big() -> str:
        """A huge result."""
        return "x" * 5000

    predictor = ScriptedPredictor(calls(("sleepy", {}), ("big", {})), RoundResult(text="ok"))
    settings = Settings.model_validate({"agent": {"max_tool_output_chars": 1000}})
    loop = AgentLoop(
        predictor,
        ToolRegistry([Tool.from_function(sleepy, timeout=0.05), Tool.from_function(big)]),
        settings,
        ConversationHistory(settings.history),
    )
    result = await loop.run("go")
    texts = [r["content"] for r in predictor.requests[1].messages[-1]["content"]]
    assert "did not finish within 0.05 s" in texts[0]
    assert len(texts[1]) <= 1000
    assert "truncated" in texts[1]
    assert [c["truncated"] for c in result.tool_calls] == [False, True]


async def test_restating_the_task_after_tool_results_for_small_models() -> None:
    counter = Counter()
    predictor = ScriptedPredictor(calls(("add", {"a": 1, "b": 2})), RoundResult(text="3"))
    settings = Settings()
    loop = AgentLoop(
        predictor,
        ToolRegistry(counter.tools()),
        settings,
        ConversationHistory(settings.history),
        restate_task=True,
    )
    await loop.run("add one and two")
    result = predictor.requests[1].messages[-1]["content"][-1]["content"]
    assert result == "3\n(Your task: add one and two)"


async def test_history_trims_are_reported_as_events() -> None:
    counter = Counter()
    predictor = ScriptedPredictor(
        calls(("add", {"a": 1, "b": 2})),
        calls(("add", {"a": 2, "b": 2})),
        RoundResult(text="done"),
    )
    settings = Settings.model_validate({"history": {"max_messages": 4}})
    loop = AgentLoop(
        predictor, ToolRegistry(counter.tools()), settings, ConversationHistory(settings.history)
    )
    events: list[ev.AgentEvent] = []
    await loop.run("add twice", on_event=events.append)
    trimmed = [e for e in events if isinstance(e, ev.HistoryTrimmed)]
    assert trimmed
    assert all(t.dropped_messages > 0 for t in trimmed)
    assert len(loop.history) <= 5  # the bound, plus the pinned system prompt
