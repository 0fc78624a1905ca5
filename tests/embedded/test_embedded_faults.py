"""Every in-process fault mode, and what the unmodified SDK sees (error type, generous bound)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import lmstudio
import pytest

from elaria.embedded import DEFAULT_LLM_KEY, EmbeddedServer, ScriptedEngine, reply
from elaria.testing import embedded_server, raw_session

#: Generous bound for "the SDK notices": real failures show within milliseconds.
NOTICE = 5.0
#: How long a negative check waits for something that must not happen (a frozen server).
QUIET = 0.5


@pytest.fixture
async def srv() -> AsyncIterator[EmbeddedServer]:
    async with embedded_server(engine=ScriptedEngine()) as server:
        yield server


def engine_of(srv: EmbeddedServer) -> ScriptedEngine:
    assert isinstance(srv.engine, ScriptedEngine)
    return srv.engine


async def _held_stream(
    srv: EmbeddedServer, client: lmstudio.AsyncClient
) -> tuple[asyncio.Task[object], asyncio.Event]:
    """A respond() that streams one fragment and then waits for the returned gate."""
    gate = asyncio.Event()
    engine_of(srv).script(reply("a b c", gate=gate, gate_after=1))
    model = await client.llm.model(DEFAULT_LLM_KEY)
    task: asyncio.Task[object] = asyncio.create_task(model.respond("x"))
    await engine_of(srv).wait_for_requests(len(engine_of(srv).requests) + 1)
    return task, gate


async def test_kill_resets_pending_and_later_calls(srv: EmbeddedServer) -> None:
    async with lmstudio.AsyncClient(srv.api_host) as client:
        task, _gate = await _held_stream(srv, client)
        started = time.monotonic()
        assert srv.faults.kill() == 5
        with pytest.raises(lmstudio.LMStudioWebsocketError, match="unexpectedly disconnected"):
            await asyncio.wait_for(task, NOTICE)
        assert time.monotonic() - started < NOTICE
        with pytest.raises(lmstudio.LMStudioWebsocketError):
            await asyncio.wait_for(client.llm.list_loaded(), NOTICE)
    async with lmstudio.AsyncClient(srv.api_host) as fresh:
        assert len(await asyncio.wait_for(fresh.llm.list_loaded(), NOTICE)) == 1
    # the server stopped generating for the dead socket
    assert engine_of(srv).log[-1] == ("stopped", 1)


async def test_kill_one_namespace_only(srv: EmbeddedServer) -> None:
    async with lmstudio.AsyncClient(srv.api_host) as client:
        assert srv.faults.kill(namespace="llm") == 1
        with pytest.raises(lmstudio.LMStudioWebsocketError):
            await asyncio.wait_for(client.llm.list_loaded(), NOTICE)
        embeds = await asyncio.wait_for(client.embedding.list_loaded(), NOTICE)
        assert len(embeds) == 1


async def test_kill_one_client_only(srv: EmbeddedServer) -> None:
    async with lmstudio.AsyncClient(srv.api_host) as victim:
        victim_id = next(iter({c.client_id for c in srv.connections}))
        async with lmstudio.AsyncClient(srv.api_host) as bystander:
            assert srv.faults.kill(client=victim_id) == 5
            with pytest.raises(lmstudio.LMStudioWebsocketError):
                await asyncio.wait_for(victim.llm.list_loaded(), NOTICE)
            assert len(await asyncio.wait_for(bystander.llm.list_loaded(), NOTICE)) == 1


async def test_graceful_close_mid_stream(srv: EmbeddedServer) -> None:
    async with lmstudio.AsyncClient(srv.api_host) as client:
        task, _gate = await _held_stream(srv, client)
        assert await srv.faults.close(namespace="llm") == 1
        with pytest.raises(lmstudio.LMStudioWebsocketError, match="unexpectedly disconnected"):
            await asyncio.wait_for(task, NOTICE)


async def test_freeze_stops_answers_and_pings_until_thaw(srv: EmbeddedServer) -> None:
    async with raw_session(srv.api_host, "llm") as raw:
        srv.faults.freeze()
        assert srv.faults.frozen
        await raw.send({"type": "rpcCall", "endpoint": "listLoaded", "callId": 1})
        pong = await raw.ws.ping()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pong), QUIET)
        # a new client cannot even pass the greeting probe: httpx times out after 1 s
        with pytest.raises(httpx.ReadTimeout):
            async with lmstudio.AsyncClient(srv.api_host):
                pass
        srv.faults.thaw()
        await asyncio.wait_for(pong, NOTICE)
        answer = await raw.recv()
    assert answer["type"] == "rpcResult"
    assert answer["callId"] == 1


async def test_frozen_server_leaves_async_calls_hanging(srv: EmbeddedServer) -> None:
    async with lmstudio.AsyncClient(srv.api_host) as client:
        srv.faults.freeze()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.llm.list_loaded(), QUIET)
        srv.faults.thaw()
        assert len(await asyncio.wait_for(client.llm.list_loaded(), NOTICE)) == 1


async def test_delay_and_jitter_keep_order(srv: EmbeddedServer) -> None:
    engine_of(srv).script(reply("one two three four"))
    async with lmstudio.AsyncClient(srv.api_host) as client:
        model = await client.llm.model(DEFAULT_LLM_KEY)
        srv.faults.delay_s = 0.05
        srv.faults.jitter_s = 0.02
        started = time.monotonic()
        result = await asyncio.wait_for(model.respond("x"), NOTICE)
        elapsed = time.monotonic() - started
    assert result.content == "one two three four"
    # progress x2, 4 fragments, success, close: each waited at least the fixed delay
    assert elapsed >= 8 * 0.05


@pytest.mark.parametrize("graceful", [False, True])
async def test_drop_after_fragments(srv: EmbeddedServer, graceful: bool) -> None:
    srv.faults.drop_after_fragments = 2
    srv.faults.drop_graceful = graceful
    engine_of(srv).script(reply("a b c d e f"))
    seen: list[str] = []
    async with lmstudio.AsyncClient(srv.api_host) as client:
        model = await client.llm.model(DEFAULT_LLM_KEY)
        stream = await model.respond_stream("x")

        async def read_all() -> None:
            async for fragment in stream:
                seen.append(fragment.content)

        with pytest.raises(lmstudio.LMStudioWebsocketError):
            await asyncio.wait_for(read_all(), NOTICE)
    assert seen == ["a", " b"]
    assert engine_of(srv).log == [("start", 1), ("stopped", 1)]


async def test_auth_reject_is_a_value_error_in_sdk_1_5(srv: EmbeddedServer) -> None:
    srv.faults.auth = "reject"
    with pytest.raises(ValueError, match="dictionary update sequence"):
        async with asyncio.timeout(NOTICE), lmstudio.AsyncClient(srv.api_host):
            pass


async def test_auth_never_answered_hangs_the_sdk(srv: EmbeddedServer) -> None:
    srv.faults.auth = "hang"
    async with raw_session(srv.api_host, "llm", authenticate=False) as raw:
        await raw.send({"authVersion": 1, "clientIdentifier": "a", "clientPasskey": "b"})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(raw.recv(), QUIET)
    client = lmstudio.AsyncClient(srv.api_host)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.__aenter__(), QUIET + 1.0)
    await client.aclose()


async def test_auth_then_close(srv: EmbeddedServer) -> None:
    srv.faults.auth = "close"
    with pytest.raises(lmstudio.LMStudioWebsocketError):
        async with asyncio.timeout(NOTICE), lmstudio.AsyncClient(srv.api_host) as client:
            await client.llm.list_loaded()


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("slow", httpx.ReadTimeout),
        ("non_json", json.JSONDecodeError),
        ("not_found", lmstudio.LMStudioClientError),
    ],
)
async def test_greeting_modes(srv: EmbeddedServer, mode: str, error: type[Exception]) -> None:
    srv.faults.greeting = mode  # type: ignore[assignment]
    with pytest.raises(error):
        async with asyncio.timeout(NOTICE), lmstudio.AsyncClient(srv.api_host):
            pass
    srv.faults.reset()
    async with asyncio.timeout(NOTICE), lmstudio.AsyncClient(srv.api_host) as client:
        assert len(await client.llm.list_loaded()) == 1
