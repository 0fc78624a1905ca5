"""``elaria bench memory``: resident memory over a long agent run, bounded vs unbounded history.

What runs: the embedded LM Studio-compatible server with the scripted engine, in this process,
and the unmodified ``lmstudio`` SDK. Each agent round sends the conversation to the model
(``respond``), then records what an agent records: the answer, a tool call and a tool result of
:data:`TOOL_RESULT_CHARS` characters. Two runs, same process, same requests:

* **bounded** — a :class:`~elaria.memory.ConversationHistory` (50 messages, default tokens) holds
  the conversation and is what gets sent;
* **unbounded** — a plain list keeps every message, as an agent built on a bare list (or the
  SDK's ``Chat``) does. So that both runs make the same requests and only retention differs, it
  sends the same last-50-message window.

RSS is sampled every :data:`SAMPLE_EVERY` rounds; the slope is a least-squares fit over the
second half of the run (after warm-up) in KiB per 1,000 rounds. The bounded run goes first, since
CPython rarely gives freed memory back to the OS. The scripted engine's own request log is
cleared as the run goes: it is a test recorder, not part of the runtime.
"""

from __future__ import annotations

import gc
import time
from typing import Any, cast

import psutil

from elaria.memory.history import ConversationHistory

#: Long enough to see a leak of a few hundred bytes per round above allocator noise.
FULL_ROUNDS = 10_000
QUICK_ROUNDS = 1_000
#: One RSS sample per this many rounds.
SAMPLE_EVERY = 100
#: A modest tool result (a small file read): what makes an unbounded history grow visibly.
TOOL_RESULT_CHARS = 1_000
#: Rounds run and thrown away first: imports, SDK caches and the allocator's arenas settle.
WARMUP_ROUNDS = 300
WINDOW = 50


async def run(quick: bool) -> dict[str, Any]:
    import lmstudio

    from elaria.testing import embedded_server

    rounds = QUICK_ROUNDS if quick else FULL_ROUNDS
    report: dict[str, Any] = {
        "rounds": rounds,
        "warmup_rounds": WARMUP_ROUNDS,
        "tool_result_chars": TOOL_RESULT_CHARS,
        "window_messages": WINDOW,
    }
    async with embedded_server() as server, lmstudio.AsyncClient(server.api_host) as client:
        model = await client.llm.model()
        engine: Any = server.engine
        await _one_run(model, engine, WARMUP_ROUNDS, bounded=True)
        for label in ("bounded", "unbounded"):
            gc.collect()
            report[label] = await _one_run(model, engine, rounds, bounded=label == "bounded")
    bounded, unbounded = report["bounded"], report["unbounded"]
    report["growth_ratio_unbounded_vs_bounded"] = round(
        unbounded["growth_kib"] / max(bounded["growth_kib"], 1.0), 1
    )
    report["bounded_slope_flat"] = bounded["slope_kib_per_1k_rounds"] < max(
        64.0, unbounded["slope_kib_per_1k_rounds"] / 20
    )
    return report


async def _one_run(model: Any, engine: Any, rounds: int, *, bounded: bool) -> dict[str, Any]:
    import lmstudio
    from lmstudio.history import ChatHistoryDataDict

    process = psutil.Process()
    history = ConversationHistory(system_prompt="You are a careful file assistant.")
    plain: list[dict[str, Any]] = [_text("system", "You are a careful file assistant.")]
    samples: list[tuple[int, int]] = []
    started = time.perf_counter()
    for i in range(rounds):
        user = _text("user", f"round {i}: read notes-{i}.txt and summarise it")
        _record(history, plain, user, bounded)
        window = history.get_all() if bounded else [plain[0], *plain[1:][-(WINDOW - 1) :]]
        window = _from_user(window)
        wire = cast(ChatHistoryDataDict, {"messages": window})
        result = await model.respond(lmstudio.Chat.from_history(wire))
        call_id = f"call-{i}"
        for message in (
            _tool_call(call_id, i),
            _tool_result(call_id, i),
            _text("assistant", str(result.content)),
        ):
            _record(history, plain, message, bounded)
        if i % SAMPLE_EVERY == 0:
            engine.requests.clear()
            engine.log.clear()
            samples.append((i, process.memory_info().rss))
    elapsed = time.perf_counter() - started
    samples.append((rounds, process.memory_info().rss))
    half = samples[len(samples) // 2 :]
    return {
        "rss_start_mib": round(samples[0][1] / 2**20, 1),
        "rss_end_mib": round(samples[-1][1] / 2**20, 1),
        "growth_kib": round((samples[-1][1] - samples[0][1]) / 1024, 1),
        "slope_kib_per_1k_rounds": round(_slope(half) * 1000 / 1024, 1),
        "messages_held": len(history) if bounded else len(plain),
        "rounds_per_s": round(rounds / elapsed, 1),
    }


def _record(
    history: ConversationHistory, plain: list[dict[str, Any]], message: Any, bounded: bool
) -> None:
    if bounded:
        history.add(message)
    else:
        plain.append(message)


def _from_user(window: list[Any]) -> list[Any]:
    """Start the window after the system prompt at a user message, as chat templates expect."""
    for i, message in enumerate(window[1:], start=1):
        if message["role"] == "user":
            return [window[0], *window[i:]]
    return window


def _text(role: str, body: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": body}]}


def _tool_call(call_id: str, i: int) -> dict[str, Any]:
    request = {"type": "function", "id": call_id, "name": "read_file",
               "arguments": {"path": f"notes-{i}.txt"}}  # fmt: skip
    return {
        "role": "assistant",
        "content": [
            {"type": "text", "text": ""},
            {"type": "toolCallRequest", "toolCallRequest": request},
        ],
    }


def _tool_result(call_id: str, i: int) -> dict[str, Any]:
    body = (f"notes {i}: " + "lorem ipsum dolor sit amet " * 100)[:TOOL_RESULT_CHARS]
    return {
        "role": "tool",
        "content": [{"type": "toolCallResult", "toolCallId": call_id, "content": body}],
    }


def _slope(points: list[tuple[int, int]]) -> float:
    """Least-squares bytes per round."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx if sxx else 0.0
