"""A prediction round through the pool against the real SDK and the embedded server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from elaria.config import LMStudioSettings, ReconnectSettings, SecuritySettings, Settings
from elaria.embedded import EmbeddedServer, ScriptedEngine, malformed_call, reply, tool_call
from elaria.errors import ConfigError, ElariaTimeoutError
from elaria.lmstudio.failover import Failover
from elaria.lmstudio.pool import ClientPool, api_host_of, check_host
from elaria.lmstudio.predict import predict_round
from elaria.lmstudio.rounds import RoundRequest

ADD_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
    },
}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


async def test_round_returns_text_tool_calls_and_malformed_calls(
    server: EmbeddedServer, engine: ScriptedEngine, lms_settings: LMStudioSettings
) -> None:
    engine.script(
        reply("hello there"),
        tool_call("add", {"a": 1}, id="call_1", text="let me add"),
        malformed_call("<tool_call>{not json"),
    )
    request = RoundRequest(messages=[user("hi")], tools=[ADD_TOOL], temperature=0.0)
    fragments: list[str] = []
    async with ClientPool(lms_settings) as pool, pool.lease(server.ws_url) as lease:
        handle = await pool.model_handle(lease, "scripted-llm")
        first = await predict_round(
            lease, handle.identifier, request, lms_settings, fragments.append
        )
        second = await predict_round(lease, handle.identifier, request, lms_settings)
        third = await predict_round(lease, handle.identifier, request, lms_settings)
    assert first.text == "hello there"
    assert "".join(fragments) == "hello there"
    assert first.stop_reason == "eosFound"
    assert first.predicted_tokens == 2
    assert first.time_to_first_token_s is not None
    assert first.host == server.ws_url
    assert second.text == "let me add"
    assert [(c.name, c.arguments, c.id) for c in second.tool_calls] == [("add", {"a": 1}, "call_1")]
    # The SDK would raise here and lose the raw text; the round keeps it for a repair.
    assert third.tool_calls == ()
    assert len(third.malformed) == 1
    assert third.malformed[0].raw == "<tool_call>{not json"
    sent = engine.requests[0]
    assert [t["function"]["name"] for t in sent.tools or ()] == ["add"]
    assert sent.temperature == 0.0


async def test_a_last_round_sends_no_tools_and_history_round_trips(
    server: EmbeddedServer, engine: ScriptedEngine, lms_settings: LMStudioSettings
) -> None:
    history = [
        user("add 1"),
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "ok"},
                {
                    "type": "toolCallRequest",
                    "toolCallRequest": {
                        "type": "function",
                        "name": "add",
                        "id": "c1",
                        "arguments": {"a": 1},
                    },
                },
            ],
        },
        {
            "role": "tool",
            "content": [{"type": "toolCallResult", "content": "1", "toolCallId": "c1"}],
        },
    ]
    async with ClientPool(lms_settings) as pool, pool.lease(server.ws_url) as lease:
        handle = await pool.model_handle(lease, None)
        result = await predict_round(
            lease, handle.identifier, RoundRequest(messages=history), lms_settings
        )
    assert result.text
    sent = engine.requests[0]
    assert sent.tools is None
    assert [m["role"] for m in sent.messages] == ["user", "assistant", "tool"]


async def test_first_token_deadline_cancels_the_prediction_on_the_server(
    server: EmbeddedServer, engine: ScriptedEngine
) -> None:
    gate = asyncio.Event()
    engine.script(reply("never arrives", gate=gate, gate_after=0))
    settings = LMStudioSettings(hosts=[server.ws_url], first_token_timeout_ms=500)
    async with ClientPool(settings) as pool, pool.lease(server.ws_url) as lease:
        handle = await pool.model_handle(lease, "scripted-llm")
        with pytest.raises(ElariaTimeoutError) as info:
            await predict_round(
                lease, handle.identifier, RoundRequest(messages=[user("x")]), settings
            )
        assert info.value.operation == "first token"
        # The server heard the cancel and stopped the generation.
        async with asyncio.timeout(5):
            while ("stopped", 1) not in engine.log:
                await asyncio.sleep(0.01)


async def test_cancelling_the_caller_cancels_the_prediction_on_the_server(
    server: EmbeddedServer, engine: ScriptedEngine, lms_settings: LMStudioSettings
) -> None:
    gate = asyncio.Event()
    engine.script(reply("one two three four", gate=gate, gate_after=1))
    pool = ClientPool(lms_settings)
    fragments: list[str] = []
    got_one = asyncio.Event()

    def on_fragment(text: str) -> None:
        fragments.append(text)
        got_one.set()

    async def run() -> None:
        async with pool.lease(server.ws_url) as lease:
            handle = await pool.model_handle(lease, "scripted-llm")
            await predict_round(
                lease,
                handle.identifier,
                RoundRequest(messages=[user("x")]),
                lms_settings,
                on_fragment,
            )

    task = asyncio.create_task(run())
    await asyncio.wait_for(got_one.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5):
        while ("stopped", 1) not in engine.log:
            await asyncio.sleep(0.01)
    assert fragments == ["one"]
    assert pool.stats()[server.ws_url]["in_flight"] == 0
    await pool.close()


async def test_model_questions_for_the_agent(
    server: EmbeddedServer, lms_settings: LMStudioSettings
) -> None:
    settings = Settings(lmstudio=lms_settings)
    async with ClientPool(lms_settings) as pool:
        failover = Failover(pool, settings)
        assert await failover.context_length() > 0
        assert await failover.count_tokens("one two three") >= 3
        models = await failover.list_models(server.ws_url)
    keys = {m["model_key"] for m in models["downloaded"]}
    assert {"scripted-llm", "scripted-embedding"} <= keys
    assert "scripted-llm" in {m["identifier"] for m in models["loaded"]}


def test_remote_hosts_need_the_allowlist_and_plaintext_needs_an_opt_in() -> None:
    lan = "ws://192.168.1.20:1234"
    with pytest.raises(ConfigError, match="allowed_remote_hosts"):
        check_host(lan, LMStudioSettings())
    allowed = SecuritySettings(allowed_remote_hosts=["192.168.1.20"])
    with pytest.raises(ConfigError, match="unencrypted"):
        check_host(lan, LMStudioSettings(), allowed)
    opted_in = LMStudioSettings(allow_plaintext_remote=True)
    assert check_host(lan, opted_in, allowed) == "192.168.1.20:1234"
    assert check_host("ws://localhost:1234", LMStudioSettings()) == "localhost:1234"


async def test_the_pool_refuses_a_host_that_is_not_allowed() -> None:
    async with ClientPool(LMStudioSettings()) as pool:
        with pytest.raises(ConfigError, match="allowed_remote_hosts"):
            async with pool.lease("ws://example.com:1234"):
                pass


def test_host_urls_are_translated_for_the_sdk_and_bad_ones_refused() -> None:
    assert api_host_of("ws://localhost:1234") == "localhost:1234"
    assert api_host_of("ws://[::1]:1234/") == "[::1]:1234"
    for bad in ("wss://h:1", "ws://h", "http://h:1", "ws://h:1/path", "ws://h:99999"):
        with pytest.raises(ConfigError):
            api_host_of(bad)


async def test_handles_are_cached_and_the_pool_reports_its_state(
    server: EmbeddedServer, lms_settings: LMStudioSettings
) -> None:
    async with ClientPool(lms_settings, ReconnectSettings()) as pool:
        async with pool.lease(server.ws_url) as lease:
            a, b = await asyncio.gather(
                pool.model_handle(lease, "scripted-llm"), pool.model_handle(lease, "scripted-llm")
            )
            assert a is b
            assert await pool.model_handle(lease, "scripted-llm") is a
            assert "in_flight=1" in repr(pool)
        stats = pool.stats()[server.ws_url]
        assert stats["state"] == "connected"
        assert stats["cached_handles"] == ["scripted-llm"]
        assert stats["in_flight"] == 0
        assert f"{server.ws_url}=connected" in repr(pool)
    assert "closed" in repr(pool)


async def test_the_handle_a_round_reads_without_awaiting_follows_the_cache(
    server: EmbeddedServer, lms_settings: LMStudioSettings
) -> None:
    now = [1_000.0]
    settings = lms_settings.model_copy(update={"handle_ttl_s": 30.0})
    pool = ClientPool(settings, ReconnectSettings(), clock=lambda: now[0])
    async with pool, pool.lease(server.ws_url) as lease:
        assert pool.cached_handle(lease, "scripted-llm") is None  # never resolved yet
        handle = await pool.model_handle(lease, "scripted-llm")
        assert pool.cached_handle(lease, "scripted-llm") is handle
        assert pool.cached_handle(lease, "other-model") is None
        assert pool.cached_handle(lease, None) is None  # "the first loaded" is its own key
        now[0] += 29.0
        assert pool.cached_handle(lease, "scripted-llm") is handle
        now[0] += 2.0  # past the TTL: the cache would resolve again, so must a round
        assert pool.cached_handle(lease, "scripted-llm") is None
        again = await pool.model_handle(lease, "scripted-llm")
        assert pool.cached_handle(lease, "scripted-llm") is again
        pool.forget_handle(server.ws_url, "scripted-llm")  # unloaded behind our back
        assert pool.cached_handle(lease, "scripted-llm") is None


def test_package_surface() -> None:
    import elaria.lmstudio as package

    assert sorted(package.__all__) == sorted(
        ["ClientPool", "Failover", "HostState", "Lease", "predict_round"]
    )
    assert package.ClientPool is ClientPool
    assert package.Failover is Failover
    with pytest.raises(AttributeError):
        _ = package.nothing_here


async def test_a_callers_own_bug_is_not_disguised_as_a_backend_error(
    server: EmbeddedServer, lms_settings: LMStudioSettings
) -> None:
    async with ClientPool(lms_settings) as pool:
        with pytest.raises(KeyError):
            async with pool.lease(server.ws_url):
                raise KeyError("a bug in the caller")
        assert pool.stats()[server.ws_url]["state"] == "connected"  # and no eviction


#: Everything the SDK's dict path used to mangle: snake_case names (camelCased in ``properties``
#: but not in ``required``), ``$defs`` (dropped by the SDK's tool struct), nested objects and
#: ``additionalProperties``.
READ_FILE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read lines of a file",
        "parameters": {
            "type": "object",
            "properties": {
                "file_path": {"type": "string"},
                "start_line": {"type": "integer"},
                "line_range": {
                    "type": "object",
                    "properties": {
                        "first_line": {"$ref": "#/$defs/line_number"},
                        "last_line": {"$ref": "#/$defs/line_number"},
                    },
                    "required": ["first_line"],
                    "additionalProperties": False,
                },
            },
            "required": ["file_path", "start_line"],
            "$defs": {"line_number": {"type": "integer", "minimum": 1}},
            "additionalProperties": False,
        },
    },
}


async def test_tool_schemas_reach_the_server_exactly_as_given(
    server: EmbeddedServer, engine: ScriptedEngine, lms_settings: LMStudioSettings
) -> None:
    engine.script(reply("ok"), reply("done"))
    tools = [READ_FILE_TOOL, ADD_TOOL]
    async with ClientPool(lms_settings) as pool, pool.lease(server.ws_url) as lease:
        handle = await pool.model_handle(lease, "scripted-llm")
        await predict_round(
            lease, handle.identifier, RoundRequest([user("read")], tools=tools), lms_settings
        )
        await predict_round(
            lease, handle.identifier, RoundRequest([user("answer")], tools=None), lms_settings
        )
    with_tools, last_round = engine.requests[-2:]
    assert with_tools.tools == tools
    assert last_round.tools is None


async def test_history_reaches_the_server_as_given_and_plain_string_content_is_accepted(
    server: EmbeddedServer, engine: ScriptedEngine, lms_settings: LMStudioSettings
) -> None:
    engine.script(reply("ok"), reply("ok too"))
    call = {
        "type": "function",
        "id": "call_1",
        "name": "read_file",
        "arguments": {"file_path": "a.txt", "line_range": {"first_line": 1}},
    }
    history: list[dict[str, Any]] = [
        user("read a.txt"),
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": ""},
                {"type": "toolCallRequest", "toolCallRequest": call},
            ],
        },
        {
            "role": "tool",
            "content": [{"type": "toolCallResult", "content": "hello", "toolCallId": "call_1"}],
        },
    ]
    async with ClientPool(lms_settings) as pool, pool.lease(server.ws_url) as lease:
        handle = await pool.model_handle(lease, "scripted-llm")
        await predict_round(lease, handle.identifier, RoundRequest(history), lms_settings)
        lenient = RoundRequest([{"role": "user", "content": "plain text"}])
        await predict_round(lease, handle.identifier, lenient, lms_settings)
    exact, normalised = engine.requests[-2:]
    # Earlier tool calls keep their snake_case argument names (the SDK's helpers camelCase them).
    assert exact.messages == history
    assert normalised.messages == [user("plain text")]
