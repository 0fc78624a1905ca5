"""``elaria bench agent``: the runtime's overhead per agent round against the bare SDK ``act()``.

What runs, in one process and one event loop: the embedded LM Studio-compatible server with the
scripted engine, and the unmodified ``lmstudio`` SDK. Every run is the same conversation: the
model calls a tool ``add`` in each of :data:`TOOL_ROUNDS` rounds, then answers — decided by the
engine from the history it receives. Both sides send the same conversation: the SDK side gets
the runtime's system prompt, temperature and token limit, so the server does the same work for
each and the ratio measures the client side only.

* **sdk** — ``AsyncLLM.act(chat, [add])`` on one ``AsyncClient``: the floor (what the SDK alone
  costs, with no guard, no history bounds, no reconnects, no logs).
* **runtime** — ``Runtime.run(task)`` with everything on: pool and failover, guard pipeline,
  history, event log and audit, events.

Each side runs ``runs`` sequential runs (alternating, so machine noise hits both alike), then
:data:`CONCURRENT_RUNS` runs at once. Reported: median seconds per round for each side and
their ratio (``runtime / sdk``; the goal is under 1.15). Logs go to a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: Tool rounds per run; one more round gives the answer.
TOOL_ROUNDS = 3
ROUNDS_PER_RUN = TOOL_ROUNDS + 1
FULL_RUNS = 40
QUICK_RUNS = 6
CONCURRENT_RUNS = 20
#: Runs thrown away first on each side (connections, caches, imports).
WARMUP_RUNS = 2
TASK = "Add 1 and 2 three times, then tell me the total."


def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: first number
        b: second number
    """
    return a + b


def _scenario(request: Any) -> Any:
    from elaria.embedded.scripted import reply, tool_call

    results = 0
    for message in reversed(request.messages):
        if message.get("role") == "user":
            break
        if message.get("role") == "tool":
            results += len(message.get("content", []))
    if request.tools and results < TOOL_ROUNDS:
        return tool_call("add", {"a": results, "b": 2})
    return reply("The total is 9.")


async def run(quick: bool = False) -> dict[str, Any]:
    import lmstudio

    from elaria.agent.loop import DEFAULT_SYSTEM_PROMPT
    from elaria.config import Settings
    from elaria.embedded.scripted import DEFAULT_LLM_KEY, ScriptedEngine
    from elaria.runtime import Runtime
    from elaria.telemetry.logging import setup_logging
    from elaria.testing import embedded_server

    runs = QUICK_RUNS if quick else FULL_RUNS
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="elaria-bench-") as scratch:
        os.chdir(scratch)
        try:
            settings = Settings()
            setup_logging(settings.logging.model_copy(update={"console": False}))
            engine = ScriptedEngine(default=_scenario)
            async with embedded_server(engine) as server:
                bench_settings = Settings.model_validate(
                    {"lmstudio": {"hosts": [server.ws_url], "model": DEFAULT_LLM_KEY}}
                )
                system_prompt = bench_settings.agent.system_prompt or DEFAULT_SYSTEM_PROMPT
                config = lmstudio.LlmPredictionConfig(
                    temperature=bench_settings.lmstudio.temperature,
                    max_tokens=bench_settings.lmstudio.max_tokens,
                )
                async with lmstudio.AsyncClient(server.api_host) as client:
                    llm = await client.llm.model(DEFAULT_LLM_KEY)

                    async def sdk_run() -> None:
                        chat = lmstudio.Chat(system_prompt)
                        chat.add_user_message(TASK)
                        result = await llm.act(chat, [add], max_prediction_rounds=10, config=config)
                        if result.rounds != ROUNDS_PER_RUN:
                            raise RuntimeError(f"sdk run took {result.rounds} rounds")

                    async with Runtime(
                        bench_settings, backend="lmstudio", tools=[add], builtin_tools=False
                    ) as rt:

                        async def runtime_run() -> None:
                            result = await rt.run(TASK)
                            if result.rounds != ROUNDS_PER_RUN:
                                raise RuntimeError(f"runtime run took {result.rounds} rounds")

                        sequential = await _sequential(sdk_run, runtime_run, runs)
                        concurrent = await _concurrent(sdk_run, runtime_run)
        finally:
            os.chdir(previous)
    return {
        "benchmark": "agent",
        "quick": quick,
        "rounds_per_run": ROUNDS_PER_RUN,
        "sequential": sequential,
        f"concurrent_{CONCURRENT_RUNS}": concurrent,
        "goal": "runtime/sdk ratio under 1.15",
    }


async def _sequential(
    sdk: Callable[[], Awaitable[None]], runtime: Callable[[], Awaitable[None]], runs: int
) -> dict[str, Any]:
    times: dict[str, list[float]] = {"sdk": [], "runtime": []}
    for i in range(runs + WARMUP_RUNS):
        for name, fn in (("sdk", sdk), ("runtime", runtime)):
            started = time.perf_counter()
            await fn()
            if i >= WARMUP_RUNS:
                times[name].append((time.perf_counter() - started) / ROUNDS_PER_RUN)
    return _report(times, runs)


async def _concurrent(
    sdk: Callable[[], Awaitable[None]], runtime: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    times: dict[str, list[float]] = {"sdk": [], "runtime": []}
    for _ in range(2):  # alternate twice so neither side always goes first
        for name, fn in (("sdk", sdk), ("runtime", runtime)):
            started = time.perf_counter()
            await asyncio.gather(*(fn() for _ in range(CONCURRENT_RUNS)))
            elapsed = time.perf_counter() - started
            times[name].append(elapsed / (CONCURRENT_RUNS * ROUNDS_PER_RUN))
    report = _report(times, CONCURRENT_RUNS)
    report["note"] = "wall time of all runs divided by all rounds (throughput per round)"
    return report


def _report(times: dict[str, list[float]], runs: int) -> dict[str, Any]:
    sdk = statistics.median(times["sdk"])
    runtime = statistics.median(times["runtime"])
    return {
        "runs": runs,
        "sdk_ms_per_round": round(sdk * 1000, 3),
        "runtime_ms_per_round": round(runtime * 1000, 3),
        "ratio": round(runtime / sdk, 3) if sdk > 0 else None,
    }
