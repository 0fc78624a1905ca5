"""``elaria bench server``: the embedded server's own overhead, as ratios measured in one run.

Scripted engine (no model cost):
* ``echo_rtt_per_s``: raw ``websockets`` echo round trips on this machine (the floor);
* ``wire_predict_per_s``: predict round trips over a bare protocol client (no SDK);
* ``sdk_predict_per_s_1`` / ``sdk_predict_per_s_20``: ``respond()`` round trips through the
  unmodified SDK with 1 and with 20 concurrent ``AsyncClient``s;
* the two SDK rates again with the server in its own process (``*_server_in_child``), as
  LM Studio runs: server and clients then use both cores;
* ratios: ``echo / wire`` is the server's cost per prediction relative to one echo;
  ``wire / sdk_1`` is what the SDK itself adds.

Llama engine (when the ``embedded`` extra is installed): tokens per second of the same greedy
prompt through the SDK and the server vs ``llama_cpp.Llama`` called directly on the same GGUF
file with the same thread count (``llama_ratio`` near 1 means the server adds nothing that
matters). ``quick=True`` finishes in well under a minute.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import lmstudio
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from elaria.embedded.scripted import DEFAULT_LLM_KEY, ScriptedEngine
from elaria.testing import ServerProcess, embedded_server, raw_session

__all__ = ["run"]

_PREDICT = {
    "modelSpecifier": {"type": "query", "query": {"identifier": DEFAULT_LLM_KEY}},
    "history": {"messages": [{"role": "user", "content": [{"type": "text", "text": "ping"}]}]},
    "predictionConfigStack": {"layers": []},
}
_LLAMA_PROMPT = "Write one sentence about the sea."


async def _echo_rate(n: int) -> float:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            started = time.perf_counter()
            for i in range(n):
                await ws.send(f'{{"type":"rpcCall","callId":{i}}}')
                await ws.recv()
            return n / (time.perf_counter() - started)


async def _wire_rate(api_host: str, n: int) -> float:
    async with raw_session(api_host, "llm") as llm:
        started = time.perf_counter()
        for _ in range(n):
            await llm.channel("predict", _PREDICT)
        return n / (time.perf_counter() - started)


async def _sdk_rate(api_host: str, clients: int, per_client: int) -> float:
    async def one(ready: asyncio.Barrier) -> None:
        async with lmstudio.AsyncClient(api_host) as client:
            model = await client.llm.model(DEFAULT_LLM_KEY)
            await ready.wait()
            for _ in range(per_client):
                await model.respond("ping")

    barrier = asyncio.Barrier(clients + 1)
    tasks = [asyncio.ensure_future(one(barrier)) for _ in range(clients)]
    await barrier.wait()
    started = time.perf_counter()
    await asyncio.gather(*tasks)
    return clients * per_client / (time.perf_counter() - started)


async def _scripted(quick: bool) -> dict[str, Any]:
    n = 200 if quick else 2000
    async with embedded_server(engine=ScriptedEngine()) as srv:
        echo = await _echo_rate(n)
        wire = await _wire_rate(srv.api_host, n)
        sdk_1 = await _sdk_rate(srv.api_host, 1, n // 2)
        sdk_20 = await _sdk_rate(srv.api_host, 20, max(5, n // 40))
    # the same SDK loads against a server in its own process, as LM Studio is
    async with ServerProcess("--engine", "scripted") as child:
        child_1 = await _sdk_rate(child.api_host, 1, n // 2)
        child_20 = await _sdk_rate(child.api_host, 20, max(5, n // 40))
    return {
        "iterations": n,
        "echo_rtt_per_s": round(echo, 1),
        "wire_predict_per_s": round(wire, 1),
        "sdk_predict_per_s_1": round(sdk_1, 1),
        "sdk_predict_per_s_20": round(sdk_20, 1),
        "sdk_predict_per_s_1_server_in_child": round(child_1, 1),
        "sdk_predict_per_s_20_server_in_child": round(child_20, 1),
        "server_cost_in_echoes": round(echo / wire, 2),
        "sdk_overhead_ratio": round(wire / sdk_1, 2),
        "concurrency_gain_20_vs_1": round(sdk_20 / sdk_1, 2),
        "concurrency_gain_20_vs_1_server_in_child": round(child_20 / child_1, 2),
    }


async def _llama(quick: bool) -> dict[str, Any]:
    try:
        import llama_cpp

        from elaria.embedded.llama import LlamaCppEngine
        from elaria.embedded.llama_model import MODEL_KEY, default_model_path
    except ImportError as exc:
        return {"skipped": f"the 'embedded' extra is not installed ({exc})"}
    max_tokens = 16 if quick else 128
    rounds = 1 if quick else 3
    engine = LlamaCppEngine()
    direct: Any = None
    sdk_best = direct_best = 0.0
    sdk_tokens = direct_tokens = 0
    try:
        async with embedded_server(engine=engine, preload=[MODEL_KEY]) as srv:
            messages = [{"role": "user", "content": [{"type": "text", "text": _LLAMA_PROMPT}]}]
            prompt = await engine.apply_template(MODEL_KEY, messages, None)
            direct = await asyncio.to_thread(
                _open_direct, llama_cpp, str(default_model_path()), engine.n_threads
            )
            tokens = direct.tokenize(prompt.encode(), add_bos=False, special=True)
            async with lmstudio.AsyncClient(srv.api_host) as client:
                model = await client.llm.model(MODEL_KEY)
                warm = lmstudio.LlmPredictionConfig(max_tokens=2, temperature=0.0)
                await model.respond(_LLAMA_PROMPT, config=warm)
                await asyncio.to_thread(_direct_run, direct, tokens, 2)
                config = lmstudio.LlmPredictionConfig(max_tokens=max_tokens, temperature=0.0)
                # alternate the two sides so machine noise hits both alike; keep the best
                for _ in range(rounds):
                    started = time.perf_counter()
                    result = await model.respond(_LLAMA_PROMPT, config=config)
                    elapsed = time.perf_counter() - started
                    sdk_tokens = result.stats.predicted_tokens_count or 0
                    sdk_best = max(sdk_best, sdk_tokens / elapsed)
                    direct_tokens, elapsed = await asyncio.to_thread(
                        _direct_run, direct, tokens, max_tokens
                    )
                    direct_best = max(direct_best, direct_tokens / elapsed)
    finally:
        if direct is not None:
            direct.close()
        engine.close()
    return {
        "max_tokens": max_tokens,
        "rounds": rounds,
        "threads": engine.n_threads,
        "sdk_tokens": sdk_tokens,
        "sdk_tokens_per_s": round(sdk_best, 1),
        "direct_tokens": direct_tokens,
        "direct_tokens_per_s": round(direct_best, 1),
        "llama_ratio": round(sdk_best / direct_best, 3) if direct_best else None,
    }


def _open_direct(llama_cpp: Any, path: str, threads: int) -> Any:
    return llama_cpp.Llama(
        path, n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False
    )


def _direct_run(llm: Any, tokens: list[int], max_tokens: int) -> tuple[int, float]:
    """The same templated prompt, greedy, end to end (prompt eval included), on llama.cpp."""
    llm.reset()  # no prompt cache between runs: the server side gets none either
    started = time.perf_counter()
    out = llm.create_completion(tokens, max_tokens=max_tokens, temperature=0.0)
    return int(out["usage"]["completion_tokens"]), time.perf_counter() - started


async def run(quick: bool) -> dict[str, Any]:
    started = time.perf_counter()
    report: dict[str, Any] = {"cpus": os.cpu_count(), "quick": quick}
    report["scripted"] = await _scripted(quick)
    report["llama"] = await _llama(quick)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report
