"""One prediction round on one host and model, with every await bounded.

:func:`predict_round` implements :mod:`elaria.lmstudio.rounds` for a single target. It does
what ``AsyncLLM.act()`` does for one round (a ``ChatResponseEndpoint`` opened on the ``llm``
session's channel, wrapped in ``AsyncPredictionStream``, events read through
``_iter_events()``), with four differences the agent needs:

* tool calls come back as :class:`~elaria.lmstudio.rounds.RequestedCall` and are never run here;
* ``toolCallGenerationFailed`` does not abort the round: its ``error`` and ``rawContent`` become
  :class:`~elaria.lmstudio.rounds.MalformedCall` for the agent's repair step (the SDK's public
  API raises and loses the raw text);
* deadlines: first token, gap between stream events, and the whole prediction. When a deadline,
  a lost connection or a cancellation abandons the stream, a ``cancel`` is sent to the server
  (the SDK never does), so the model is not left generating for nobody. One
  :class:`~elaria.lmstudio.connection.StreamGuard` enforces them (and the pool's eviction) for
  the whole stream.
* the history (wire format) reaches the server as given: earlier tool calls keep their
  argument names (see ``_chat``).

``on_fragment`` runs on the loop for each text fragment; if it raises, the error is logged and
the round goes on (a broken display is not a backend failure to fail over from).

Tool schemas go to the server as the SDK's ``LlmToolUseSettingToolArray`` (what ``act()`` sends),
so the SDK puts them under its own config key and never camelCases the schemas' own keys (a
plain ``rawTools`` dict would turn ``file_path`` into ``filePath`` in ``properties`` but not in
``required``). That struct models only ``type``, ``properties``, ``required`` and
``additionalProperties`` of a tool's parameters and drops the rest (``$defs``, ``description``),
so the field's value is then replaced by the schemas exactly as given. ``request.tools=None``
sends none (the last round). Uses SDK internals pinned to lmstudio 1.5
(``_create_channel``, ``_iter_events``, ``_channel``, the endpoint's ``_creation_params``,
``_from_api_dict``, and the one method the endpoint calls on its chat,
``_get_history_for_prediction``); ``tests/lmstudio`` guards them.
Errors are the SDK's (or ours for deadlines); :mod:`elaria.lmstudio.failover` classifies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import lmstudio
import msgspec
from lmstudio._sdk_models import LlmTool, LlmToolUseSettingToolArray
from lmstudio.history import Chat, ChatHistoryData
from lmstudio.json_api import (
    ChatResponseEndpoint,
    LlmPredictionConfig,
    PredictionFragmentEvent,
    PredictionToolCallEvent,
)
from loguru import logger

from elaria.config import LMStudioSettings
from elaria.errors import HostDown
from elaria.lmstudio.connection import CANCEL_SEND_TIMEOUT_S, Lease
from elaria.lmstudio.rounds import (
    FragmentCallback,
    MalformedCall,
    RequestedCall,
    RoundRequest,
    RoundResult,
)

__all__ = ["predict_round"]


class _RoundEndpoint(ChatResponseEndpoint):
    """``ChatResponseEndpoint`` that records failed tool-call generations instead of failing."""

    def __init__(
        self,
        identifier: str,
        chat: Chat | _WireHistory,
        config: LlmPredictionConfig,
        tools: list[dict[str, Any]] | None,
    ) -> None:
        super().__init__(identifier, cast(Chat, chat), None, config)
        if tools is not None:
            _send_tools_verbatim(self._creation_params, tools)
        self.malformed: list[MalformedCall] = []

    def iter_message_events(self, contents: Any) -> Iterable[Any]:
        # Decoded JSON is a plain dict: the exact-type test spares the ABC check per message.
        if (type(contents) is dict or isinstance(contents, Mapping)) and contents.get(
            "type"
        ) == "toolCallGenerationFailed":
            self.malformed.append(_malformed(contents))
            return ()
        # The SDK's own iterator, not one more generator layer per stream message.
        return super().iter_message_events(contents)


def _malformed(message: Mapping[str, Any]) -> MalformedCall:
    error = message.get("error")
    if isinstance(error, Mapping):
        text = str(error.get("title") or error.get("rootTitle") or "tool call generation failed")
        if error.get("cause"):
            text += f": {error['cause']}"
    else:
        text = str(error or "tool call generation failed")
    raw = message.get("rawContent")
    return MalformedCall(error=text, raw=raw if isinstance(raw, str) else None)


#: The type the SDK's tool array holds, built once for ``msgspec.convert``.
_TOOL_LIST = list[LlmTool]
#: Schema lists already checked against ``LlmTool``, by the ids of their schema dicts (the
#: agent sends its registry's same dicts every round; ``ToolRegistry.lmstudio_schemas`` asks
#: that they are not changed). The value keeps the dicts alive, so the ids stay theirs.
_CHECKED_TOOLS: dict[tuple[int, ...], tuple[Mapping[str, Any], ...]] = {}
#: Distinct schema lists remembered (a few registries per process); past it the memo restarts.
_CHECKED_TOOLS_MAX = 32


def prediction_config(request: RoundRequest, settings: LMStudioSettings) -> LlmPredictionConfig:
    """The SDK's ``LlmPredictionConfig`` for ``request`` (settings fill the gaps).

    With tools, the config holds an *empty* tool array: it only makes the SDK reserve the tools
    field, whose value :func:`_send_tools_verbatim` replaces by the schemas as given. The schemas
    are still checked against the SDK's ``LlmTool`` struct (one ``msgspec.convert`` for all),
    so a schema the SDK would refuse fails here, before anything is sent (once per list of
    schema dicts: the agent's registry sends the same ones every round)."""
    config = LlmPredictionConfig(
        temperature=settings.temperature if request.temperature is None else request.temperature,
        max_tokens=settings.max_tokens if request.max_tokens is None else request.max_tokens,
    )
    if request.tools is not None:
        _check_tools(request.tools)
        config.raw_tools = LlmToolUseSettingToolArray(tools=[])
    return config


def _check_tools(tools: Sequence[Mapping[str, Any]]) -> None:
    """Raise ``msgspec.ValidationError`` unless the SDK's ``LlmTool`` accepts every schema;
    the same schema dicts are checked once (see :data:`_CHECKED_TOOLS`)."""
    key = tuple(map(id, tools))
    if key in _CHECKED_TOOLS:
        return
    msgspec.convert(tools, _TOOL_LIST)
    if len(_CHECKED_TOOLS) >= _CHECKED_TOOLS_MAX:
        _CHECKED_TOOLS.clear()
    _CHECKED_TOOLS[key] = tuple(tools)


def _send_tools_verbatim(params: Any, tools: list[dict[str, Any]]) -> None:
    """Replace the tool array the SDK built from its struct by ``tools`` as given."""
    for layer in params["predictionConfigStack"]["layers"]:
        for config_field in layer["config"]["fields"]:
            value = config_field.get("value")
            if isinstance(value, Mapping) and value.get("type") == "toolArray":
                config_field["value"] = {"type": "toolArray", "tools": tools}
                return
    # Only an SDK upgrade that moved the tools can get here; tests/lmstudio guards it.
    raise RuntimeError("lmstudio SDK did not put the tool array in the prediction config")


async def predict_round(
    lease: Lease,
    identifier: str,
    request: RoundRequest,
    settings: LMStudioSettings,
    on_fragment: FragmentCallback | None = None,
) -> RoundResult:
    """Run one round for the loaded model ``identifier`` on ``lease``'s client."""
    tools = None if request.tools is None else [dict(t) for t in request.tools]
    endpoint = _endpoint(identifier, request, prediction_config(request, settings), tools)
    session = lease.client.llm
    # Imported here: AsyncPredictionStream lives with the async API, which this module wraps.
    from lmstudio.async_api import AsyncPredictionStream

    stream = AsyncPredictionStream(session._create_channel(endpoint), endpoint)
    started = time.monotonic()
    deadline = started + settings.timeout_s
    first_token_s = settings.first_token_timeout_ms / 1000
    gap_s = settings.fragment_gap_timeout_ms / 1000
    calls: list[RequestedCall] = []
    ttft: float | None = None
    channel: Any = None
    events: Any = None
    try:
        # One guard for the whole prediction: a task and a wait per stream event cost more
        # than the SDK's own work per fragment.
        async with lease.guard() as guard:
            guard.expect("open prediction", _bounded(gap_s, deadline))
            await stream.start()
            channel = stream._channel
            events = stream._iter_events().__aiter__()
            while True:
                step_s = first_token_s if ttft is None else gap_s
                remaining = deadline - time.monotonic()
                if remaining <= step_s:
                    guard.expect("prediction", remaining, reported_s=settings.timeout_s)
                else:
                    guard.expect("first token" if ttft is None else "gap between fragments", step_s)
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    break
                if isinstance(event, PredictionFragmentEvent):
                    if ttft is None:
                        ttft = time.monotonic() - started
                    _notify(on_fragment, event.arg.content)
                elif isinstance(event, PredictionToolCallEvent):
                    call = event.arg
                    args = call.arguments
                    calls.append(
                        RequestedCall(
                            name=call.name,
                            arguments=dict(args) if args is not None else None,
                            id=call.id,
                        )
                    )
    except BaseException as exc:
        if channel is not None and _server_may_still_be_generating(exc):
            await _send_cancel(channel, lease.host)
        if events is not None:
            with contextlib.suppress(Exception):
                await events.aclose()
        raise
    result = stream.result()
    stats = result.stats
    return RoundResult(
        text=result.content,
        tool_calls=tuple(calls),
        malformed=tuple(endpoint.malformed),
        stop_reason=str(stats.stop_reason),
        prompt_tokens=int(stats.prompt_tokens_count or 0),
        predicted_tokens=int(stats.predicted_tokens_count or 0),
        time_to_first_token_s=ttft,
        total_time_s=time.monotonic() - started,
        host=lease.host,
        model=identifier,
    )


class _WireHistory:
    """What the SDK's prediction endpoint reads of a ``Chat``: the history as wire dicts.

    The endpoint only calls ``_get_history_for_prediction()`` and converts the result into its
    request struct (a ``msgspec.convert``, which validates it). A ``Chat`` would first convert the
    same dicts into its own structs and back (:func:`_chat`), only to be converted once more."""

    __slots__ = ("_wire",)

    def __init__(self, messages: Iterable[Mapping[str, Any]]) -> None:
        self._wire = {"messages": list(messages)}

    def _get_history_for_prediction(self) -> dict[str, Any]:
        return self._wire


def _endpoint(
    identifier: str,
    request: RoundRequest,
    config: LlmPredictionConfig,
    tools: list[dict[str, Any]] | None,
) -> _RoundEndpoint:
    """The round's endpoint, the history handed to the SDK as it is (see :func:`_chat`);
    a shape the SDK's request struct refuses takes the lenient path through a ``Chat``."""
    try:
        return _RoundEndpoint(identifier, _WireHistory(request.messages), config, tools)
    except msgspec.ValidationError:
        return _RoundEndpoint(identifier, _chat(request.messages), config, tools)


def _chat(messages: Iterable[Mapping[str, Any]]) -> Chat:
    """The SDK chat for ``messages`` in the history wire format, taken as they are.

    ``Chat.from_history`` re-adds every message through the SDK's public helpers, which costs
    a tenth of a millisecond per message and camelCases the keys of earlier tool calls'
    arguments (the model would see its own ``file_path`` come back as ``filePath``). One msgspec
    conversion of the wire format does neither; only shapes it rejects (a plain string as
    content) take the lenient path."""
    history: Any = {"messages": [dict(m) for m in messages]}
    try:
        return Chat(_initial_history=ChatHistoryData._from_api_dict(history))
    except msgspec.ValidationError:
        return Chat.from_history(history)


def _bounded(step_s: float, deadline: float) -> float:
    return max(0.0, min(step_s, deadline - time.monotonic()))


def _server_may_still_be_generating(exc: BaseException) -> bool:
    """A server error ended the channel and a lost socket cannot carry a cancel; anything
    else (our deadline, a cancellation, a bug here) leaves the server generating."""
    return not isinstance(
        exc, lmstudio.LMStudioServerError | lmstudio.LMStudioClientError | HostDown
    )


def _notify(callback: FragmentCallback | None, fragment: str) -> None:
    if callback is None:
        return
    try:
        callback(fragment)
    except Exception:
        # A broken display must not turn into a backend failure and a failover.
        logger.opt(exception=True).bind(kind="predict").warning("fragment callback failed")


async def _send_cancel(channel: Any, host: str) -> None:
    """Tell the server to stop generating; shielded so a second cancellation cannot skip it."""
    if channel is None:
        return

    async def send() -> None:
        with contextlib.suppress(Exception):  # best effort: the socket may be dying too
            async with asyncio.timeout(CANCEL_SEND_TIMEOUT_S):
                await channel.cancel()

    task = asyncio.ensure_future(send())
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(task)
    logger.bind(kind="predict", host=host).debug("sent cancel for an abandoned prediction")
