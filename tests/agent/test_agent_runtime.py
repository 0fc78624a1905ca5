"""Runtime end to end with the scripted engine: unmodified SDK, embedded server, real pool."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from elaria.agent import events as ev
from elaria.agent.approval import Answer, ApprovalRequest
from elaria.config import Settings
from elaria.embedded import ScriptedEngine, ToolCall, malformed_call, reply, tool_call, tool_calls
from elaria.embedded.scripted import Turn
from elaria.errors import LoopDetected, ResourceExhausted, RunError
from elaria.memory.monitor import MemoryMonitor
from elaria.runtime import Runtime

#: Every wait in these tests is bounded by this; generous for a busy 2-core machine.
WAIT_S = 20.0


def fast_settings(**agent: Any) -> Settings:
    return Settings.model_validate(
        {
            "agent": {"workspace": "ws", **agent},
            "reconnect": {"initial_delay_ms": 100, "max_delay_ms": 1_000, "stable_after_ms": 0},
            # The pool notices a dead client at its next probe at the latest.
            "lmstudio": {"probe_interval_ms": 200},
        }
    )


class Tools:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def all(self) -> list[Callable[..., Any]]:
        def add(a: int, b: int) -> int:
            """Add two numbers."""
            self.calls.append(("add", {"a": a, "b": b}))
            return a + b

        def weather(city: str) -> dict[str, Any]:
            """The weather in a city."""
            self.calls.append(("weather", {"city": city}))
            return {"city": city, "sky": "clear"}

        return [add, weather]


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Runtime, ScriptedEngine, Tools]]:
    engine = ScriptedEngine()
    tools = Tools()
    async with Runtime(
        fast_settings(), engine=engine, tools=tools.all(), builtin_tools=False
    ) as rt:
        yield rt, engine, tools


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Wait for a condition another task makes true (bounded; yields to the loop)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_several_tools_in_parallel_over_several_rounds(
    scripted: tuple[Runtime, ScriptedEngine, Tools],
) -> None:
    rt, engine, tools = scripted
    engine.script(
        tool_calls(ToolCall("add", {"a": 2, "b": 3}), ToolCall("weather", {"city": "Lyon"})),
        tool_call("add", {"a": 5, "b": 5}),
        reply("2+3=5, Lyon is clear, 5+5=10"),
    )
    events: list[ev.AgentEvent] = []
    result = await rt.run("compute and check the weather", on_event=events.append)
    assert result.answer == "2+3=5, Lyon is clear, 5+5=10"
    assert result.rounds == 3
    assert [c["tool"] for c in result.tool_calls] == ["add", "weather", "add"]
    assert tools.calls == [
        ("add", {"a": 2, "b": 3}),
        ("weather", {"city": "Lyon"}),
        ("add", {"a": 5, "b": 5}),
    ]
    assert result.prompt_tokens > 0
    assert result.predicted_tokens > 0
    second = engine.requests[1]
    results = second.messages[-1]["content"]
    assert [r["content"] for r in results] == ["5", '{"city": "Lyon", "sky": "clear"}']
    assert second.tools is not None
    assert {t["function"]["name"] for t in second.tools} == {"add", "weather"}
    fragments = "".join(e.text for e in events if isinstance(e, ev.TextFragment))
    assert fragments == result.answer
    assert isinstance(events[-1], ev.FinalAnswer)


async def test_last_round_goes_without_tools_through_the_sdk() -> None:
    engine = ScriptedEngine()
    tools = Tools()
    engine.script(tool_call("add", {"a": 1, "b": 1}), reply("two"))
    async with Runtime(
        fast_settings(max_iterations=2), engine=engine, tools=tools.all(), builtin_tools=False
    ) as rt:
        result = await rt.run("add")
    assert result.answer == "two"
    assert engine.requests[0].tools
    assert not engine.requests[1].tools


async def test_malformed_calls_repaired_and_not_through_the_server(
    scripted: tuple[Runtime, ScriptedEngine, Tools],
) -> None:
    rt, engine, tools = scripted
    engine.script(
        malformed_call('<tool_call>{"name": "add", "arguments": {"a": 4, "b": 4,}}'),
        malformed_call("call the adder please"),
        reply("8"),
    )
    events: list[ev.AgentEvent] = []
    result = await rt.run("add 4 and 4", on_event=events.append)
    assert result.answer == "8"
    assert tools.calls == [("add", {"a": 4, "b": 4})]
    repaired = [e for e in events if isinstance(e, ev.ToolCallRepaired)]
    assert [(r.tool, r.method) for r in repaired] == [("add", "xml_tool_call")]
    texts = [r["content"] for r in engine.requests[2].messages[-1]["content"]]
    assert "could not be parsed" in texts[0]
    assert '"arguments"' in texts[0]


async def test_unknown_tool_and_bad_arguments_reach_the_model(
    scripted: tuple[Runtime, ScriptedEngine, Tools],
) -> None:
    rt, engine, tools = scripted
    engine.script(
        tool_calls(ToolCall("delete_all", {}), ToolCall("add", {"a": "x", "b": 1})),
        reply("sorry"),
    )
    result = await rt.run("do it")
    assert result.answer == "sorry"
    texts = [r["content"] for r in engine.requests[1].messages[-1]["content"]]
    assert "no tool named 'delete_all'" in texts[0]
    assert "argument 'a'" in texts[1]
    assert tools.calls == []


async def test_repeated_identical_calls_are_stopped(
    scripted: tuple[Runtime, ScriptedEngine, Tools],
) -> None:
    rt, engine, tools = scripted
    engine.script(*(tool_call("weather", {"city": "Porto"}) for _ in range(5)))
    with pytest.raises(LoopDetected) as info:
        await rt.run("weather?")
    assert info.value.tool == "weather"
    assert len(tools.calls) == 2


async def test_a_connection_killed_mid_round_is_retried_and_no_tool_runs_twice(
    scripted: tuple[Runtime, ScriptedEngine, Tools],
) -> None:
    rt, engine, tools = scripted
    gate = asyncio.Event()
    engine.script(
        tool_call("add", {"a": 20, "b": 22}),
        Turn(text="this stream will be cut off", gate=gate, gate_after=1),
        reply("42"),
    )
    events: list[ev.AgentEvent] = []
    run = asyncio.create_task(rt.run("add", on_event=events.append))
    await engine.wait_for_requests(2, timeout=WAIT_S)
    await until(lambda: any(isinstance(e, ev.TextFragment) for e in events))
    server = rt.backend.server if rt.backend else None
    assert server is not None
    assert server.faults.kill() > 0
    async with asyncio.timeout(WAIT_S):
        result = await run
    assert result.answer == "42"
    assert tools.calls == [("add", {"a": 20, "b": 22})]
    retries = [e for e in events if isinstance(e, ev.ResilienceEvent) and e.action == "retry"]
    assert retries
    third = engine.requests[2]
    assert third.messages == engine.requests[1].messages  # resumed from the recorded history


async def test_cancellation_mid_prediction_cancels_on_the_server(
    scripted: tuple[Runtime, ScriptedEngine, Tools],
) -> None:
    rt, engine, _ = scripted
    gate = asyncio.Event()
    engine.script(Turn(text="never finished", gate=gate, gate_after=1), reply("next"))
    run = asyncio.create_task(rt.run("talk"))
    await engine.wait_for_requests(1, timeout=WAIT_S)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await until(lambda: ("stopped", 1) in engine.log)
    result = await rt.run("again")  # the model is free for the next request
    assert result.answer == "next"


async def test_cancellation_mid_tool_through_the_runtime(
    scripted: tuple[Runtime, ScriptedEngine, Tools],
) -> None:
    rt, engine, _ = scripted
    started = asyncio.Event()

    async def slow_scan(folder: str) -> str:
        """Scan a folder slowly."""
        started.set()
        await asyncio.Event().wait()
        return "unreachable"

    engine.script(tool_call("slow_scan", {"folder": "a"}))
    history = await rt.new_history()
    run = asyncio.create_task(rt.run("scan", tools=[slow_scan], history=history))
    async with asyncio.timeout(WAIT_S):
        await started.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    last = history.get_all()[-1]
    assert last["role"] == "tool"
    assert "cancelled" in last["content"][0]["content"]


async def test_stream_yields_events_in_order_and_ends_with_the_answer(
    scripted: tuple[Runtime, ScriptedEngine, Tools],
) -> None:
    rt, engine, _ = scripted
    engine.script(tool_call("add", {"a": 1, "b": 2}), reply("three"))
    kinds = [e.kind async for e in rt.stream("add")]
    assert kinds[0] == "run_started"
    assert kinds[-1] == "final_answer"
    assert kinds.index("tool_call_started") < kinds.index("tool_call_finished")


async def test_stream_left_early_cancels_the_run(
    scripted: tuple[Runtime, ScriptedEngine, Tools],
) -> None:
    rt, engine, _ = scripted
    gate = asyncio.Event()
    engine.script(Turn(text="long answer here", gate=gate, gate_after=1))
    stream = rt.stream("talk")
    async for event in stream:
        if isinstance(event, ev.TextFragment):
            break
    await stream.aclose()  # type: ignore[attr-defined]
    await until(lambda: ("stopped", 1) in engine.log)
    assert rt.stats()["runs_in_flight"] == 0


async def test_approval_always_is_saved_and_used_by_the_next_run(tmp_path: Path) -> None:
    engine = ScriptedEngine()
    tools = Tools()
    asked: list[str] = []

    def approve(request: ApprovalRequest) -> Answer:
        asked.append(request.tool)
        return "always"

    settings = fast_settings(
        approval={"weather": "ask"}, approvals_file=str(tmp_path / "approvals.json")
    )
    engine.script(tool_call("weather", {"city": "Lyon"}), reply("clear"))
    async with Runtime(
        settings, engine=engine, tools=tools.all(), builtin_tools=False, approve=approve
    ) as rt:
        await rt.run("weather")
    saved = json.loads((tmp_path / "approvals.json").read_text())
    assert saved["rules"] == [{"tool": "weather", "decision": "allow"}]
    engine.script(tool_call("weather", {"city": "Porto"}), reply("clear too"))
    async with Runtime(
        settings, engine=engine, tools=tools.all(), builtin_tools=False, approve=approve
    ) as rt:
        await rt.run("weather again")
    assert asked == ["weather"]
    assert [c[1]["city"] for c in tools.calls] == ["Lyon", "Porto"]


async def test_a_critical_monitor_refuses_to_start_a_run() -> None:
    usage = {"rss": 10}
    monitor = MemoryMonitor(sampler=lambda: usage["rss"], limit=100)
    engine = ScriptedEngine()
    async with Runtime(fast_settings(), engine=engine, builtin_tools=False, monitor=monitor) as rt:
        usage["rss"] = 95
        monitor.check()
        with pytest.raises(ResourceExhausted):
            await rt.run("anything")
        assert engine.requests == []


async def test_empty_task_and_closed_runtime_are_clear_errors() -> None:
    rt = Runtime(fast_settings(), engine=ScriptedEngine(), builtin_tools=False)
    with pytest.raises(RunError, match="not running"):
        await rt.run("x")
    async with rt:
        with pytest.raises(RunError, match="empty"):
            await rt.run("  ")
    with pytest.raises(RunError, match="closed"):
        await rt.start()


async def test_close_leaves_no_task_behind() -> None:
    before = asyncio.all_tasks()
    engine = ScriptedEngine()
    engine.script(reply("hi"))
    async with Runtime(fast_settings(), engine=engine, builtin_tools=False) as rt:
        await rt.run("hello")
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()


async def test_chat_session_keeps_history(
    scripted: tuple[Runtime, ScriptedEngine, Tools],
) -> None:
    rt, engine, _ = scripted
    engine.script(reply("hello Ann"), reply("your name is Ann"))
    chat = rt.session()
    await chat.send("my name is Ann")
    result = await chat.send("what is my name?")
    assert result.answer == "your name is Ann"
    texts = [m["content"][0]["text"] for m in engine.requests[1].messages]
    assert "my name is Ann" in texts
    assert "hello Ann" in texts
    assert chat.turns == 2
    chat.reset()
    assert chat.messages() == []


async def test_every_run_has_an_audit_record_success_failure_and_cancelled(
    tmp_path: Path,
) -> None:
    engine = ScriptedEngine()
    tools = Tools()
    gate = asyncio.Event()
    engine.script(
        tool_calls(ToolCall("add", {"a": 1, "b": 2}), ToolCall("nosuch", {})),
        reply("3"),
        *(tool_call("weather", {"city": "Oslo"}) for _ in range(3)),
        Turn(text="never", gate=gate, gate_after=1),
    )
    async with Runtime(
        fast_settings(), engine=engine, tools=tools.all(), builtin_tools=False
    ) as rt:
        ok = await rt.run("add")
        with pytest.raises(LoopDetected):
            await rt.run("loop")
        cancelled = asyncio.create_task(rt.run("cancel me"))
        await engine.wait_for_requests(6, timeout=WAIT_S)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
    records = read_jsonl(tmp_path / "logs" / "audit.jsonl")
    assert [r["outcome"] for r in records] == ["mitigated_success", "failure", "cancelled"]
    by_outcome = {r["outcome"]: r for r in records}
    first = records[0]  # mitigated: the unknown tool failed and the run still answered
    assert first["run_id"] == ok.run_id
    assert first["model_calls"] == 2
    assert [t["name"] for t in first["tool_calls"]] == ["add", "nosuch"]
    assert by_outcome["failure"]["error_class"] == "LoopDetected"
    lines = read_jsonl(tmp_path / "logs" / "inference.jsonl")
    assert len(lines) == 2 + 3 + 1  # every round, the cancelled one included
    assert lines[-1]["success"] is False
    assert lines[-1]["error_class"] == "CancelledError"


def test_tiny_model_defaults_respect_explicit_settings() -> None:
    from elaria.agent.backend import TINY_MODEL_SYSTEM_PROMPT
    from elaria.runtime import _tiny_model_defaults

    tuned = _tiny_model_defaults(Settings())
    assert tuned.agent.system_prompt == TINY_MODEL_SYSTEM_PROMPT
    assert tuned.lmstudio.temperature == 0.0
    mine = Settings.model_validate(
        {"agent": {"system_prompt": "be brief"}, "lmstudio": {"temperature": 0.7}}
    )
    kept = _tiny_model_defaults(mine)
    assert kept.agent.system_prompt == "be brief"
    assert kept.lmstudio.temperature == 0.7
