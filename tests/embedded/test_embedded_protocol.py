"""Wire-level behaviour: payloads decode into the SDK's own msgspec structs, envelope rules,
faithful vs strict unknown endpoints, auth modes and token tables."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import lmstudio
import msgspec
import pytest
from lmstudio import _sdk_models as sdk

from elaria.embedded import (
    DEFAULT_EMBEDDING_KEY,
    DEFAULT_LLM_KEY,
    EmbeddedServer,
    ScriptedEngine,
    ToolCall,
    malformed_call,
    reasoning,
    tool_calls,
)
from elaria.embedded.auth import parse_token
from elaria.embedded.server import MAX_WARNINGS
from elaria.errors import ConfigError
from elaria.testing import RawSession, embedded_server, raw_session

WAIT = 10.0
TOKEN = "sk-lm-ABCD1234:abcdefghij0123456789"
LLM_QUERY = {"type": "query", "query": {"identifier": DEFAULT_LLM_KEY}}
EMB_QUERY = {"type": "query", "query": {"identifier": DEFAULT_EMBEDDING_KEY}}


@pytest.fixture
async def srv() -> AsyncIterator[EmbeddedServer]:
    async with embedded_server(engine=ScriptedEngine()) as server:
        yield server


def predict_param(tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    fields: list[dict[str, Any]] = [{"key": "llm.prediction.temperature", "value": 0.3}]
    if tools:
        fields.append(
            {"key": "llm.prediction.tools", "value": {"type": "toolArray", "tools": tools}}
        )
    return {
        "modelSpecifier": LLM_QUERY,
        "history": {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        "predictionConfigStack": {
            "layers": [{"layerName": "apiOverride", "config": {"fields": fields}}]
        },
    }


def payloads(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m["message"] for m in messages if m.get("message", {}).get("type") == kind]


async def test_model_payloads_decode_into_sdk_structs(srv: EmbeddedServer) -> None:
    async with raw_session(srv.api_host, "system") as system:
        downloaded = (await system.rpc("listDownloadedModels"))["result"]
        version = (await system.rpc("version"))["result"]
    assert {m["type"] for m in downloaded} == {"llm", "embedding"}
    for info in downloaded:
        struct = sdk.LlmInfo if info["type"] == "llm" else sdk.EmbeddingModelInfo
        msgspec.convert(info, struct)
    assert version == {"version": "0.3.30", "build": 1}
    async with raw_session(srv.api_host, "llm") as llm:
        loaded = (await llm.rpc("listLoaded"))["result"]
        info = (await llm.rpc("getModelInfo", {"specifier": LLM_QUERY, "throwIfNotFound": True}))[
            "result"
        ]
        config = (await llm.rpc("getLoadConfig", {"specifier": LLM_QUERY}))["result"]
        load = await llm.channel("loadModel", {"modelKey": DEFAULT_LLM_KEY})
    for item in [*loaded, info]:
        msgspec.convert(item, sdk.LlmInstanceInfo)
    assert config == {"fields": [{"key": "llm.load.contextLength", "value": 4096}]}
    kinds = [m["message"]["type"] for m in load if m["type"] == "channelSend"]
    assert kinds == ["resolved", "progress", "progress", "success"]
    msgspec.convert(load[-2]["message"]["info"], sdk.LlmInstanceInfo)
    assert load[-1] == {"type": "channelClose", "channelId": 1}
    async with raw_session(srv.api_host, "embedding") as emb:
        einfo = (await emb.rpc("getModelInfo", {"specifier": EMB_QUERY}))["result"]
        vector = (await emb.rpc("embedString", {"modelSpecifier": EMB_QUERY, "inputString": "x"}))[
            "result"
        ]
    msgspec.convert(einfo, sdk.EmbeddingModelInstanceInfo)
    assert len(vector["embedding"]) == 16


async def test_prediction_payloads_decode_into_sdk_structs(srv: EmbeddedServer) -> None:
    assert isinstance(srv.engine, ScriptedEngine)
    srv.engine.script(
        reasoning("let me see", "Two calls:"),
        tool_calls(ToolCall("add", {"a": 1, "b": 2}), ToolCall("now", None), text="go"),
        malformed_call("<tool_call>{oops"),
    )
    tools = [{"type": "function", "function": {"name": "add", "parameters": {}}}]
    async with raw_session(srv.api_host, "llm") as llm:
        first = await llm.channel("predict", predict_param())
        second = await llm.channel("predict", predict_param(tools))
        third = await llm.channel("predict", predict_param(tools))
    fragments = payloads(first, "fragment")
    for fragment in fragments:
        msgspec.convert(fragment["fragment"], sdk.LlmPredictionFragment)
    assert [f["fragment"]["reasoningType"] for f in fragments[:2]] == [
        "reasoningStartTag",
        "reasoning",
    ]
    progress = payloads(first, "promptProcessingProgress")
    assert [p["progress"] for p in progress] == [0.0, 1.0]
    (success,) = payloads(first, "success")
    msgspec.convert(success["stats"], sdk.LlmPredictionStats)
    msgspec.convert(success["modelInfo"], sdk.LlmInfo)
    assert success["predictionConfig"] == {
        "fields": [{"key": "llm.prediction.temperature", "value": 0.3}]
    }
    assert first[-1]["type"] == "channelClose"
    ends = payloads(second, "toolCallGenerationEnd")
    requests = [msgspec.convert(e["toolCallRequest"], sdk.ToolCallRequest) for e in ends]
    assert [(r.name, r.arguments) for r in requests] == [("add", {"a": 1, "b": 2}), ("now", None)]
    assert all(r.id for r in requests)
    assert len(payloads(second, "toolCallGenerationStart")) == 2
    (failed,) = payloads(third, "toolCallGenerationFailed")
    assert failed["rawContent"] == "<tool_call>{oops"
    assert failed["error"]["title"]
    assert payloads(third, "success")


async def test_upload_payload_is_a_file_handle(srv: EmbeddedServer) -> None:
    async with raw_session(srv.api_host, "files") as files:
        reply = await files.rpc(
            "uploadFileBase64",
            {"name": "notes.txt", "contentBase64": base64.b64encode(b"hello").decode()},
        )
        bad = await files.rpc("uploadFileBase64", {"name": "x.png", "contentBase64": "!!"})
    # The SDK adds name and type itself before decoding (files.py: _fetch_file_handle).
    handle = msgspec.convert({**reply["result"], "name": "notes.txt"}, sdk.FileHandle)
    assert handle.file_type == "text/plain"
    assert handle.size_bytes == 5
    assert bad["type"] == "rpcError"


async def test_unknown_endpoint_faithful_warns_and_never_answers(srv: EmbeddedServer) -> None:
    async with raw_session(srv.api_host, "llm") as llm:
        warning = await llm.rpc("noSuchEndpoint")
        channel_warning = await llm.channel("noSuchChannel", {})
        # The next message on the socket answers the next call: nothing was sent for the others.
        follow_up = await llm.rpc("listLoaded")
    assert warning["type"] == "communicationWarning"
    assert warning["kind"] == "rpcEndpointUnknown"
    assert channel_warning[-1]["kind"] == "channelEndpointUnknown"
    assert follow_up["type"] == "rpcResult"
    assert follow_up["callId"] == 2


async def test_unknown_endpoint_strict_answers_with_errors() -> None:
    async with embedded_server(strict=True) as server, raw_session(server.api_host, "llm") as llm:
        rpc = await llm.rpc("noSuchEndpoint")
        chan = await llm.channel("noSuchChannel", {})
        bad_param = await llm.rpc("getModelInfo", "not an object")
    assert rpc["type"] == "rpcError"
    assert "noSuchEndpoint" in rpc["error"]["title"]
    assert chan[-1]["type"] == "channelError"
    assert bad_param["type"] == "rpcError"


async def test_invalid_parameter_faithful_is_a_warning(srv: EmbeddedServer) -> None:
    async with raw_session(srv.api_host, "llm") as llm:
        reply = await llm.rpc("getModelInfo", "not an object")
    assert reply["type"] == "communicationWarning"
    assert reply["kind"] == "invalidParameter"


async def test_channel_id_misuse_and_warning_cap(srv: EmbeddedServer) -> None:
    gate = asyncio.Event()
    assert isinstance(srv.engine, ScriptedEngine)
    srv.engine.script(tool_calls(ToolCall("x", {}), gate=gate))
    async with raw_session(srv.api_host, "llm") as llm:
        await llm.send(
            {
                "type": "channelCreate",
                "endpoint": "predict",
                "channelId": 7,
                "creationParameter": predict_param(),
            }
        )
        await srv.engine.wait_for_requests(1)
        await llm.send(
            {
                "type": "channelCreate",
                "endpoint": "predict",
                "channelId": 7,
                "creationParameter": predict_param(),
            }
        )
        reused = await _next_warning(llm)
        for _ in range(MAX_WARNINGS + 2):
            await llm.send({"type": "channelSend", "channelId": 99, "message": {"type": "x"}})
        await llm.send({"type": "keepAlive"})
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1].get("type") != "keepAliveAck":
            seen.append(await llm.recv())
        gate.set()
    assert reused["kind"] == "channelAlreadyOpen"
    unknown = [m for m in seen if m.get("kind") == "channelUnknown"]
    assert len(unknown) == MAX_WARNINGS - 1  # the reuse warning counted as the first


async def _next_warning(llm: RawSession) -> dict[str, Any]:
    while True:
        msg = await llm.recv()
        if msg["type"] == "communicationWarning":
            return msg


async def test_every_server_message_answers_something(srv: EmbeddedServer) -> None:
    """Never an unsolicited message: the SDK's session dies on one."""
    async with raw_session(srv.api_host, "llm") as llm:
        messages = [llm.auth_reply]
        messages.append(await llm.rpc("listLoaded"))
        messages += await llm.channel("getOrLoad", {"identifier": DEFAULT_LLM_KEY})
        messages += await llm.channel("predict", predict_param())
        messages.append(
            await llm.rpc("countTokens", {"specifier": LLM_QUERY, "inputString": "a b"})
        )
    assert messages[0] == {"success": True}
    for msg in messages[1:]:
        assert msg is not None
        assert isinstance(msg.get("callId"), int) or isinstance(msg.get("channelId"), int)


async def test_open_mode_is_first_come_first_served(srv: EmbeddedServer) -> None:
    async with raw_session(srv.api_host, "llm", client_id="me", passkey="one") as first:
        assert first.auth_reply == {"success": True}
        async with raw_session(srv.api_host, "system", client_id="me", passkey="two") as other:
            assert other.auth_reply == {
                "success": False,
                "error": 'Failed to validate client: Invalid client passkey for client "me"',
            }


async def test_token_table_accepts_its_tokens_only() -> None:
    ident, key = parse_token(TOKEN)
    async with embedded_server(tokens=[TOKEN]) as server:
        async with raw_session(server.api_host, "llm", client_id=ident, passkey=key) as ok:
            assert ok.auth_reply == {"success": True}
            assert (await ok.rpc("listLoaded"))["type"] == "rpcResult"
        async with raw_session(server.api_host, "llm", client_id=ident, passkey="x" * 20) as bad:
            assert bad.auth_reply is not None
            assert bad.auth_reply["success"] is False
            assert isinstance(bad.auth_reply["error"], str)
        # SDK 1.5.0 sends a random uuid pair and cannot pass a token: the real server's string
        # error then trips the SDK's dict(details) bug, a plain ValueError.
        with pytest.raises(ValueError, match="dictionary update sequence"):
            async with asyncio.timeout(WAIT), lmstudio.AsyncClient(server.api_host):
                pass


def test_parse_token_rejects_bad_tokens_clearly() -> None:
    assert parse_token(TOKEN) == ("ABCD1234", "abcdefghij0123456789")
    with pytest.raises(ConfigError, match="sk-lm-"):
        parse_token("sk-lm-short:key")


async def test_unknown_namespace_is_404_for_the_sdk(srv: EmbeddedServer) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as info:
        async with asyncio.timeout(WAIT), connect(f"{srv.ws_url}/nowhere"):
            pass
    assert info.value.response.status_code == 404


@pytest.mark.parametrize("namespace", ["diagnostics", "plugins", "runtime", "repository"])
async def test_quiet_namespaces_accept_and_only_warn(srv: EmbeddedServer, namespace: str) -> None:
    async with raw_session(srv.api_host, namespace) as session:
        assert session.auth_reply == {"success": True}
        reply = await session.rpc("somethingElse")
    assert reply["type"] == "communicationWarning"


async def test_get_model_info_without_throw_is_void(srv: EmbeddedServer) -> None:
    missing = {"type": "query", "query": {"identifier": "nope"}}
    async with raw_session(srv.api_host, "llm") as llm:
        quiet = await llm.rpc("getModelInfo", {"specifier": missing, "throwIfNotFound": False})
        loud = await llm.rpc("getModelInfo", {"specifier": missing, "throwIfNotFound": True})
    assert quiet == {"type": "rpcResult", "callId": 1}
    assert loud["type"] == "rpcError"
    assert loud["error"]["displayData"]["code"] == "generic.noModelMatchingQuery"
