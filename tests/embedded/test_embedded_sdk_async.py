"""The unmodified lmstudio SDK (AsyncClient) against the embedded server, call by call."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import lmstudio
import pytest

from elaria.embedded import (
    DEFAULT_EMBEDDING_KEY,
    DEFAULT_LLM_KEY,
    EmbeddedServer,
    ScriptedEngine,
    ToolCall,
    call_tool_then_answer,
    malformed_call,
    reasoning,
    reply,
    server_error,
    structured,
    tool_call,
    tool_calls,
)
from elaria.testing import embedded_server

WAIT = 10.0


@pytest.fixture
async def srv() -> AsyncIterator[EmbeddedServer]:
    async with embedded_server(engine=ScriptedEngine()) as server:
        yield server


@pytest.fixture
async def client(srv: EmbeddedServer) -> AsyncIterator[lmstudio.AsyncClient]:
    async with asyncio.timeout(WAIT), lmstudio.AsyncClient(srv.api_host) as c:
        yield c


def engine_of(srv: EmbeddedServer) -> ScriptedEngine:
    assert isinstance(srv.engine, ScriptedEngine)
    return srv.engine


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def mul(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


async def test_listing_and_model_info(srv: EmbeddedServer, client: lmstudio.AsyncClient) -> None:
    async with asyncio.timeout(WAIT):
        loaded = await client.llm.list_loaded()
        downloaded = await client.list_downloaded_models()
        model = await client.llm.model(DEFAULT_LLM_KEY)
        info = await model.get_info()
        ctx = await model.get_context_length()
        load_config = await model.get_load_config()
        embeds = await client.embedding.list_loaded()
    assert [m.identifier for m in loaded] == [DEFAULT_LLM_KEY]
    assert [m.identifier for m in embeds] == [DEFAULT_EMBEDDING_KEY]
    assert {m.model_key for m in downloaded} == {DEFAULT_LLM_KEY, DEFAULT_EMBEDDING_KEY}
    assert info.identifier == DEFAULT_LLM_KEY
    assert getattr(info, "trained_for_tool_use", False)
    assert ctx == 4096
    assert load_config.context_length == 4096


async def test_tokens_template_and_embeddings(
    srv: EmbeddedServer, client: lmstudio.AsyncClient
) -> None:
    async with asyncio.timeout(WAIT):
        model = await client.llm.model(DEFAULT_LLM_KEY)
        count = await model.count_tokens("hello big world")
        tokens = await model.tokenize("hello big world")
        chat = lmstudio.Chat("be brief")
        chat.add_user_message("hi")
        formatted = await model.apply_prompt_template(chat)
        emb = await client.embedding.model(DEFAULT_EMBEDDING_KEY)
        v1, v2 = await emb.embed("same"), await emb.embed("same")
        other = await emb.embed("different")
    assert count == 3
    assert len(tokens) == 3
    assert "be brief" in formatted
    assert formatted.endswith("assistant\n")
    assert v1 == v2 != other
    assert len(v1) == 16


async def test_respond_records_request_and_echoes_config(
    srv: EmbeddedServer, client: lmstudio.AsyncClient
) -> None:
    engine_of(srv).script(reply("Hello from the script"))
    async with asyncio.timeout(WAIT):
        model = await client.llm.model(DEFAULT_LLM_KEY)
        chat = lmstudio.Chat("You are a test")
        chat.add_user_message("hello world")
        result = await model.respond(chat, config={"temperature": 0.1, "maxTokens": 20})
    assert result.content == "Hello from the script"
    assert result.stats.stop_reason == "eosFound"
    assert result.stats.predicted_tokens_count == 4
    assert result.prediction_config.temperature == 0.1
    assert result.prediction_config.max_tokens == 20
    request = engine_of(srv).requests[-1]
    assert [m["role"] for m in request.messages] == ["system", "user"]
    assert request.temperature == 0.1
    assert request.max_tokens == 20
    assert request.tools is None


async def test_default_reply_needs_no_script(
    srv: EmbeddedServer, client: lmstudio.AsyncClient
) -> None:
    async with asyncio.timeout(WAIT):
        model = await client.llm.model(DEFAULT_LLM_KEY)
        first = await model.respond("ping")
        second = await model.respond("ping")
    assert first.content == second.content == "You said: ping"


async def test_act_several_tools_over_several_rounds(
    srv: EmbeddedServer, client: lmstudio.AsyncClient
) -> None:
    engine = engine_of(srv)
    engine.script(
        tool_calls(
            ToolCall("add", {"a": 1, "b": 2}),
            ToolCall("mul", {"a": 3, "b": 4}),
            text="Let me compute.",
        ),
        tool_call("add", {"a": 3, "b": 12}),
        reply("The answer is 15"),
    )
    messages: list[lmstudio.AnyChatMessage] = []
    async with asyncio.timeout(WAIT):
        model = await client.llm.model(DEFAULT_LLM_KEY)
        result = await model.act("compute", [add, mul], on_message=messages.append)
    assert result.rounds == 3
    assert str(messages[-1].content[0].text) == "The answer is 15"  # type: ignore[union-attr]
    round2 = engine.requests[-2].messages
    assistant, tool_msg = round2[-2], round2[-1]
    assert assistant["role"] == "assistant"
    assert [p["toolCallRequest"]["name"] for p in assistant["content"][1:]] == ["add", "mul"]
    assert [p["content"] for p in tool_msg["content"]] == ["3", "12"]
    offered = {t["function"]["name"] for t in engine.requests[0].tools or ()}
    assert offered == {"add", "mul"}


async def test_callable_turn_drives_act(srv: EmbeddedServer, client: lmstudio.AsyncClient) -> None:
    engine_of(srv).script(
        call_tool_then_answer("add", {"a": 2, "b": 5}),
        call_tool_then_answer("add", {"a": 2, "b": 5}),
    )
    async with asyncio.timeout(WAIT):
        model = await client.llm.model(DEFAULT_LLM_KEY)
        result = await model.act("add 2 and 5", [add])
    assert result.rounds == 2
    assert engine_of(srv).requests[-1].messages[-1]["content"][0]["content"] == "7"


async def test_malformed_tool_call_raises_prediction_error(
    srv: EmbeddedServer, client: lmstudio.AsyncClient
) -> None:
    engine_of(srv).script(malformed_call('<tool_call>{"name": "add", "argu'))
    async with asyncio.timeout(WAIT):
        model = await client.llm.model(DEFAULT_LLM_KEY)
        with pytest.raises(lmstudio.LMStudioPredictionError, match="Failed to parse tool call"):
            await model.act("x", [add])


async def test_server_error_turn_is_a_chat_response_error(
    srv: EmbeddedServer, client: lmstudio.AsyncClient
) -> None:
    engine_of(srv).script(server_error("Context overflow", "llm.contextOverflow"))
    async with asyncio.timeout(WAIT):
        model = await client.llm.model(DEFAULT_LLM_KEY)
        with pytest.raises(lmstudio.LMStudioServerError, match="Chat response error") as info:
            await model.respond("x")
    assert not isinstance(info.value, lmstudio.LMStudioPredictionError)
    assert info.value.server_error is not None
    assert info.value.server_error.display_data == {"code": "llm.contextOverflow"}


async def test_structured_and_reasoning_turns(
    srv: EmbeddedServer, client: lmstudio.AsyncClient
) -> None:
    engine_of(srv).script(structured({"city": "Oslo", "n": 3}), reasoning("hmm, think", "done"))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    async with asyncio.timeout(WAIT):
        model = await client.llm.model(DEFAULT_LLM_KEY)
        parsed = await model.respond("json please", response_format=schema)
        thought = await model.respond("think")
        default_json = await model.respond("json again", response_format=schema)
    assert parsed.parsed == {"city": "Oslo", "n": 3}
    assert thought.content == "<think>hmm, think</think>done"
    assert default_json.parsed == {"city": "scripted"}
    assert engine_of(srv).requests[0].structured == {"type": "json", "jsonSchema": schema}


async def test_cancel_ends_with_user_stopped(
    srv: EmbeddedServer, client: lmstudio.AsyncClient
) -> None:
    gate = asyncio.Event()
    engine = engine_of(srv)
    engine.script(reply("w0 w1 w2 w3 w4", gate=gate, gate_after=2))
    async with asyncio.timeout(WAIT):
        model = await client.llm.model(DEFAULT_LLM_KEY)
        stream = await model.respond_stream("go")
        seen = []
        async for fragment in stream:
            seen.append(fragment.content)
            if len(seen) == 2:
                await stream.cancel()
        result = stream.result()
    assert result.stats.stop_reason == "userStopped"
    assert result.content == "w0 w1"
    assert engine.log == [("start", 1), ("stopped", 1)]


async def test_unknown_model_errors_are_typed(
    srv: EmbeddedServer, client: lmstudio.AsyncClient
) -> None:
    async with asyncio.timeout(WAIT):
        with pytest.raises(lmstudio.LMStudioServerError, match="Model get/load error"):
            await client.llm.model("no-such-model")
        model = await client.llm.model(DEFAULT_LLM_KEY)
        await model.unload()
        with pytest.raises(lmstudio.LMStudioModelNotFoundError):
            await model.get_info()
        with pytest.raises(lmstudio.LMStudioServerError, match="RPC error"):
            await client.llm.unload("never-loaded")


async def test_load_new_instances_get_numbered_identifiers(
    srv: EmbeddedServer, client: lmstudio.AsyncClient
) -> None:
    engine_of(srv).script(reply("from two"), model=f"{DEFAULT_LLM_KEY}:2")
    async with asyncio.timeout(WAIT):
        second = await client.llm.load_new_instance(DEFAULT_LLM_KEY)
        named = await client.llm.load_new_instance(
            DEFAULT_LLM_KEY, "mine", config={"contextLength": 2048}
        )
        answer = await second.respond("x")
        ctx = await named.get_context_length()
        loaded = [m.identifier for m in await client.llm.list_loaded()]
    assert second.identifier == f"{DEFAULT_LLM_KEY}:2"
    assert answer.content == "from two"
    assert ctx == 2048
    assert loaded == [DEFAULT_LLM_KEY, f"{DEFAULT_LLM_KEY}:2", "mine"]


async def test_getorload_loads_on_demand() -> None:
    async with (
        embedded_server(preload=()) as server,
        lmstudio.AsyncClient(server.api_host) as client,
    ):
        async with asyncio.timeout(WAIT):
            assert await client.llm.list_loaded() == []
            model = await client.llm.model(DEFAULT_LLM_KEY)
            again = await client.llm.model(DEFAULT_LLM_KEY)
            loaded = await client.llm.list_loaded()
        assert model.identifier == again.identifier == DEFAULT_LLM_KEY
        assert len(loaded) == 1
        assert engine_of(server).loads == [DEFAULT_LLM_KEY]


async def test_upload_file(client: lmstudio.AsyncClient) -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(2_000_000)
    async with asyncio.timeout(WAIT):
        handle = await client.prepare_image(data, "big.png")
    assert handle.file_type == "image"
    assert handle.size_bytes == len(data)
    # about 2.7 MB of base64 arrived in one frame (above websockets' 1 MiB default)
    assert len(base64.b64encode(data)) > 2**21


async def test_predictions_to_one_model_queue(
    srv: EmbeddedServer, client: lmstudio.AsyncClient
) -> None:
    gate = asyncio.Event()
    engine = engine_of(srv)
    engine.script(reply("first", gate=gate), reply("second"))
    async with asyncio.timeout(WAIT):
        model = await client.llm.model(DEFAULT_LLM_KEY)
        first = asyncio.create_task(model.respond("1"))
        await engine.wait_for_requests(1)
        second = asyncio.create_task(model.respond("2"))
        gate.set()
        results = await asyncio.gather(first, second)
    assert [r.content for r in results] == ["first", "second"]
    assert engine.log == [("start", 1), ("done", 1), ("start", 2), ("done", 2)]


async def test_without_queueing_predictions_overlap() -> None:
    gate = asyncio.Event()
    engine = ScriptedEngine()
    engine.script(reply("first", gate=gate), reply("second"))
    async with (
        embedded_server(engine=engine, queue_per_model=False) as server,
        asyncio.timeout(WAIT),
        lmstudio.AsyncClient(server.api_host) as client,
    ):
        model = await client.llm.model(DEFAULT_LLM_KEY)
        first = asyncio.create_task(model.respond("1"))
        await engine.wait_for_requests(1)
        second = await model.respond("2")
        gate.set()
        assert (await first).content == "first"
    assert second.content == "second"
    assert engine.log.index(("done", 2)) < engine.log.index(("done", 1))


async def test_abandoned_stream_keeps_generating_and_blocks_the_queue(
    srv: EmbeddedServer, client: lmstudio.AsyncClient
) -> None:
    gate = asyncio.Event()
    engine = engine_of(srv)
    engine.script(reply("a b c d", gate=gate, gate_after=1), reply("next"))
    async with asyncio.timeout(WAIT):
        model = await client.llm.model(DEFAULT_LLM_KEY)
        stream = await model.respond_stream("1")
        async for _fragment in stream:
            break  # abandoned without cancel: the SDK sends nothing
        follow_up = asyncio.create_task(model.respond("2"))
        gate.set()
        assert (await follow_up).content == "next"
    assert engine.log == [("start", 1), ("done", 1), ("start", 2), ("done", 2)]


async def test_cancel_while_queued_never_reaches_the_engine(
    srv: EmbeddedServer, client: lmstudio.AsyncClient
) -> None:
    gate = asyncio.Event()
    engine = engine_of(srv)
    engine.script(reply("busy", gate=gate))
    async with asyncio.timeout(WAIT):
        model = await client.llm.model(DEFAULT_LLM_KEY)
        busy = asyncio.create_task(model.respond("1"))
        await engine.wait_for_requests(1)
        queued = await model.respond_stream("2")
        async with queued:  # opens the channel; it waits behind the busy prediction
            await queued.cancel()
            async for _fragment in queued:
                pass
        stopped = queued.result()
        gate.set()
        assert (await busy).content == "busy"
    assert stopped.stats.stop_reason == "userStopped"
    assert stopped.content == ""
    assert len(engine.requests) == 1


async def test_unload_mid_prediction_stops_with_model_unloaded(
    srv: EmbeddedServer, client: lmstudio.AsyncClient
) -> None:
    gate = asyncio.Event()
    engine = engine_of(srv)
    engine.script(reply("a b c", gate=gate, gate_after=1), reply("never"))
    async with asyncio.timeout(WAIT):
        model = await client.llm.model(DEFAULT_LLM_KEY)
        running = asyncio.create_task(model.respond("1"))
        await engine.wait_for_requests(1)
        queued = await model.respond_stream("2")
        async with queued:
            await client.llm.unload(DEFAULT_LLM_KEY)
            async for _fragment in queued:
                pass
        first = await running
    assert first.stats.stop_reason == "modelUnloaded"
    assert first.content == "a"
    assert queued.result().stats.stop_reason == "modelUnloaded"
    assert engine.log == [("start", 1), ("stopped", 1)]


async def test_stop_strings_and_max_tokens_cut_scripted_turns(
    srv: EmbeddedServer, client: lmstudio.AsyncClient
) -> None:
    engine_of(srv).script(reply("alpha beta END gamma"), reply("one two three four"))
    async with asyncio.timeout(WAIT):
        model = await client.llm.model(DEFAULT_LLM_KEY)
        stopped = await model.respond("x", config={"stopStrings": ["END"]})
        capped = await model.respond("x", config={"maxTokens": 2})
    assert stopped.content == "alpha beta "
    assert stopped.stats.stop_reason == "stopStringFound"
    assert capped.content == "one two"
    assert capped.stats.stop_reason == "maxPredictedTokensReached"


async def test_idle_ttl_unloads_and_busy_models_stay() -> None:
    now = [1_000.0]
    gate = asyncio.Event()
    engine = ScriptedEngine()
    async with embedded_server(engine=engine, preload=(), ttl_sweep_s=None) as server:
        server.backend.clock = lambda: now[0]
        async with asyncio.timeout(WAIT), lmstudio.AsyncClient(server.api_host) as client:
            model = await client.llm.model(DEFAULT_LLM_KEY, ttl=60)
            await client.embedding.model(DEFAULT_EMBEDDING_KEY, ttl=None)
            now[0] += 59
            assert await server.backend.unload_expired() == []
            engine.script(reply("held", gate=gate))
            busy = asyncio.create_task(model.respond("x"))
            await engine.wait_for_requests(1)
            now[0] += 600
            assert server.backend.expired() == []  # predicting: never idle
            gate.set()
            await busy
            now[0] += 59  # idle time counts from the end of the prediction
            assert server.backend.expired() == []
            now[0] += 1
            assert await server.backend.unload_expired() == [DEFAULT_LLM_KEY]
            assert await client.llm.list_loaded() == []
            assert len(await client.embedding.list_loaded()) == 1  # loaded without a TTL
