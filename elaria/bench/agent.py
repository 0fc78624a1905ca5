"""``elaria bench agent``: the runtime's overhead per agent round against the bare SDK ``act()``.

What runs, in one process and one event loop: the embedded LM Studio-compatible server with the
scripted engine, and the unmodified ``lmstudio`` SDK. The full bench runs :data:`WORKERS` such
processes one after the other, each with its share of the runs, and pools their batch times.
Every run is the same conversation: the model calls a tool ``add`` in each of
:data:`TOOL_ROUNDS` rounds, then answers — decided by the engine from the history it receives.
Both sides send the same conversation: the SDK side gets the runtime's system prompt,
temperature and token limit, so the server does the same work for each and the ratio measures
the client side only.

* **sdk** — ``AsyncLLM.act(chat, [add])`` on one ``AsyncClient``: the floor (what the SDK alone
  costs, with no guard, no history bounds, no reconnects, no logs).
* **runtime** — ``Runtime.run(task)`` with everything on: pool and failover, guard pipeline,
  history, event log and audit, events.

After :data:`WARMUP_RUNS` each, each side runs ``runs`` sequential runs, in pairs (one of each,
the order alternating), then :data:`CONCURRENT_RUNS` runs at once, :data:`CONCURRENT_ROUNDS`
times per side, alternating. The objects start-up left are frozen out of the garbage
collector's reach for the measurement (``gc.freeze``): a full collection over them would land
on one side at random; the collections of what the runs allocate still count.
The work the runtime defers (its telemetry writer builds event lines and audit records on the
loop up to ``LINGER_S`` later) lands in whichever batch runs then, often an SDK one: the time the
writer spent building during an SDK batch is taken off that batch and charged to the runtime's
batch of the same pair (the writer counts it, ``build_seconds`` in its stats).

Reported: median milliseconds per round for each side; ``ratio``, the runtime's total time over
the SDK's, and ``process_ratios``, each process's own; ``deferred_ms_per_round``, the writer's
builds (all of them, wherever they ran) and ``moved_ms_per_round``, the part taken off SDK
batches; and, for the spread, the median and quartiles of the pairs' own ratios (a pair runs
within milliseconds, so the machine's drift cancels out of each). The goal is a ``ratio`` under
1.15. The runtime's event log and audit ledger go to a temporary directory; log records go
where ``elaria bench`` sends them (the log files, not the terminal).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: Tool rounds per run; one more round gives the answer.
TOOL_ROUNDS = 3
ROUNDS_PER_RUN = TOOL_ROUNDS + 1
FULL_RUNS = 200
QUICK_RUNS = 6
CONCURRENT_RUNS = 20
#: Batches of concurrent runs per side (quick: 1); each is one sample, and a noisy one (pairs'
#: ratios spread by about ±0.15 on a shared machine, so the total needs many).
CONCURRENT_ROUNDS = 48
#: Runs thrown away first on each side (connections, caches, imports).
WARMUP_RUNS = 2
#: Processes the full bench is split over, one after the other (quick: one, in process): the
#: same code's speed differs from one process to the next (memory layout, the machine's load
#: at the time) by more than within one, so the totals pool several.
WORKERS = 4
WORKER_TIMEOUT_S = 600
#: Predictions the scripted engine keeps for inspection (the bench inspects none): its default
#: keeps thousands, a heap that grows through the runs and makes each full collection dearer.
ENGINE_RECORDED = 8
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
    if quick:
        raws = [await _session(QUICK_RUNS, 1)]
    else:
        raws = []
        for worker in range(WORKERS):
            # One after the other, never side by side: each has the machine to itself.
            runs = FULL_RUNS // WORKERS + (worker < FULL_RUNS % WORKERS)
            batches = CONCURRENT_ROUNDS // WORKERS + (worker < CONCURRENT_ROUNDS % WORKERS)
            raws.append(await asyncio.to_thread(_run_worker, runs, batches))
    return {
        "benchmark": "agent",
        "quick": quick,
        "processes": len(raws),
        "rounds_per_run": ROUNDS_PER_RUN,
        "sequential": _summary([raw["sequential"] for raw in raws]),
        f"concurrent_{CONCURRENT_RUNS}": {
            **_summary([raw["concurrent"] for raw in raws]),
            "note": "wall time of each batch divided by its rounds (throughput per round)",
        },
        "goal": "runtime/sdk ratio under 1.15",
    }


def _run_worker(runs: int, batches: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "elaria.bench.agent", str(runs), str(batches)],
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"agent bench worker failed ({out.returncode}): {out.stderr[-2000:]}")
    raw: dict[str, Any] = json.loads(out.stdout)
    return raw


async def _session(runs: int, batches: int) -> dict[str, Any]:
    """One process's measurement: the raw batch times of both phases (see :func:`_pairs`)."""
    import lmstudio

    from elaria.agent.loop import DEFAULT_SYSTEM_PROMPT
    from elaria.config import Settings
    from elaria.embedded.scripted import DEFAULT_LLM_KEY, ScriptedEngine
    from elaria.runtime import Runtime
    from elaria.testing import embedded_server

    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="elaria-bench-") as scratch:
        os.chdir(scratch)
        try:
            engine = ScriptedEngine(default=_scenario, max_recorded=ENGINE_RECORDED)
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
                        bench_settings,
                        backend="lmstudio",
                        tools=[add],
                        builtin_tools=False,
                        configure_logging=False,  # `elaria bench` set logging up (files only)
                    ) as rt:

                        async def runtime_run() -> None:
                            result = await rt.run(TASK)
                            if result.rounds != ROUNDS_PER_RUN:
                                raise RuntimeError(f"runtime run took {result.rounds} rounds")

                        def deferred() -> float:
                            stats = rt.telemetry.stats() if rt.telemetry is not None else {}
                            return sum(
                                float(stats.get(sink, {}).get("build_seconds", 0.0))
                                for sink in ("events", "ledger")
                            )

                        raw = await _measure(sdk_run, runtime_run, deferred, runs, batches)
        finally:
            os.chdir(previous)
    return raw


async def _measure(
    sdk: Callable[[], Awaitable[None]],
    runtime: Callable[[], Awaitable[None]],
    deferred: Callable[[], float],
    runs: int,
    batches: int,
) -> dict[str, Any]:
    """Warm both sides up, then the sequential pairs, then the concurrent batches."""
    for _ in range(WARMUP_RUNS):
        await sdk()
        await runtime()
    # What start-up left (imports, settings, the server) is frozen out of the collector's
    # reach: a full collection over it takes tens of milliseconds and lands on whichever side
    # happens to run, a coin toss worth several percent of the ratio. Collections of what the
    # runs themselves allocate still happen, and count, on the side that allocated.
    gc.collect()
    gc.freeze()
    try:
        return {
            "sequential": await _pairs(sdk, runtime, deferred, runs, runs_per_batch=1),
            "concurrent": await _pairs(
                sdk, runtime, deferred, batches, runs_per_batch=CONCURRENT_RUNS
            ),
        }
    finally:
        gc.unfreeze()


async def _pairs(
    sdk: Callable[[], Awaitable[None]],
    runtime: Callable[[], Awaitable[None]],
    deferred: Callable[[], float],
    pairs: int,
    *,
    runs_per_batch: int,
) -> dict[str, Any]:
    """Time ``pairs`` pairs of batches (one per side, which goes first alternating); the
    runtime's deferred builds that ran during the SDK's batch move to the runtime's. Raw
    seconds per batch, for :func:`_summary`."""
    times: dict[str, list[float]] = {"sdk": [], "runtime": []}
    charged = 0.0
    built_before = deferred()
    sides = (("sdk", sdk), ("runtime", runtime))
    for i in range(pairs):
        moved = 0.0
        for name, fn in sides if i % 2 == 0 else sides[::-1]:
            before = deferred()
            started = time.perf_counter()
            await asyncio.gather(*(fn() for _ in range(runs_per_batch)))
            elapsed = time.perf_counter() - started
            if name == "sdk":
                moved = deferred() - before
                elapsed -= moved
            times[name].append(elapsed)
        times["runtime"][-1] += moved
        charged += moved
    return {
        "runs_per_batch": runs_per_batch,
        "sdk": times["sdk"],
        "runtime": times["runtime"],
        "built_s": deferred() - built_before,
        "moved_s": charged,
    }


def _summary(raws: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of one phase over every process's raw batch times."""
    rounds = raws[0]["runs_per_batch"] * ROUNDS_PER_RUN
    sdk = [t for raw in raws for t in raw["sdk"]]
    runtime = [t for raw in raws for t in raw["runtime"]]
    pairs = len(sdk)
    ratios = sorted(r / s for r, s in zip(runtime, sdk, strict=True))
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    built = sum(raw["built_s"] for raw in raws)
    moved = sum(raw["moved_s"] for raw in raws)
    return {
        "runs": pairs * raws[0]["runs_per_batch"],
        "sdk_ms_per_round": round(statistics.median(sdk) / rounds * 1000, 3),
        "runtime_ms_per_round": round(statistics.median(runtime) / rounds * 1000, 3),
        "ratio": round(sum(runtime) / sum(sdk), 3),
        # Each process's own: the spread between processes (memory layout, the machine's load).
        "process_ratios": [round(sum(raw["runtime"]) / sum(raw["sdk"]), 3) for raw in raws],
        "deferred_ms_per_round": round(built / (pairs * rounds) * 1000, 4),
        "moved_ms_per_round": round(moved / (pairs * rounds) * 1000, 4),
        "median_pair_ratio": round(statistics.median(ratios), 3),
        "pair_ratio_quartiles": [round(quartiles[0], 3), round(quartiles[2], 3)],
    }


if __name__ == "__main__":  # a worker: python -m elaria.bench.agent RUNS BATCHES
    from elaria.commands.run import quiet_libraries
    from elaria.config import load_settings

    quiet_libraries(load_settings())  # as `elaria bench` does: logs go to files, not stdout
    print(json.dumps(asyncio.run(_session(int(sys.argv[1]), int(sys.argv[2])))))
