"""ScriptedEngine on its own (no server), the public surface, the fixtures users import, and
the command-line engine choice."""

from __future__ import annotations

import asyncio
import sys

import lmstudio
import pytest

import elaria.embedded
import elaria.testing
from elaria.commands.serve import build_engine
from elaria.embedded import (
    Done,
    EmbeddedServer,
    EngineError,
    Fragment,
    PredictRequest,
    ScriptedEngine,
    ToolCall,
    ToolCallFailed,
    call_tool_then_answer,
    reply,
    server_error,
    tool_call,
)
from elaria.embedded.engine import Engine, EngineEvent
from elaria.errors import ConfigError
from elaria.testing import embedded_server, raw_session

# The public fixtures, imported the way a user's conftest.py would.
scripted_engine = elaria.testing.scripted_engine
embedded_lmstudio = elaria.testing.embedded_lmstudio


def request(
    text: str = "hi",
    *,
    model: str = "scripted-llm",
    identifier: str | None = None,
    tools: list[str] | None = None,
    tool_result: str | None = None,
) -> PredictRequest:
    messages: list[dict[str, object]] = [
        {"role": "user", "content": [{"type": "text", "text": text}]}
    ]
    if tool_result is not None:
        messages.append(
            {"role": "tool", "content": [{"type": "toolCallResult", "content": tool_result}]}
        )
    offered = [{"type": "function", "function": {"name": n}} for n in tools or []]
    return PredictRequest(
        model_key=model, identifier=identifier or model, messages=messages, tools=offered or None
    )


async def collect(engine: ScriptedEngine, req: PredictRequest) -> list[EngineEvent]:
    return [event async for event in engine.predict(req)]


async def test_queues_model_then_key_then_shared_then_default() -> None:
    engine = ScriptedEngine()
    engine.script("shared")
    engine.script("by key", model="scripted-llm")
    engine.script("by identifier", model="scripted-llm:2")
    texts = []
    for ident in ("scripted-llm:2", "scripted-llm:2", "scripted-llm", "scripted-llm"):
        events = await collect(engine, request(identifier=ident))
        texts.append("".join(e.text for e in events if isinstance(e, Fragment)))
    assert texts == ["by identifier", "by key", "shared", "You said: hi"]
    assert engine.pending() == 0


async def test_turn_kinds_become_engine_events() -> None:
    engine = ScriptedEngine()
    engine.script(
        tool_call("f", {"x": 1}, text="calling"),
        server_error("boom", "generic.specificModelUnloaded"),
        elaria.embedded.malformed_call("{bad", error="unparsable"),
    )
    first = await collect(engine, request())
    second = await collect(engine, request())
    third = await collect(engine, request())
    assert [type(e) for e in first] == [Fragment, ToolCall, Done]
    call = first[1]
    assert isinstance(call, ToolCall)
    assert call.name == "f"
    assert call.arguments == {"x": 1}
    assert call.id
    assert second == [EngineError("boom", "generic.specificModelUnloaded", {})]
    assert third[0] == ToolCallFailed("unparsable", "{bad")


async def test_callable_turn_decides_from_the_request() -> None:
    engine = ScriptedEngine(default=call_tool_then_answer("lookup", {"q": "x"}, "final"))
    offered = await collect(engine, request(tools=["lookup"]))
    answered = await collect(engine, request(tools=["lookup"], tool_result="42"))
    not_offered = await collect(engine, request())
    assert isinstance(offered[0], ToolCall)
    assert "".join(e.text for e in answered if isinstance(e, Fragment)) == "final"
    assert "".join(e.text for e in not_offered if isinstance(e, Fragment)) == "final"


async def test_token_rate_and_first_token_latency_are_honoured() -> None:
    engine = ScriptedEngine(tokens_per_second=50.0, first_token_latency=0.05)
    engine.script(reply("a b c d e f"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await collect(engine, request())
    # 0.05 s latency + 5 gaps of 1/50 s: a lower bound only (no speed assertion)
    assert loop.time() - started >= 0.05 + 5 / 50


async def test_wait_for_requests_times_out_cleanly() -> None:
    engine = ScriptedEngine()
    with pytest.raises(TimeoutError):
        await engine.wait_for_requests(1, timeout=0.05)


async def test_embeddings_and_tokens_are_deterministic() -> None:
    a, b = ScriptedEngine(embedding_dims=8), ScriptedEngine(embedding_dims=8)
    assert await a.embed("k", "text") == await b.embed("k", "text")
    assert await a.tokenize("k", "one two") == await b.tokenize("k", "one two")
    vector = await a.embed("k", "text")
    assert abs(sum(x * x for x in vector) - 1.0) < 1e-9


def test_scripted_engine_satisfies_the_engine_protocol() -> None:
    assert isinstance(ScriptedEngine(), Engine)


def test_public_surface() -> None:
    assert set(elaria.embedded.__all__) >= {
        "EmbeddedServer",
        "ScriptedEngine",
        "Faults",
        "FaultProxy",
        "Turn",
        "reply",
        "tool_call",
        "tool_calls",
        "malformed_call",
        "server_error",
        "structured",
        "reasoning",
        "call_tool_then_answer",
        "echo_reply",
    }
    assert set(elaria.testing.__all__) == {
        "RawSession",
        "ServerProcess",
        "closed_api_host",
        "embedded_server",
        "raw_session",
        "silent_api_host",
    }
    for name in elaria.embedded.__all__:
        assert hasattr(elaria.embedded, name)


async def test_user_fixtures_work(
    embedded_lmstudio: EmbeddedServer, scripted_engine: ScriptedEngine
) -> None:
    scripted_engine.script(reply("from the fixture"))
    async with asyncio.timeout(10), lmstudio.AsyncClient(embedded_lmstudio.api_host) as client:
        model = await client.llm.model("scripted-llm")
        assert (await model.respond("x")).content == "from the fixture"


async def test_predict_loads_just_in_time_unless_disabled() -> None:
    param = {
        "modelSpecifier": {"type": "query", "query": {"identifier": "scripted-llm"}},
        "history": {"messages": []},
        "predictionConfigStack": {"layers": []},
    }
    async with embedded_server(preload=()) as srv, raw_session(srv.api_host, "llm") as llm:
        jit = await llm.channel("predict", param)
    assert jit[-1]["type"] == "channelClose"
    async with (
        embedded_server(preload=(), jit=False) as srv,
        raw_session(srv.api_host, "llm") as llm,
    ):
        refused = await llm.channel("predict", param)
    assert refused[-1]["type"] == "channelError"
    assert refused[-1]["error"]["displayData"]["code"] == "generic.noModelMatchingQuery"


def test_llama_engine_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "elaria.embedded.llama", None)
    with pytest.raises(ConfigError, match="embedded"):
        build_engine("llama")


async def test_abandoned_channels_stop_when_the_socket_dies() -> None:
    gate = asyncio.Event()
    engine = ScriptedEngine()
    engine.script(reply("x y", gate=gate, gate_after=1))
    async with embedded_server(engine=engine) as srv:
        async with raw_session(srv.api_host, "llm") as llm:
            await llm.open_channel(
                "predict",
                {
                    "modelSpecifier": {"type": "query", "query": {"identifier": "scripted-llm"}},
                    "history": {"messages": []},
                    "predictionConfigStack": {"layers": []},
                },
            )
            await engine.wait_for_requests(1)
        await engine.wait_for_log(("stopped", 1))


async def test_max_tokens_cuts_the_turn() -> None:
    engine = ScriptedEngine()
    engine.script(tool_call("f", {}, text="one two three four"))
    req = request()
    capped = PredictRequest(req.model_key, req.identifier, req.messages, max_tokens=2)
    events = await collect(engine, capped)
    assert [e.text for e in events if isinstance(e, Fragment)] == ["one", " two"]
    assert events[-1] == Done("maxPredictedTokensReached", events[-1].prompt_tokens)  # type: ignore[union-attr]
    assert not any(isinstance(e, ToolCall) for e in events)


async def test_recording_is_bounded_for_soak_runs() -> None:
    engine = ScriptedEngine(max_recorded=3)
    for i in range(5):
        await collect(engine, request(f"n{i}"))
    assert engine.request_count == 5
    assert [r.messages[0]["content"][0]["text"] for r in engine.requests] == ["n2", "n3", "n4"]
    assert len(engine.log) == 6
    assert (await engine.wait_for_requests(4)).messages[0]["content"][0]["text"] == "n3"
