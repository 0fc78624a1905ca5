"""One function decides what a failure means; one table decides what to do about it.

:func:`classify` maps any exception (SDK, msgspec, httpx, OS, or ours) to a
:class:`FailureClass`; :data:`ACTIONS` maps each class to an :class:`Action`. Callers never
write their own ``except`` ladders: they classify and read the table.

=================  =====================================================================
class              action
=================  =====================================================================
TRANSIENT          retry on the same target (with backoff), then fail over
HOST_DOWN          evict and reconnect the client, then fail over; counts against the host
MODEL_UNLOADED     load the model (JIT) and retry once on the same host
CONTEXT_OVERFLOW   compact history and retry; never fail over (another model is no fix)
CONTENT_POLICY     never fail over; surface to the operator
TOOL_CALL_MALFORMED tell the model (a repair round), never fail over
FATAL              no retry on this target; the next target may still work
=================  =====================================================================

``CancelledError`` is not a failure: :func:`classify` raises ``TypeError`` for it so a caller
cannot accidentally retry or count a cancellation. :func:`to_backend_error` turns an SDK error
into our typed :mod:`elaria.errors` tree (the original kept as ``__cause__``); the class survives
the conversion (``classify(to_backend_error(e)) is classify(e)`` for backend failures).
"""

from __future__ import annotations

import asyncio
import enum
import json
from dataclasses import dataclass
from typing import Any

import httpx
import lmstudio
import msgspec

from elaria.errors import (
    BackendError,
    CircuitOpenError,
    ConfigError,
    ContentPolicyError,
    ContextOverflowError,
    ElariaError,
    ElariaTimeoutError,
    HostDown,
    ModelNotFoundError,
    ModelNotLoaded,
    ToolCallMalformed,
    TransientBackendError,
)

__all__ = [
    "ACTIONS",
    "Action",
    "FailureClass",
    "classify",
    "display_code",
    "from_backend",
    "to_backend_error",
]


class FailureClass(enum.StrEnum):
    FATAL = "fatal"
    TRANSIENT = "transient"
    HOST_DOWN = "host_down"
    MODEL_UNLOADED = "model_unloaded"
    CONTEXT_OVERFLOW = "context_overflow"
    CONTENT_POLICY = "content_policy"
    TOOL_CALL_MALFORMED = "tool_call_malformed"


@dataclass(frozen=True)
class Action:
    retry_same_target: bool
    reconnect: bool
    load_model: bool
    fail_over: bool
    compact_history: bool
    tell_model: bool
    counts_against_host: bool


ACTIONS: dict[FailureClass, Action] = {
    FailureClass.TRANSIENT: Action(True, False, False, True, False, False, True),
    FailureClass.HOST_DOWN: Action(False, True, False, True, False, False, True),
    FailureClass.MODEL_UNLOADED: Action(True, False, True, True, False, False, False),
    FailureClass.CONTEXT_OVERFLOW: Action(False, False, False, False, True, False, False),
    FailureClass.CONTENT_POLICY: Action(False, False, False, False, False, False, False),
    FailureClass.TOOL_CALL_MALFORMED: Action(False, False, False, False, False, True, False),
    FailureClass.FATAL: Action(False, False, False, True, False, False, False),
}

_UNLOADED_CODES = frozenset(
    {"generic.specificModelUnloaded", "generic.noModelMatchingQuery", "generic.identifierNotFound"}
)
_NOT_DOWNLOADED_CODES = frozenset({"generic.pathNotFound", "generic.domainMismatch"})
_OVERFLOW_WORDS = (
    "context length",
    "context overflow",
    "contextlengthreached",
    "context window",
    "exceeds the context",
    "too many tokens",
    "context size",
)
_POLICY_WORDS = ("content policy", "contentpolicy", "safety filter", "refused the content")


def display_code(exc: BaseException) -> str | None:
    """LM Studio's ``displayData.code`` carried by an SDK server error, if any."""
    raw: Any = getattr(exc, "_raw_error", None)
    if isinstance(raw, dict):
        data = raw.get("displayData")
        if isinstance(data, dict) and isinstance(data.get("code"), str):
            return str(data["code"])
    return None


def _text(exc: BaseException) -> str:
    return str(exc).lower()


def from_backend(exc: BaseException) -> bool:
    """Whether ``exc`` came from the network stack (SDK, msgspec, httpx, sockets) rather than
    from the caller's own code: only those are converted by :func:`to_backend_error`."""
    if isinstance(exc, lmstudio.LMStudioError | msgspec.ValidationError | httpx.HTTPError):
        return True
    if isinstance(exc, OSError | json.JSONDecodeError):
        return True
    return isinstance(exc, ValueError) and "dictionary update sequence" in str(exc)


def classify(exc: BaseException) -> FailureClass:
    """What kind of failure ``exc`` is. Raises ``TypeError`` for a cancellation."""
    if isinstance(exc, asyncio.CancelledError):
        raise TypeError("a cancellation is not a failure; never classify or retry it")
    if isinstance(exc, ElariaError):
        return _classify_ours(exc)
    if isinstance(exc, lmstudio.LMStudioError):
        return _classify_sdk(exc)
    if isinstance(exc, msgspec.ValidationError):
        # The server sent a payload this SDK cannot decode: retrying the same server is useless.
        return FailureClass.FATAL
    if isinstance(exc, ValueError) and "dictionary update sequence" in str(exc):
        # lmstudio 1.5.0 crashes this way when the server rejects authentication.
        return FailureClass.FATAL
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError):
        return FailureClass.HOST_DOWN
    if isinstance(exc, json.JSONDecodeError):
        return FailureClass.FATAL  # the greeting endpoint is not LM Studio
    if isinstance(exc, TimeoutError):  # before OSError: TimeoutError is an OSError
        return FailureClass.TRANSIENT
    if isinstance(exc, OSError):
        return FailureClass.HOST_DOWN
    return FailureClass.FATAL


def _classify_ours(exc: ElariaError) -> FailureClass:
    if isinstance(exc, HostDown):
        return FailureClass.HOST_DOWN
    if isinstance(exc, ModelNotLoaded):
        return FailureClass.MODEL_UNLOADED
    if isinstance(exc, TransientBackendError | CircuitOpenError):
        return FailureClass.TRANSIENT
    if isinstance(exc, ContextOverflowError):
        return FailureClass.CONTEXT_OVERFLOW
    if isinstance(exc, ContentPolicyError):
        return FailureClass.CONTENT_POLICY
    if isinstance(exc, ToolCallMalformed):
        return FailureClass.TOOL_CALL_MALFORMED
    if isinstance(exc, ElariaTimeoutError):
        # Our own connect/probe deadlines mean the host is gone; others may be a slow model.
        if exc.operation.startswith(("connect", "probe")):
            return FailureClass.HOST_DOWN
        return FailureClass.TRANSIENT
    if isinstance(exc, ModelNotFoundError | ConfigError):
        return FailureClass.FATAL
    return FailureClass.FATAL


def _classify_sdk(exc: lmstudio.LMStudioError) -> FailureClass:
    text = _text(exc)
    if isinstance(exc, lmstudio.LMStudioWebsocketError):
        return FailureClass.HOST_DOWN
    if isinstance(exc, lmstudio.LMStudioTimeoutError):
        return FailureClass.TRANSIENT
    if isinstance(exc, lmstudio.LMStudioClientError):
        if "not reachable" in text:
            return FailureClass.HOST_DOWN
        return FailureClass.TRANSIENT
    is_tool_text = "tool call" in text or "tool use" in text
    if isinstance(exc, lmstudio.LMStudioPredictionError) and is_tool_text:
        return FailureClass.TOOL_CALL_MALFORMED
    if isinstance(exc, lmstudio.LMStudioServerError):
        code = display_code(exc)
        if isinstance(exc, lmstudio.LMStudioModelNotFoundError) or code in _UNLOADED_CODES:
            return FailureClass.MODEL_UNLOADED
        if code in _NOT_DOWNLOADED_CODES:
            return FailureClass.FATAL
        if any(w in text for w in _OVERFLOW_WORDS) or (code or "").endswith("contextOverflow"):
            return FailureClass.CONTEXT_OVERFLOW
        if any(w in text for w in _POLICY_WORDS):
            return FailureClass.CONTENT_POLICY
        if "authentication failed" in text:
            return FailureClass.FATAL
        # "Chat response error: ..." without a known cause: a model crash, worth one retry.
        return FailureClass.TRANSIENT
    if isinstance(exc, lmstudio.LMStudioRuntimeError):
        # "Attempted to read result from an active channel": the stream ended early.
        return FailureClass.TRANSIENT
    return FailureClass.FATAL


_HINTS: dict[FailureClass, str] = {
    FailureClass.HOST_DOWN: "Check that LM Studio is running and its server is enabled.",
    FailureClass.MODEL_UNLOADED: "Load the model in LM Studio (or let Elaria load it).",
    FailureClass.CONTEXT_OVERFLOW: "Shorten the conversation or load the model with more context.",
    FailureClass.CONTENT_POLICY: "Rephrase the request; another model will not help.",
}


def to_backend_error(
    exc: BaseException, *, host: str | None = None, model: str | None = None
) -> BackendError:
    """Our typed error for ``exc`` (returned, not raised; chain it with ``from exc``)."""
    if isinstance(exc, BackendError):
        return exc
    kind = classify(exc)
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, ValueError) and "dictionary update sequence" in str(exc):
        return BackendError(
            "LM Studio rejected the client's authentication",
            host=host,
            model=model,
            hint="Set lmstudio.api_token, or turn off 'Require Authentication' in LM Studio.",
        )
    hint = _HINTS.get(kind)
    if kind is FailureClass.HOST_DOWN:
        return HostDown(message, host=host, model=model, hint=hint)
    if kind is FailureClass.CONTEXT_OVERFLOW:
        return ContextOverflowError(message, host=host, model=model, hint=hint)
    if kind is FailureClass.CONTENT_POLICY:
        return ContentPolicyError(message, host=host, model=model, hint=hint)
    if kind is FailureClass.FATAL and display_code(exc) in _NOT_DOWNLOADED_CODES:
        return ModelNotFoundError(
            message, host=host, model=model, hint="Download the model in LM Studio first."
        )
    if kind is FailureClass.MODEL_UNLOADED:
        return ModelNotLoaded(message, host=host, model=model, hint=hint)
    if kind is FailureClass.TRANSIENT:
        return TransientBackendError(message, host=host, model=model, hint=hint)
    return BackendError(message, host=host, model=model, hint=hint)
