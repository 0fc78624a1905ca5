"""FaultProxy between the unmodified SDK and the embedded server: pass, latency, reset,
blackhole (hold and deliver), refuse."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import lmstudio
import pytest

from elaria.embedded import DEFAULT_LLM_KEY, FaultProxy
from elaria.testing import embedded_server

NOTICE = 5.0
QUIET = 0.5


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    async with embedded_server() as server, FaultProxy("127.0.0.1", server.port) as p:
        yield p


async def test_passes_traffic_and_adds_latency(proxy: FaultProxy) -> None:
    async with asyncio.timeout(NOTICE), lmstudio.AsyncClient(proxy.api_host) as client:
        model = await client.llm.model(DEFAULT_LLM_KEY)
        proxy.latency_s = 0.1
        started = time.monotonic()
        result = await model.respond("through the proxy")
        elapsed = time.monotonic() - started
    assert result.content == "You said: through the proxy"
    assert elapsed >= 2 * 0.1  # one way out, one way back, at least
    assert proxy.connections_seen >= 6  # greeting + five namespaces


async def test_reset_kills_the_sdk_session(proxy: FaultProxy) -> None:
    async with lmstudio.AsyncClient(proxy.api_host) as client:
        assert proxy.reset() == 5
        with pytest.raises(lmstudio.LMStudioWebsocketError):
            await asyncio.wait_for(client.llm.list_loaded(), NOTICE)
    async with asyncio.timeout(NOTICE), lmstudio.AsyncClient(proxy.api_host) as fresh:
        assert len(await fresh.llm.list_loaded()) == 1


async def test_blackhole_holds_then_delivers(proxy: FaultProxy) -> None:
    async with lmstudio.AsyncClient(proxy.api_host) as client:
        proxy.blackhole()
        pending = asyncio.ensure_future(client.llm.list_loaded())
        done, _ = await asyncio.wait({pending}, timeout=QUIET)
        assert not done
        with pytest.raises(httpx.ReadTimeout):
            async with lmstudio.AsyncClient(proxy.api_host):
                pass
        proxy.restore()
        assert len(await asyncio.wait_for(pending, NOTICE)) == 1


async def test_refuse_resets_new_connections(proxy: FaultProxy) -> None:
    """A reset during the greeting probe escapes the SDK as a raw httpx transport error."""
    proxy.refuse = True
    with pytest.raises(httpx.TransportError):
        async with asyncio.timeout(NOTICE), lmstudio.AsyncClient(proxy.api_host):
            pass
    assert proxy.connections_seen == 1
    assert proxy.open_connections == 0
