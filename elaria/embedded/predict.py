"""The ``predict`` channel: engine events in, LM Studio prediction messages out (§3.10-3.12).

Sequence per prediction: (JIT load) -> wait for the model's queue -> ``promptProcessingProgress``
0.0 and 1.0 -> ``fragment`` / ``toolCallGeneration*`` messages as the engine yields them ->
``success`` (stats, modelInfo, loadModelConfig, predictionConfig echoing the client's
``apiOverride`` layer). An :class:`EngineError` ends the channel with ``channelError`` instead.

Unloading the instance mid-prediction stops the engine the same way and ends with
``stopReason: "modelUnloaded"`` (also for requests still queued for it).

Cancellation: a ``cancel`` from the client (``channel.cancelled``) stops the engine (its
iterator is closed) and still ends with ``success``, ``stopReason: "userStopped"``, as the real
server does; a cancel that arrives while queued skips the engine altogether. A channel the SDK
abandoned without a cancel keeps generating, and the next request to that model waits behind
it. If the socket dies, the server cancels the channel task: the engine iterator is closed then
too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from elaria.embedded.catalogue import Instance
from elaria.embedded.endpoints import Backend, ChannelLike, fields_of, param_dict
from elaria.embedded.engine import (
    Done,
    EngineError,
    EngineEvent,
    Fragment,
    PredictRequest,
    ToolCall,
    ToolCallFailed,
)
from elaria.embedded.envelope import BadParameter, ProtocolError, error_object

__all__ = ["handle_predict"]

Json = dict[str, Any]


@dataclass
class _Progress:
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    predicted_tokens: int = 0
    fragments: int = 0
    tool_ids: int = 0
    stop_reason: str = "eosFound"
    prompt_tokens: int | None = None


def build_request(param: Any, inst: Instance) -> tuple[PredictRequest, list[Json]]:
    """The engine's request and the client's ``apiOverride`` fields (echoed in ``success``)."""
    p = param_dict(param, "predict")
    history = p.get("history")
    messages = history.get("messages") if isinstance(history, Mapping) else None
    if not isinstance(messages, list):
        raise BadParameter("predict: history.messages must be a list")
    stack = p.get("predictionConfigStack")
    config = fields_of(stack)
    override = fields_of(stack, "apiOverride")
    tools_value = config.get("llm.prediction.tools")
    tools = tools_value.get("tools") if isinstance(tools_value, Mapping) else None
    max_value = config.get("llm.prediction.maxPredictedTokens")
    max_tokens = (
        max_value.get("value")
        if isinstance(max_value, Mapping) and max_value.get("checked")
        else None
    )
    structured = config.get("llm.prediction.structured")
    temperature = config.get("llm.prediction.temperature")
    stops = config.get("llm.prediction.stopStrings")
    request = PredictRequest(
        model_key=inst.spec.model_key,
        identifier=inst.identifier,
        messages=messages,
        tools=tools if isinstance(tools, list) else None,
        config=config,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        temperature=float(temperature) if isinstance(temperature, int | float) else None,
        structured=structured
        if isinstance(structured, Mapping) and structured.get("type") not in (None, "none")
        else None,
        stop_strings=tuple(s for s in stops if isinstance(s, str))
        if isinstance(stops, list)
        else (),
        context_length=inst.context_length,
    )
    return request, [{"key": k, "value": v} for k, v in override.items()]


async def handle_predict(
    backend: Backend,
    channel: ChannelLike,
    param: Any,
    *,
    on_fragment: Callable[[int], Any] | None = None,
) -> None:
    """Run one prediction. ``on_fragment(n)`` is told the running fragment count (fault hooks)."""
    p = param_dict(param, "predict")
    inst = await backend.get_or_jit_load(p.get("modelSpecifier"), "llm")
    request, echoed = build_request(p, inst)
    progress = _Progress()
    lock = backend.model_lock(inst.identifier) if backend.queue_per_model else None
    async with contextlib.AsyncExitStack() as stack:
        if lock is not None and not await _acquire_unless_cancelled(lock, channel.cancelled):
            progress.stop_reason = "userStopped"
        else:
            if lock is not None:
                stack.push_async_callback(_release, lock)
            if inst.unloaded.is_set():  # unloaded while this request waited in the queue
                progress.stop_reason = "modelUnloaded"
            else:
                backend.touch(inst)
                await _run_engine(backend, channel, inst, request, progress, on_fragment)
                backend.touch(inst)  # idle TTL counts from the end of the last prediction
    await channel.send(_success(inst, progress, echoed))


async def _release(lock: asyncio.Lock) -> None:
    lock.release()


async def _acquire_unless_cancelled(lock: asyncio.Lock, cancelled: asyncio.Event) -> bool:
    """Wait for the model's queue; ``False`` if a cancel came first (the lock is not held).
    If this task is cancelled meanwhile, the lock is never left held."""
    if not lock.locked():
        await lock.acquire()
        return True
    acquire = asyncio.ensure_future(lock.acquire())
    cancel = asyncio.ensure_future(cancelled.wait())
    try:
        await asyncio.wait({acquire, cancel}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        _drop_acquire(lock, acquire)
        raise
    finally:
        cancel.cancel()
    if not acquire.done() or cancelled.is_set():
        _drop_acquire(lock, acquire)
        return False
    return True


def _drop_acquire(lock: asyncio.Lock, acquire: asyncio.Future[Any]) -> None:
    """Give up a pending or granted acquire (Lock.acquire wakes the next waiter if the grant
    raced with the cancellation)."""
    if acquire.done():
        if not acquire.cancelled() and acquire.exception() is None:
            lock.release()
    else:
        acquire.cancel()


async def _run_engine(
    backend: Backend,
    channel: ChannelLike,
    inst: Instance,
    request: PredictRequest,
    progress: _Progress,
    on_fragment: Callable[[int], Any] | None,
) -> None:
    prompt_tokens = len(
        await backend.engine.tokenize(request.model_key, json.dumps(list(request.messages)))
    )
    details = {
        "cachedTokenCount": 0,
        "totalPromptTokenCount": prompt_tokens,
        "processedPromptTokenCount": 0,
        "unprocessedPromptTokenCount": prompt_tokens,
    }
    await channel.send({"type": "promptProcessingProgress", "progress": 0.0, "details": details})
    done = {**details, "processedPromptTokenCount": prompt_tokens, "unprocessedPromptTokenCount": 0}
    await channel.send({"type": "promptProcessingProgress", "progress": 1.0, "details": done})
    progress.prompt_tokens = prompt_tokens
    events = backend.engine.predict(request)
    consume = asyncio.ensure_future(_consume(events, channel, progress, on_fragment))
    cancel = asyncio.ensure_future(channel.cancelled.wait())
    unload = asyncio.ensure_future(inst.unloaded.wait())
    try:
        await asyncio.wait({consume, cancel, unload}, return_when=asyncio.FIRST_COMPLETED)
        if not consume.done():
            consume.cancel()
            progress.stop_reason = "userStopped" if cancel.done() else "modelUnloaded"
        with contextlib.suppress(asyncio.CancelledError):
            await consume
    finally:
        cancel.cancel()
        unload.cancel()
        if not consume.done():
            # the socket died: stop the engine and let it unwind before closing its iterator
            consume.cancel()
            await asyncio.gather(consume, return_exceptions=True)
        await _close(events)


async def _close(events: AsyncIterator[EngineEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


async def _consume(
    events: AsyncIterator[EngineEvent],
    channel: ChannelLike,
    progress: _Progress,
    on_fragment: Callable[[int], Any] | None,
) -> None:
    async for event in events:
        if isinstance(event, Fragment):
            if progress.first_token_at is None:
                progress.first_token_at = time.monotonic()
            progress.predicted_tokens += event.tokens
            progress.fragments += 1
            await channel.send(
                {
                    "type": "fragment",
                    "fragment": {
                        "content": event.text,
                        "tokensCount": event.tokens,
                        "containsDrafted": False,
                        "reasoningType": event.reasoning,
                        "isStructural": False,
                    },
                }
            )
            if on_fragment is not None:
                on_fragment(progress.fragments)
        elif isinstance(event, ToolCall):
            await _send_tool_call(channel, event, progress)
        elif isinstance(event, ToolCallFailed):
            await channel.send({"type": "toolCallGenerationStart"})
            err = error_object(ProtocolError(event.error))
            await channel.send(
                {"type": "toolCallGenerationFailed", "error": err, "rawContent": event.raw}
            )
        elif isinstance(event, EngineError):
            raise ProtocolError(event.title, code=event.code, data=event.data)
        elif isinstance(event, Done):
            progress.stop_reason = event.stop_reason
            if event.prompt_tokens is not None:
                progress.prompt_tokens = event.prompt_tokens
            return


async def _send_tool_call(channel: ChannelLike, call: ToolCall, progress: _Progress) -> None:
    if call.id is None:
        progress.tool_ids += 1
    call_id = call.id or f"{200_000_000 + progress.tool_ids}"
    args_text = json.dumps(call.arguments if call.arguments is not None else {})
    if progress.first_token_at is None:
        progress.first_token_at = time.monotonic()
    await channel.send({"type": "toolCallGenerationStart", "toolCallId": call_id})
    await channel.send({"type": "toolCallGenerationNameReceived", "name": call.name})
    half = len(args_text) // 2
    for piece in (args_text[:half], args_text[half:]):
        if piece:
            await channel.send(
                {"type": "toolCallGenerationArgumentFragmentGenerated", "content": piece}
            )
    request: Json = {"type": "function", "id": call_id, "name": call.name}
    if call.arguments is not None:
        request["arguments"] = dict(call.arguments)
    raw = call.raw or (
        "<tool_call>"
        + json.dumps({"name": call.name, "arguments": call.arguments or {}})
        + "</tool_call>"
    )
    await channel.send(
        {"type": "toolCallGenerationEnd", "toolCallRequest": request, "rawContent": raw}
    )


def _success(inst: Instance, progress: _Progress, echoed: list[Json]) -> Json:
    now = time.monotonic()
    total = now - progress.started
    ttft = (progress.first_token_at - progress.started) if progress.first_token_at else None
    gen_time = (now - progress.first_token_at) if progress.first_token_at else 0.0
    prompt = progress.prompt_tokens or 0
    stats: Json = {
        "stopReason": progress.stop_reason,
        "tokensPerSecond": (progress.predicted_tokens / gen_time) if gen_time > 0 else 0.0,
        "numGpuLayers": -1,
        "totalTimeSec": total,
        "promptTokensCount": prompt,
        "predictedTokensCount": progress.predicted_tokens,
        "totalTokensCount": prompt + progress.predicted_tokens,
    }
    if ttft is not None:
        stats["timeToFirstTokenSec"] = ttft
    return {
        "type": "success",
        "stats": stats,
        "modelInfo": inst.info(),
        "loadModelConfig": inst.load_config_kv(),
        "predictionConfig": {"fields": echoed},
    }
