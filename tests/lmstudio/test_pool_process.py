"""The pool against a real server process killed with SIGKILL and frozen with SIGSTOP."""

from __future__ import annotations

import asyncio
import time

import pytest

from elaria.config import LMStudioSettings, ReconnectSettings
from elaria.errors import HostDown
from elaria.lmstudio.pool import ClientPool
from elaria.lmstudio.predict import predict_round
from elaria.lmstudio.rounds import RoundRequest, RoundResult
from elaria.testing import ServerProcess

REQUEST = RoundRequest(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
RECONNECT = ReconnectSettings.model_construct(
    initial_delay_ms=100, max_delay_ms=500, stable_after_ms=2_000
)


def settings_for(url: str) -> LMStudioSettings:
    return LMStudioSettings(
        hosts=[url],
        connect_timeout_ms=15_000,  # a busy CI machine starts children slowly
        probe_interval_ms=250,
        probe_timeout_ms=500,
        first_token_timeout_ms=30_000,
        fragment_gap_timeout_ms=30_000,
    )


class Events:
    def __init__(self) -> None:
        self.kinds: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, kind: str, host: str) -> None:
        self.kinds.append(kind)
        self._changed.set()

    async def wait_for(self, kind: str, n: int, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while self.kinds.count(kind) < n:
                self._changed.clear()
                await self._changed.wait()


async def one_round(
    pool: ClientPool, url: str, settings: LMStudioSettings, **kw: object
) -> RoundResult:
    async with pool.lease(url) as lease:
        handle = await pool.model_handle(lease, None)
        return await predict_round(lease, handle.identifier, REQUEST, settings, **kw)  # type: ignore[arg-type]


async def streaming(call: asyncio.Task[RoundResult], first_fragment: asyncio.Event) -> None:
    """Wait for the first fragment; if the call ended first, show why."""
    waiter = asyncio.create_task(first_fragment.wait())
    done, _ = await asyncio.wait({call, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if call in done:
        call.result()  # raises the call's own error
        pytest.fail("the round finished before the fault could be injected")
    assert waiter in done, "no fragment within 30 s"


@pytest.mark.slow
async def test_sigkill_mid_stream_then_restart_on_the_same_port() -> None:
    # Slow tokens, so the stream is still running when the process dies.
    async with ServerProcess("--tokens-per-second", "5") as proc:
        settings = settings_for(proc.ws_url)
        events = Events()
        first_fragment = asyncio.Event()
        async with ClientPool(settings, RECONNECT, on_event=events) as pool:
            call = asyncio.create_task(
                one_round(pool, proc.ws_url, settings, on_fragment=lambda _: first_fragment.set())
            )
            await streaming(call, first_fragment)
            proc.kill()  # SIGKILL
            with pytest.raises(HostDown):
                await asyncio.wait_for(call, 10)  # typed, transient, at once
            await events.wait_for("connect_failed", 2)  # it keeps trying, with backoff
            # A new process on the same port (ServerProcess.restart leaks the old stdout pipe).
            async with ServerProcess("--tokens-per-second", "50", port=proc.port):
                await events.wait_for("connected", 2)
                result = await one_round(pool, proc.ws_url, settings)
                stats = pool.stats()[proc.ws_url]
    assert result.text
    assert stats["reconnects"] == 1
    assert stats["state"] == "connected"


@pytest.mark.slow
async def test_sigstop_is_detected_within_the_liveness_bound() -> None:
    async with ServerProcess("--tokens-per-second", "5") as proc:
        settings = settings_for(proc.ws_url)
        events = Events()
        first_fragment = asyncio.Event()
        async with ClientPool(settings, RECONNECT, on_event=events) as pool:
            call = asyncio.create_task(
                one_round(pool, proc.ws_url, settings, on_fragment=lambda _: first_fragment.set())
            )
            await streaming(call, first_fragment)
            proc.freeze()  # SIGSTOP
            frozen_at = time.monotonic()
            try:
                with pytest.raises(HostDown):
                    await asyncio.wait_for(call, 15)
                detected_after = time.monotonic() - frozen_at
            finally:
                proc.thaw()
            await events.wait_for("connected", 2)
            assert (await one_round(pool, proc.ws_url, settings)).text
    # Liveness bound here: probe every 0.25 s, 0.5 s to answer (the SDK alone: ~40 s; the
    # round's own deadlines: 30 s). Generous margin for a loaded CI machine.
    assert detected_after < 5.0
