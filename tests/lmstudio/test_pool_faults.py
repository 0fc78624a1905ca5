"""The pool against a misbehaving embedded server (in-process fault injection)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from elaria.config import LMStudioSettings, ReconnectSettings
from elaria.embedded import EmbeddedServer, ScriptedEngine, reply
from elaria.errors import HostDown
from elaria.lmstudio.pool import ClientPool, HostState
from elaria.lmstudio.predict import predict_round
from elaria.lmstudio.rounds import RoundRequest, RoundResult
from elaria.resilience import ManualClock
from elaria.testing import embedded_server

REQUEST = RoundRequest(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])


def client_sockets(port: int) -> int:
    """Established TCP sockets of this process that point at ``port`` (the client side)."""
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


class Recorder:
    """Collects pool events and lets a test wait for the n-th of a kind."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str]] = []
        self._changed = asyncio.Event()

    def __call__(self, kind: str, host: str) -> None:
        self.events.append((time.monotonic(), kind))
        self._changed.set()

    def count(self, kind: str) -> int:
        return sum(1 for _, k in self.events if k == kind)

    def times(self, kind: str) -> list[float]:
        return [t for t, k in self.events if k == kind]

    async def wait_for(self, kind: str, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.count(kind) < n:
                self._changed.clear()
                await self._changed.wait()


async def one_round(
    pool: ClientPool, url: str, settings: LMStudioSettings, **kw: Any
) -> RoundResult:
    async with pool.lease(url) as lease:
        handle = await pool.model_handle(lease, "scripted-llm")
        return await predict_round(lease, handle.identifier, REQUEST, settings, **kw)


async def test_kill_mid_stream_surfaces_host_down_then_reconnects(
    server: EmbeddedServer,
    engine: ScriptedEngine,
    lms_settings: LMStudioSettings,
    fast_reconnect: ReconnectSettings,
) -> None:
    gate = asyncio.Event()
    engine.script(reply("one two three", gate=gate, gate_after=1), reply("after restart"))
    recorder = Recorder()
    got_fragment = asyncio.Event()
    async with ClientPool(lms_settings, fast_reconnect, on_event=recorder) as pool:
        task = asyncio.create_task(
            one_round(pool, server.ws_url, lms_settings, on_fragment=lambda _: got_fragment.set())
        )
        await asyncio.wait_for(got_fragment.wait(), 5)
        assert server.faults.kill() > 0
        with pytest.raises(HostDown):
            await asyncio.wait_for(task, 5)
        await recorder.wait_for("connected", 2)
        result = await one_round(pool, server.ws_url, lms_settings)
        stats = pool.stats()[server.ws_url]
    assert result.text == "after restart"
    assert stats["reconnects"] == 1
    assert stats["generation"] == 2
    assert recorder.count("evicted") >= 1


async def test_a_frozen_server_is_detected_by_the_liveness_probe(
    server: EmbeddedServer,
    engine: ScriptedEngine,
    fast_reconnect: ReconnectSettings,
) -> None:
    # Liveness bound: probe every 0.2 s, 1 s to answer. The round's own deadline is 30 s.
    settings = LMStudioSettings(
        hosts=[server.ws_url],
        probe_interval_ms=200,
        probe_timeout_ms=1_000,
        connect_timeout_ms=5_000,
        first_token_timeout_ms=30_000,
    )
    recorder = Recorder()
    async with ClientPool(settings, fast_reconnect, on_event=recorder) as pool:
        await one_round(pool, server.ws_url, settings)
        gate = asyncio.Event()
        engine.script(reply("held", gate=gate, gate_after=0))
        task = asyncio.create_task(one_round(pool, server.ws_url, settings))
        await engine.wait_for_requests(2)
        server.faults.freeze()
        frozen_at = time.monotonic()
        with pytest.raises(HostDown):
            await asyncio.wait_for(task, 10)
        detected_after = time.monotonic() - frozen_at
        assert recorder.count("evicted") == 1
        assert pool.state(server.ws_url) in (HostState.RECONNECTING, HostState.DOWN)
        server.faults.thaw()
        await recorder.wait_for("connected", 2)
        assert (await one_round(pool, server.ws_url, settings)).text
    # Far below the round's 30 s deadline and the SDK's ~40 s ping timeout.
    assert detected_after < 5.0


async def test_accept_then_drop_cannot_cause_a_hot_loop(
    server: EmbeddedServer, lms_settings: LMStudioSettings
) -> None:
    server.faults.auth = "close"  # authenticate, then close at once
    reconnect = ReconnectSettings.model_construct(
        initial_delay_ms=100, max_delay_ms=400, stable_after_ms=5_000
    )
    recorder = Recorder()
    # rng=1: each delay is its ceiling, so the expected schedule is exact.
    async with ClientPool(lms_settings, reconnect, on_event=recorder, rng=lambda: 1.0) as pool:
        with pytest.raises(HostDown):
            async with pool.lease(server.ws_url):
                pass
        await recorder.wait_for("connect_attempt", 6)
        times = recorder.times("connect_attempt")
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Never faster than the schedule 0.1, 0.2, 0.4, 0.4, 0.4 s: no hot loop.
        for gap, floor in zip(gaps, [0.1, 0.2, 0.4, 0.4, 0.4], strict=False):
            assert gap >= floor * 0.95
        assert (len(times) - 1) / (times[-1] - times[0]) < 4.0  # attempts per second
        assert recorder.count("connected") == 0
        server.faults.reset()
        await recorder.wait_for("connected", 1)
        assert pool.state(server.ws_url) is HostState.CONNECTED


async def test_fifty_sessions_share_one_client(lms_settings: LMStudioSettings) -> None:
    engine = ScriptedEngine()
    gate = asyncio.Event()
    engine.script(*(reply("pooled", gate=gate, gate_after=0) for _ in range(50)))
    # No per-model queue, so all fifty predictions are in flight on the server at once.
    async with embedded_server(engine=engine, queue_per_model=False) as server:
        settings = lms_settings.model_copy(update={"hosts": [server.ws_url]})
        async with ClientPool(settings) as pool:
            tasks = [
                asyncio.create_task(one_round(pool, server.ws_url, settings)) for _ in range(50)
            ]
            await engine.wait_for_requests(50)
            assert pool.stats()[server.ws_url]["in_flight"] == 50
            in_flight_sockets = client_sockets(server.port)
            gate.set()
            results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
            assert client_sockets(server.port) == 5
            assert pool.stats()[server.ws_url]["connect_attempts"] == 1
    assert all(r.text == "pooled" for r in results)
    assert in_flight_sockets == 5  # one client: five namespace sockets, not 5 x 50


def our_tasks() -> set[asyncio.Task[Any]]:
    """Tasks running pool or SDK code (the embedded server's own tasks are not ours)."""
    out = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        path = Path(code.co_filename).parts if code else ()
        if ("lmstudio" in path and "tests" not in path) or "pool" in task.get_name():
            out.add(task)
    return out


async def test_close_leaves_no_socket_task_or_thread(
    server: EmbeddedServer, lms_settings: LMStudioSettings
) -> None:
    threads_before = set(threading.enumerate())
    pool = ClientPool(lms_settings)
    await one_round(pool, server.ws_url, lms_settings)
    assert client_sockets(server.port) == 5
    assert our_tasks()
    await pool.close()
    assert client_sockets(server.port) == 0
    assert our_tasks() == set()
    assert set(threading.enumerate()) <= threads_before
    assert pool.state(server.ws_url) is HostState.CLOSED
    with pytest.raises(Exception, match="closed"):
        async with pool.lease(server.ws_url):
            pass


async def test_idle_clients_are_closed_and_reopened_on_demand(
    server: EmbeddedServer, lms_settings: LMStudioSettings
) -> None:
    clock = ManualClock()
    settings = lms_settings.model_copy(update={"idle_close_s": 60})
    async with ClientPool(settings, clock=clock) as pool:
        await one_round(pool, server.ws_url, settings)
        clock.advance(59)
        assert await pool.close_idle() == 0
        clock.advance(2)
        assert await pool.close_idle() == 1
        assert pool.state(server.ws_url) is HostState.IDLE
        assert client_sockets(server.port) == 0
        assert (await one_round(pool, server.ws_url, settings)).text
        assert pool.stats()[server.ws_url]["generation"] == 2


async def test_connections_dropped_soon_after_opening_do_not_reset_the_backoff(
    server: EmbeddedServer, lms_settings: LMStudioSettings
) -> None:
    # Each connection passes its first probe, then the server drops it at once: only the
    # "stable for stable_after before the backoff resets" rule keeps this from looping hot.
    settings = lms_settings.model_copy(update={"probe_interval_ms": 100})
    reconnect = ReconnectSettings(initial_delay_ms=100, max_delay_ms=1_000, stable_after_ms=5_000)
    recorder = Recorder()
    loop = asyncio.get_running_loop()

    def on_event(kind: str, host: str) -> None:
        recorder(kind, host)
        if kind == "connected":
            loop.call_soon(server.faults.kill)

    async with ClientPool(settings, reconnect, on_event=on_event, rng=lambda: 1.0) as pool:
        with contextlib.suppress(HostDown):
            async with pool.lease(server.ws_url):
                pass
        await recorder.wait_for("connected", 5, timeout=20)
        times = recorder.times("connect_attempt")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # The delays keep doubling (0.1, 0.2, 0.4, 0.8 s) although every connection "worked".
    for gap, floor in zip(gaps, [0.1, 0.2, 0.4, 0.8], strict=False):
        assert gap >= floor * 0.95


async def test_a_host_that_went_away_fails_fast_and_says_why(
    lms_settings: LMStudioSettings, fast_reconnect: ReconnectSettings
) -> None:
    engine = ScriptedEngine()
    recorder = Recorder()
    async with embedded_server(engine=engine) as server:
        url = server.ws_url
        settings = lms_settings.model_copy(update={"hosts": [url]})
        pool = ClientPool(settings, fast_reconnect, on_event=recorder)
        await one_round(pool, url, settings)
    # The server is gone: the pool notices, retries in the background, and callers fail fast.
    await recorder.wait_for("connect_failed", 1)
    with pytest.raises(HostDown) as info:
        await one_round(pool, url, settings)
    stats = pool.stats()[url]
    assert stats["state"] in ("down", "reconnecting")
    assert stats["last_error"]
    assert stats["last_error_at"]
    assert "LM Studio is running" in str(info.value)
    assert url in repr(pool)
    await pool.close()
