"""``elaria serve`` as a real child process: SIGKILL, SIGSTOP, restart on the same port, flags."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import lmstudio
import pytest

from elaria.embedded import DEFAULT_LLM_KEY
from elaria.testing import ServerProcess, closed_api_host, silent_api_host

NOTICE = 5.0
WAIT = 20.0


@pytest.fixture
def proc() -> Iterator[ServerProcess]:
    # slow tokens keep a prediction streaming while the test kills or freezes the server
    with ServerProcess("--engine", "scripted", "--tokens-per-second", "20") as p:
        yield p


async def test_sigkill_mid_stream_then_restart_on_same_port(proc: ServerProcess) -> None:
    port = proc.port
    async with lmstudio.AsyncClient(proc.api_host) as old:
        model = await old.llm.model(DEFAULT_LLM_KEY)
        stream = await model.respond_stream("one two three four five six seven eight nine")
        async with asyncio.timeout(WAIT):
            async for _first in stream:
                break
        killed_at = time.monotonic()
        proc.kill()
        with pytest.raises(lmstudio.LMStudioWebsocketError, match="unexpectedly disconnected"):
            await asyncio.wait_for(old.llm.list_loaded(), NOTICE)
        assert time.monotonic() - killed_at < NOTICE
        await asyncio.to_thread(proc.restart)
        assert proc.port == port
        # the SDK never reconnects: the old client stays dead after the restart
        with pytest.raises(lmstudio.LMStudioWebsocketError):
            await asyncio.wait_for(old.llm.list_loaded(), NOTICE)
    async with asyncio.timeout(WAIT), lmstudio.AsyncClient(proc.api_host) as fresh:
        assert [m.identifier for m in await fresh.llm.list_loaded()] == [DEFAULT_LLM_KEY]


async def test_sigstop_freezes_and_sigcont_resumes(proc: ServerProcess) -> None:
    async with lmstudio.AsyncClient(proc.api_host) as client:
        proc.freeze()
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.llm.list_loaded(), 1.0)
            with pytest.raises(httpx.ReadTimeout):
                async with lmstudio.AsyncClient(proc.api_host):
                    pass
        finally:
            proc.thaw()
        assert len(await asyncio.wait_for(client.llm.list_loaded(), WAIT)) == 1


def test_sync_client_times_out_on_a_frozen_server(proc: ServerProcess) -> None:
    lmstudio.set_sync_api_timeout(1.0)
    try:
        with lmstudio.Client(proc.api_host) as client:
            model = client.llm.model(DEFAULT_LLM_KEY)
            proc.freeze()
            try:
                with pytest.raises(lmstudio.LMStudioTimeoutError):
                    model.respond("x")
            finally:
                proc.thaw()
    finally:
        lmstudio.set_sync_api_timeout(60.0)


def test_sigterm_is_a_clean_exit(proc: ServerProcess) -> None:
    assert proc.running
    assert proc.stop() == 0
    assert not proc.running


def test_fault_flags_reach_the_server() -> None:
    with (
        ServerProcess("--greeting", "not_found") as p,
        pytest.raises(lmstudio.LMStudioClientError, match="not reachable"),
        lmstudio.Client(p.api_host),
    ):
        pass
    with (
        ServerProcess("--auth", "reject") as p,
        pytest.raises(ValueError),
        lmstudio.Client(p.api_host) as client,
    ):
        client.llm.list_loaded()


def test_bad_flags_are_a_clear_error_not_a_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "elaria.cli", "serve", "--token", "nope"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 2
    assert "sk-lm-" in done.stderr
    assert "Traceback" not in done.stderr


async def test_closed_and_silent_hosts() -> None:
    with pytest.raises(lmstudio.LMStudioClientError, match="not reachable"):
        async with asyncio.timeout(NOTICE), lmstudio.AsyncClient(closed_api_host()):
            pass
    with silent_api_host() as host, pytest.raises(httpx.ReadTimeout):
        async with asyncio.timeout(NOTICE), lmstudio.AsyncClient(host):
            pass


def test_a_child_that_fails_to_start_is_reported_and_reaped() -> None:
    proc = ServerProcess("--preload", "no-such-model")
    with pytest.raises(RuntimeError, match="no-such-model"):
        proc.start()
    assert not proc.running
    assert "no-such-model" in proc.stderr_text()
