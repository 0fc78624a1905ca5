"""ScriptedEngine: a deterministic, programmable engine for tests, soak runs and benchmarks.

Quick use::

    from elaria.embedded import ScriptedEngine, reply, tool_call, tool_calls
    engine = ScriptedEngine()                       # models "scripted-llm", "scripted-embedding"
    engine.script(tool_call("add", {"a": 1, "b": 2}), reply("3"))   # any model, in order
    engine.script(reply("only for :2"), model="scripted-llm:2")    # one model (identifier or key)

**Turns.** Each ``predict`` takes the next turn from the queue of its instance identifier, else
of its model key, else the shared queue (``model=None``); when all are empty it calls the
*default* (``ScriptedEngine(default=...)``; built in: :func:`echo_reply`, a deterministic
answer, or a schema-valid JSON object when structured output was requested). Factories:

* :func:`reply` ``(text)``: plain text, streamed one word per fragment;
* :func:`tool_call` ``(name, arguments, id=None, text="")`` and :func:`tool_calls`
  ``(*calls, text="")``: one or several calls in one round, optionally after some text;
* :func:`malformed_call` ``(raw)``: ``toolCallGenerationFailed`` with ``rawContent`` (the SDK
  raises ``LMStudioPredictionError``);
* :func:`server_error` ``(title, code=None, **data)``: the prediction fails with
  ``channelError`` (``LMStudioServerError("Chat response error: ...")``);
* :func:`structured` ``(obj)``: ``obj`` as JSON text (``result.parsed`` in the SDK);
* :func:`reasoning` ``(thoughts, text)``: reasoning fragments inside ``<think>`` tags, then text;
* a plain ``str`` is ``reply(str)``; a **callable** ``request -> Turn | str`` is a turn decided
  from the request, e.g. :func:`call_tool_then_answer`.

Every :class:`Turn` also takes ``stop_reason``, ``tokens_per_second``, ``first_token_latency``
and a ``gate`` (an ``asyncio.Event`` awaited after ``gate_after`` fragments) to hold a stream
open until the test releases it.

**Limits.** A turn's text is cut before the first of the request's ``stopStrings``
(``stopStringFound``) and after ``maxTokens`` words (``maxPredictedTokensReached``); a cut
turn's tool calls are dropped.

**Timing.** ``tokens_per_second`` (``None``: as fast as the loop allows) and
``first_token_latency`` (seconds) apply to every turn unless the turn overrides them.

**Inspection.** ``engine.requests`` lists the :class:`PredictRequest`s (history, tools, config,
structured, max_tokens...) in arrival order: the newest ``max_recorded`` (10 000 by default, so
soak runs stay bounded); ``request_count`` counts them all. ``await engine.wait_for_requests(n)``
waits until ``n`` arrived and ``await engine.wait_for_log(("done", n))`` until the n-th
finished (both bounded by a timeout). ``engine.log`` records ``("start" | "done" | "stopped",
n)`` for the n-th request (1-based): ``"stopped"`` means the stream was closed before its end
(a cancel, an unload, or a dead socket). ``engine.loads`` / ``engine.unloads`` record model keys.

Deterministic helpers: tokens are word pieces with crc32 ids; embeddings are unit vectors derived
from sha256 of the text (``embedding_dims`` long).

Loop: all methods run on the server's event loop. Cancellation: closing the ``predict``
iterator stops the turn at its next fragment (or while it sleeps).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from elaria.embedded.engine import (
    Done,
    EngineError,
    EngineEvent,
    Fragment,
    ModelSpec,
    PredictRequest,
    ToolCall,
    ToolCallFailed,
)

__all__ = [
    "DEFAULT_EMBEDDING_KEY",
    "DEFAULT_LLM_KEY",
    "ScriptedEngine",
    "Turn",
    "TurnSource",
    "call_tool_then_answer",
    "echo_reply",
    "malformed_call",
    "reasoning",
    "reply",
    "server_error",
    "structured",
    "tool_call",
    "tool_calls",
]

DEFAULT_LLM_KEY = "scripted-llm"
DEFAULT_EMBEDDING_KEY = "scripted-embedding"
#: How long :meth:`ScriptedEngine.wait_for_requests` waits by default: generous for a busy CI box.
DEFAULT_WAIT_S = 10.0
#: Requests (and twice as many log entries) kept for inspection; older ones are dropped.
DEFAULT_MAX_RECORDED = 10_000
_WORD = re.compile(r"\s*\S+|\s+")


@dataclass(frozen=True)
class Turn:
    """One scripted prediction round. Build with the factory functions."""

    text: str = ""
    thoughts: str | None = None
    calls: tuple[ToolCall, ...] = ()
    malformed: ToolCallFailed | None = None
    error: EngineError | None = None
    stop_reason: str = "eosFound"
    tokens_per_second: float | None = None
    first_token_latency: float | None = None
    gate: asyncio.Event | None = field(default=None, compare=False)
    gate_after: int = 0


TurnSource = Turn | str | Callable[[PredictRequest], "Turn | str"]


def reply(text: str, **options: Any) -> Turn:
    return Turn(text=text, **options)


def tool_call(
    name: str,
    arguments: Mapping[str, Any] | None = None,
    *,
    id: str | None = None,
    text: str = "",
    **options: Any,
) -> Turn:
    return Turn(text=text, calls=(ToolCall(name, dict(arguments or {}), id),), **options)


def tool_calls(*calls: ToolCall, text: str = "", **options: Any) -> Turn:
    return Turn(text=text, calls=tuple(calls), **options)


def malformed_call(
    raw: str, *, error: str = "Failed to parse tool call", text: str = "", **options: Any
) -> Turn:
    return Turn(text=text, malformed=ToolCallFailed(error, raw), **options)


def server_error(title: str, code: str | None = None, **data: Any) -> Turn:
    return Turn(error=EngineError(title, code, data))


def structured(obj: Any, **options: Any) -> Turn:
    return Turn(text=json.dumps(obj), **options)


def reasoning(thoughts: str, text: str = "", **options: Any) -> Turn:
    return Turn(text=text, thoughts=thoughts, **options)


# ---------------------------------------------------------------------- request helpers


def _last_user_text(request: PredictRequest) -> str:
    for message in reversed(request.messages):
        if message.get("role") == "user":
            return " ".join(
                str(p.get("text", ""))
                for p in message.get("content", [])
                if p.get("type") == "text"
            )
    return ""


def _tool_results_since_user(request: PredictRequest) -> list[str]:
    results: list[str] = []
    for message in reversed(request.messages):
        if message.get("role") == "user":
            break
        if message.get("role") == "tool":
            results[:0] = [str(p.get("content", "")) for p in message.get("content", [])]
    return results


def _example_for(schema: Mapping[str, Any]) -> Any:
    """A small value valid for simple JSON schemas (objects, arrays, scalars, enums)."""
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {name: _example_for(sub) for name, sub in props.items()}
    examples: dict[Any, Any] = {
        "array": [],
        "string": "scripted",
        "integer": 1,
        "number": 1.0,
        "boolean": True,
        "null": None,
    }
    return examples.get(kind, "scripted")


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def echo_reply(request: PredictRequest) -> Turn:
    """The built-in default: deterministic text, or JSON valid for a requested schema."""
    if request.structured and request.structured.get("type") == "json":
        schema = request.structured.get("jsonSchema") or {}
        return structured(_example_for(schema))
    results = _tool_results_since_user(request)
    if results:
        return reply("Tool results: " + "; ".join(results))
    return reply(f"You said: {_last_user_text(request)}".strip())


def call_tool_then_answer(
    name: str, arguments: Mapping[str, Any] | None = None, answer: str | None = None
) -> Callable[[PredictRequest], Turn]:
    """Call ``name`` when it is offered and no tool result follows the last user message yet;
    otherwise answer (``answer``, or the tool results echoed)."""

    def turn(request: PredictRequest) -> Turn:
        offered = {t.get("function", {}).get("name") for t in request.tools or ()}
        if name in offered and not _tool_results_since_user(request):
            return tool_call(name, arguments)
        if answer is not None:
            return reply(answer)
        return reply("Tool results: " + "; ".join(_tool_results_since_user(request)))

    return turn


# ---------------------------------------------------------------------- the engine


def default_models() -> list[ModelSpec]:
    return [
        ModelSpec(
            model_key=DEFAULT_LLM_KEY,
            display_name="Scripted LLM",
            path=f"elaria/scripted/{DEFAULT_LLM_KEY}.gguf",
            size_bytes=1_000_000,
            max_context_length=32_768,
            architecture="scripted",
            params_string="1M",
        ),
        ModelSpec(
            model_key=DEFAULT_EMBEDDING_KEY,
            display_name="Scripted Embedding",
            path=f"elaria/scripted/{DEFAULT_EMBEDDING_KEY}.gguf",
            size_bytes=500_000,
            max_context_length=2_048,
            type="embedding",
            architecture="scripted-bert",
            trained_for_tool_use=False,
        ),
    ]


class ScriptedEngine:
    """See the module docstring."""

    name = "scripted"

    def __init__(
        self,
        models: Sequence[ModelSpec] | None = None,
        *,
        tokens_per_second: float | None = None,
        first_token_latency: float = 0.0,
        default: Callable[[PredictRequest], Turn | str] = echo_reply,
        embedding_dims: int = 16,
        max_recorded: int = DEFAULT_MAX_RECORDED,
    ) -> None:
        self.models = list(models) if models is not None else default_models()
        self.tokens_per_second = tokens_per_second
        self.first_token_latency = first_token_latency
        self.default = default
        self.embedding_dims = embedding_dims
        self.max_recorded = max_recorded
        self.requests: list[PredictRequest] = []
        #: Predictions seen in total (``requests`` keeps only the newest ``max_recorded``).
        self.request_count = 0
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.log: list[tuple[str, int]] = []
        self._queues: dict[str | None, deque[TurnSource]] = {}
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._tool_ids = 0

    # ------------------------------------------------------------------ scripting

    def script(self, *turns: TurnSource, model: str | None = None) -> None:
        """Queue turns for ``model`` (identifier or key), or for any model when ``None``."""
        self._queues.setdefault(model, deque()).extend(turns)

    def pending(self, model: str | None = None) -> int:
        return len(self._queues.get(model, ()))

    async def wait_for_requests(
        self, count: int, timeout: float = DEFAULT_WAIT_S
    ) -> PredictRequest:
        """Wait until ``count`` predictions arrived in total; returns the ``count``-th."""
        await self.wait_until(lambda: self.request_count >= count, timeout)
        return self.requests[count - 1 - (self.request_count - len(self.requests))]

    async def wait_for_log(self, entry: tuple[str, int], timeout: float = DEFAULT_WAIT_S) -> None:
        """Wait until ``entry`` (e.g. ``("stopped", 1)``) is in :attr:`log`."""
        await self.wait_until(lambda: entry in self.log, timeout)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` holds; it is re-checked whenever a request or log entry
        is recorded. ``TimeoutError`` after ``timeout`` seconds."""
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (predicate, future)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await future
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _trim(self) -> None:
        # Soak runs and benchmarks never script turns: keep memory bounded for them.
        if len(self.requests) > self.max_recorded:
            del self.requests[: len(self.requests) - self.max_recorded]
        if len(self.log) > 2 * self.max_recorded:
            del self.log[: len(self.log) - 2 * self.max_recorded]

    def _wake(self) -> None:
        for predicate, future in list(self._waiters):
            if not future.done() and predicate():
                future.set_result(None)

    def _next_turn(self, request: PredictRequest) -> Turn:
        for key in (request.identifier, request.model_key, None):
            queue = self._queues.get(key)
            if queue:
                source = queue.popleft()
                break
        else:
            source = self.default
        turn = source(request) if callable(source) else source
        return reply(turn) if isinstance(turn, str) else turn

    # ------------------------------------------------------------------ Engine protocol

    def catalogue(self) -> Sequence[ModelSpec]:
        return self.models

    async def load(self, model_key: str, context_length: int) -> None:
        self.loads.append(model_key)

    async def unload(self, model_key: str) -> None:
        self.unloads.append(model_key)

    async def predict(self, request: PredictRequest) -> AsyncIterator[EngineEvent]:
        self.request_count += 1
        number = self.request_count
        self.requests.append(request)
        self.log.append(("start", number))
        self._trim()
        self._wake()
        finished = False
        try:
            async for event in self._play(self._next_turn(request), request):
                # The server stops reading at Done, so the turn counts as finished there.
                finished = finished or isinstance(event, Done | EngineError)
                yield event
        finally:
            self.log.append(("done" if finished else "stopped", number))
            self._trim()
            self._wake()

    async def _play(self, turn: Turn, request: PredictRequest) -> AsyncIterator[EngineEvent]:
        if turn.error is not None:
            yield turn.error
            return
        tps = (
            turn.tokens_per_second if turn.tokens_per_second is not None else self.tokens_per_second
        )
        latency = (
            turn.first_token_latency
            if turn.first_token_latency is not None
            else self.first_token_latency
        )
        if latency > 0:
            await asyncio.sleep(latency)
        stop_reason, truncated = turn.stop_reason, False
        cut = _first_stop(turn.text, request.stop_strings)
        if cut is not None:
            turn = replace(turn, text=turn.text[:cut])
            stop_reason, truncated = "stopStringFound", True
        fragments = self._fragments(turn)
        if request.max_tokens is not None and len(fragments) > request.max_tokens:
            fragments = fragments[: request.max_tokens]
            stop_reason, truncated = "maxPredictedTokensReached", True
        sent = 0
        for fragment in fragments:
            if turn.gate is not None and sent == turn.gate_after:
                await turn.gate.wait()
            if sent and tps:
                await asyncio.sleep(1.0 / tps)
            else:
                await asyncio.sleep(0)  # let other channels and pings through
            yield fragment
            sent += 1
        if turn.gate is not None and sent <= turn.gate_after:
            await turn.gate.wait()
        if not truncated:  # a model cut off early never finishes its tool call
            for call in turn.calls:
                yield call if call.id is not None else replace(call, id=self._new_tool_id())
            if turn.malformed is not None:
                yield turn.malformed
        yield Done(stop_reason, prompt_tokens=self._prompt_tokens(request))

    def _fragments(self, turn: Turn) -> list[Fragment]:
        out: list[Fragment] = []
        if turn.thoughts is not None:
            out.append(Fragment("<think>", reasoning="reasoningStartTag"))
            out += [Fragment(w, reasoning="reasoning") for w in _WORD.findall(turn.thoughts)]
            out.append(Fragment("</think>", reasoning="reasoningEndTag"))
        out += [Fragment(w) for w in _WORD.findall(turn.text)]
        return out

    def _new_tool_id(self) -> str:
        self._tool_ids += 1
        return f"{100_000_000 + self._tool_ids}"

    def _prompt_tokens(self, request: PredictRequest) -> int:
        text = json.dumps(list(request.messages))
        return len(_WORD.findall(text))

    async def tokenize(self, model_key: str, text: str) -> list[int]:
        return [zlib.crc32(piece.encode()) % 32_000 for piece in _WORD.findall(text)]

    async def apply_template(
        self,
        model_key: str,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
    ) -> str:
        parts = []
        if tools:
            parts.append(f"<|im_start|>tools\n{json.dumps(list(tools))}<|im_end|>\n")
        for message in messages:
            content = message.get("content", [])
            text = (
                "".join(
                    str(p.get("text", p.get("content", "")))
                    for p in content
                    if isinstance(p, Mapping)
                )
                if isinstance(content, list)
                else str(content)
            )
            parts.append(f"<|im_start|>{message.get('role', 'user')}\n{text}<|im_end|>\n")
        parts.append("<|im_start|>assistant\n")
        return "".join(parts)

    async def embed(self, model_key: str, text: str) -> list[float]:
        digest = b""
        counter = 0
        while len(digest) < self.embedding_dims:
            digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
            counter += 1
        raw = [(b - 127.5) / 127.5 for b in digest[: self.embedding_dims]]
        norm = math.sqrt(sum(x * x for x in raw)) or 1.0
        return [x / norm for x in raw]
