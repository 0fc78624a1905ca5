"""Failover across hosts and models, against embedded servers that stop and come back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from elaria.config import BreakerSettings, LMStudioSettings, ReconnectSettings, Settings
from elaria.embedded import EmbeddedServer, ScriptedEngine, reply, server_error
from elaria.errors import AllTargetsFailed, ContentPolicyError, ContextOverflowError
from elaria.lmstudio.failover import Failover
from elaria.lmstudio.pool import ClientPool
from elaria.lmstudio.rounds import RoundRequest
from elaria.resilience import BreakerState, ManualClock
from elaria.testing import embedded_server

REQUEST = RoundRequest(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])


def settings_for(*urls: str, **lmstudio: object) -> Settings:
    return Settings(
        lmstudio=LMStudioSettings(
            hosts=list(urls),
            model="scripted-llm",
            connect_timeout_ms=3_000,
            probe_interval_ms=200,
            probe_timeout_ms=1_000,
            **lmstudio,  # type: ignore[arg-type]
        ),
        reconnect=ReconnectSettings.model_construct(initial_delay_ms=100, max_delay_ms=200),
        breaker=BreakerSettings(failure_threshold=1, reset_timeout_ms=5_000),
    )


class Connected:
    """Waits until the pool (re)connected to a given host."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._changed = asyncio.Event()

    def __call__(self, kind: str, host: str) -> None:
        self.seen.append((kind, host))
        self._changed.set()

    async def wait(self, host: str, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.seen.count(("connected", host)) < n:
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def two_servers() -> AsyncIterator[tuple[EmbeddedServer, EmbeddedServer, AsyncExitStack]]:
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(embedded_server(engine=ScriptedEngine()))
        second = await stack.enter_async_context(embedded_server(engine=ScriptedEngine()))
        yield first, second, stack


async def test_primary_down_fails_over_then_traffic_returns_after_the_probe() -> None:
    async with two_servers() as (primary, secondary, stack):
        settings = settings_for(primary.ws_url, secondary.ws_url)
        clock = ManualClock()
        connected = Connected()
        async with ClientPool(settings.lmstudio, settings.reconnect, on_event=connected) as pool:
            failover = Failover(pool, settings, clock=clock)
            primary_url, port = primary.ws_url, primary.port
            assert (await failover.predict(REQUEST)).host == primary_url
            await primary.close()  # the primary goes away: refused from now on
            moved = await failover.predict(REQUEST)
            assert moved.host == secondary.ws_url
            assert [e["kind"] for e in moved.events] == ["failover"]
            assert moved.events[0]["host"] == primary_url
            assert moved.events[0]["error_class"] == "HostDown"
            host_breaker = failover.breakers.for_host(primary_url)
            assert host_breaker.state is BreakerState.OPEN
            assert failover.stats()["breakers"]["hosts"][primary_url]["state"] == "open"

            skipped = await failover.predict(REQUEST)  # open breaker: not even tried
            assert skipped.host == secondary.ws_url
            assert [e["kind"] for e in skipped.events] == ["skip"]

            engine = ScriptedEngine()
            engine.script(reply("primary is back"))
            await stack.enter_async_context(embedded_server(engine=engine, port=port))
            await connected.wait(primary_url, 2)
            # The pool reconnected (its probe passed): the breaker lets one probe call through
            # now instead of after its 5 s reset timeout, and that call succeeds.
            back = await failover.predict(REQUEST)
            assert back.host == primary_url
            assert back.text == "primary is back"
            assert host_breaker.stats()["state"] == "closed"
            assert (await failover.predict(REQUEST)).host == primary_url


async def test_context_overflow_and_content_policy_never_fail_over() -> None:
    async with two_servers() as (primary, secondary, _):
        settings = settings_for(primary.ws_url, secondary.ws_url)
        engine = primary_engine(primary)
        engine.script(
            server_error("Context length exceeded: 9000 tokens > 4096"),
            server_error("Refused: the request violates the content policy"),
        )
        async with ClientPool(settings.lmstudio, settings.reconnect) as pool:
            failover = Failover(pool, settings)
            with pytest.raises(ContextOverflowError) as info:
                await failover.predict(REQUEST)
            assert info.value.host == primary.ws_url
            with pytest.raises(ContentPolicyError):
                await failover.predict(REQUEST)
            assert primary_engine(secondary).requests == []
            # The host answered: its breaker does not count this.
            assert failover.breakers.for_host(primary.ws_url).state is BreakerState.CLOSED


def primary_engine(server: EmbeddedServer) -> ScriptedEngine:
    engine = server.engine
    assert isinstance(engine, ScriptedEngine)
    return engine


async def test_an_unloaded_model_is_loaded_and_the_round_retried() -> None:
    engine = ScriptedEngine()
    async with embedded_server(engine=engine, jit=False) as server:
        settings = settings_for(server.ws_url)
        async with ClientPool(settings.lmstudio, settings.reconnect) as pool:
            failover = Failover(pool, settings)
            assert (await failover.predict(REQUEST)).text
            async with pool.lease(server.ws_url) as lease:
                await lease.client.llm.unload("scripted-llm")  # behind the cached handle's back
            result = await failover.predict(REQUEST)
    assert result.text
    assert [e["kind"] for e in result.events] == ["load_model"]
    assert engine.loads.count("scripted-llm") == 2


async def test_a_transient_failure_is_retried_once_on_the_same_target() -> None:
    engine = ScriptedEngine()
    engine.script(server_error("The model crashed"), reply("second try"))
    async with embedded_server(engine=engine) as server:
        settings = settings_for(server.ws_url)
        async with ClientPool(settings.lmstudio, settings.reconnect) as pool:
            result = await Failover(pool, settings).predict(REQUEST)
    assert result.text == "second try"
    assert [e["kind"] for e in result.events] == ["retry"]


async def test_models_within_a_host_are_tried_in_order() -> None:
    engine = ScriptedEngine()
    engine.script(server_error("crash 1"), server_error("crash 2"), model="scripted-llm")
    async with embedded_server(engine=engine) as server:
        settings = settings_for(server.ws_url, models=["scripted-llm"])
        settings.lmstudio.model = "no-such-model"
        async with ClientPool(settings.lmstudio, settings.reconnect) as pool:
            with pytest.raises(AllTargetsFailed) as info:
                await Failover(pool, settings).predict(REQUEST)
    chain = info.value.attempts
    assert [a.model for a in chain] == ["no-such-model", "scripted-llm"]
    assert "no-such-model" in str(info.value)
    assert "crash 2" in str(info.value)


async def test_all_targets_failed_names_every_host() -> None:
    async with two_servers() as (first, second, _):
        urls = [first.ws_url, second.ws_url]
        settings = settings_for(*urls)
        await first.close()
        await second.close()
        async with ClientPool(settings.lmstudio, settings.reconnect) as pool:
            with pytest.raises(AllTargetsFailed) as info:
                await Failover(pool, settings).predict(REQUEST)
    text = str(info.value)
    assert all(url in text for url in urls)
    assert "LM Studio is running" in text


async def test_no_hosts_is_a_configuration_error() -> None:
    settings = Settings()
    async with ClientPool(settings.lmstudio) as pool:
        with pytest.raises(Exception, match="no LM Studio host"):
            await Failover(pool, settings).predict(REQUEST)


async def test_an_open_breaker_probes_after_its_reset_timeout() -> None:
    engine = ScriptedEngine()
    engine.script(server_error("crash"), server_error("crash again"), reply("recovered"))
    async with embedded_server(engine=engine) as server:
        settings = settings_for(server.ws_url)
        clock = ManualClock()
        async with ClientPool(settings.lmstudio, settings.reconnect) as pool:
            failover = Failover(pool, settings, clock=clock)
            with pytest.raises(AllTargetsFailed):
                await failover.predict(REQUEST)  # crash, retry, crash: the model breaker opens
            model_breaker = failover.breakers.for_model(server.ws_url, "scripted-llm")
            assert model_breaker.stats()["state"] == "open"
            with pytest.raises(AllTargetsFailed, match="skipped"):
                await failover.predict(REQUEST)
            clock.advance(5.0)
            assert (await failover.predict(REQUEST)).text == "recovered"
            assert model_breaker.stats()["state"] == "closed"


async def test_cancelling_a_failover_round_cancels_it_on_the_server_and_counts_nothing() -> None:
    engine = ScriptedEngine()
    gate = asyncio.Event()
    engine.script(reply("one two three", gate=gate, gate_after=1))
    async with embedded_server(engine=engine) as server:
        url = server.ws_url
        settings = settings_for(url)
        async with ClientPool(settings.lmstudio, settings.reconnect) as pool:
            failover = Failover(pool, settings)
            first = asyncio.Event()
            task = asyncio.create_task(failover.predict(REQUEST, on_fragment=lambda _: first.set()))
            await asyncio.wait_for(first.wait(), 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with asyncio.timeout(5):
                while ("stopped", 1) not in engine.log:
                    await asyncio.sleep(0.01)
            breakers = failover.stats()["breakers"]
    assert breakers["hosts"][url]["consecutive_failures"] == 0
    assert breakers["models"][f"{url}/scripted-llm"]["consecutive_failures"] == 0
    assert breakers["hosts"][url]["state"] == "closed"
