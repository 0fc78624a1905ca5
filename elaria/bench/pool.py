"""``elaria bench pool``: what sharing one client per host buys, and what a restart costs.

One run reports, against an ``elaria serve --engine scripted`` child process:

* ``sessions``: resident memory and sockets of N concurrent sessions (each one prediction round,
  all clients still open when measured) **pooled** (one ``ClientPool``: one ``AsyncClient``)
  versus **one client per session** (N pools). Each mode runs in a fresh Python process so the
  RSS deltas do not contaminate each other; ``memory_saving`` is ``1 - pooled / per_session``
  of the RSS growth over the same process's baseline (the original design claimed 85 %).
* ``restart``: callers keep calling through :class:`~elaria.lmstudio.failover.Failover` with a
  retry policy while the server is SIGKILLed and started again on the same port, with the
  default reconnect and breaker settings: seconds from "server ready" to the first successful
  call, and calls lost (a call is lost when it failed after all its retries; must be 0).

Ratios are measured in the same run; absolute figures drift on a shared machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import subprocess
import sys
import time
from typing import Any

import psutil

from elaria.config import LMStudioSettings, Settings
from elaria.errors import AllTargetsFailed, TransientBackendError
from elaria.lmstudio.failover import Failover
from elaria.lmstudio.pool import ClientPool
from elaria.lmstudio.predict import predict_round
from elaria.lmstudio.rounds import RoundRequest
from elaria.resilience.backoff import delays
from elaria.resilience.retry import retry
from elaria.testing import ServerProcess

REQUEST = RoundRequest(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
#: A session child gets this long to connect, run and report; far above what it needs.
CHILD_TIMEOUT_S = 300.0
#: How long the server stays dead during the restart test, like a quick app restart.
DOWN_S = 1.0
#: Caller retry policy during the restart: patient enough to span a restart.
CALLER_ATTEMPTS = 30


def _sockets_to(port: int) -> int:
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def _session_child(mode: str, url: str, sessions: int) -> dict[str, Any]:
    """Runs in a fresh process: N sessions pooled or one pool (client) each; RSS and sockets."""
    settings = LMStudioSettings(hosts=[url], connect_timeout_ms=60_000, probe_timeout_ms=30_000)
    port = int(url.rsplit(":", 1)[1])
    proc = psutil.Process()
    gc.collect()
    base = proc.memory_info().rss
    pools = (
        [ClientPool(settings)]
        if mode == "pooled"
        else [ClientPool(settings) for _ in range(sessions)]
    )

    async def session(i: int) -> str:
        pool = pools[i % len(pools)]
        async with pool.lease(url) as lease:
            handle = await pool.model_handle(lease, None)
            result = await predict_round(lease, handle.identifier, REQUEST, settings)
            return result.text

    started = time.perf_counter()
    texts = await asyncio.gather(*(session(i) for i in range(sessions)))
    elapsed = time.perf_counter() - started
    gc.collect()
    grown = proc.memory_info().rss - base
    sockets = _sockets_to(port)
    for pool in pools:
        await pool.close()
    return {
        "mode": mode,
        "sessions": sessions,
        "ok": sum(1 for t in texts if t),
        "rss_growth_mb": round(grown / 2**20, 2),
        "sockets": sockets,
        "seconds": round(elapsed, 3),
    }


def _run_child(mode: str, url: str, sessions: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "elaria.bench.pool", mode, url, str(sessions)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def _sessions(server: ServerProcess, sessions: int) -> dict[str, Any]:
    pooled = await asyncio.to_thread(_run_child, "pooled", server.ws_url, sessions)
    separate = await asyncio.to_thread(_run_child, "per_session", server.ws_url, sessions)
    saving = (
        1 - pooled["rss_growth_mb"] / separate["rss_growth_mb"]
        if separate["rss_growth_mb"] > 0
        else None
    )
    return {
        "pooled": pooled,
        "per_session": separate,
        "memory_saving": None if saving is None else round(saving, 3),
        "socket_ratio": round(separate["sockets"] / max(1, pooled["sockets"]), 1),
        "claimed_saving": 0.85,
    }


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, AllTargetsFailed | TransientBackendError)


async def _restart(server: ServerProcess, callers: int, duration_s: float) -> dict[str, Any]:
    settings = Settings(lmstudio=LMStudioSettings(hosts=[server.ws_url]))
    ok = lost = retries = 0
    successes: list[float] = []
    stop = asyncio.Event()

    def count_retry(attempt: int, exc: BaseException, delay: float) -> None:
        nonlocal retries
        retries += 1

    async with ClientPool(settings.lmstudio, settings.reconnect) as pool:
        failover = Failover(pool, settings)
        await failover.predict(REQUEST)

        async def caller() -> None:
            nonlocal ok, lost
            while not stop.is_set():
                try:
                    await retry(
                        lambda: failover.predict(REQUEST),
                        attempts=CALLER_ATTEMPTS,
                        retry_on=_retryable,
                        delays=delays(0.1, 1.0),
                        on_retry=count_retry,
                    )
                except Exception:
                    lost += 1
                else:
                    ok += 1
                    successes.append(time.monotonic())

        tasks = [asyncio.create_task(caller()) for _ in range(callers)]
        await asyncio.sleep(duration_s / 4)  # steady traffic before the crash
        server.kill()
        await asyncio.sleep(DOWN_S)
        await asyncio.to_thread(server.start)  # same port: ServerProcess keeps it
        ready_at = time.monotonic()
        await asyncio.sleep(duration_s)
        stop.set()
        await asyncio.gather(*tasks)
        reconnects = pool.stats()[server.ws_url]["reconnects"]
    after = [t - ready_at for t in successes if t >= ready_at]
    return {
        "callers": callers,
        "calls_ok": ok,
        "calls_lost": lost,
        "retries": retries,
        "reconnects": reconnects,
        "restart_to_first_success_s": round(min(after), 3) if after else None,
        "settings": {
            "reconnect_initial_delay_ms": settings.reconnect.initial_delay_ms,
            "reconnect_max_delay_ms": settings.reconnect.max_delay_ms,
            "probe_interval_ms": settings.lmstudio.probe_interval_ms,
        },
    }


async def run(quick: bool) -> dict[str, Any]:
    sessions = 10 if quick else 50
    with ServerProcess("--no-queue") as server:
        report: dict[str, Any] = {"sessions": await _sessions(server, sessions)}
        report["restart"] = await _restart(
            server, callers=3 if quick else 10, duration_s=3.0 if quick else 8.0
        )
    return report


if __name__ == "__main__":  # the session child: python -m elaria.bench.pool MODE URL N
    with contextlib.suppress(KeyboardInterrupt):
        print(json.dumps(asyncio.run(_session_child(sys.argv[1], sys.argv[2], int(sys.argv[3])))))
