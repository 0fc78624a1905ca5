"""The contract between the agent loop and the LM Studio layer: one prediction round.

The agent builds a :class:`RoundRequest` (the whole history in LM Studio's wire shape, the tool
schemas or ``None`` for a last round without tools, sampling options) and receives a
:class:`RoundResult`. The LM Studio layer (pool, failover) owns every timeout, reconnect,
breaker and the server-side ``cancel``; the agent owns tools and history.

Plain values only: these objects cross task boundaries and go into events and the audit ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FragmentCallback", "MalformedCall", "RequestedCall", "RoundRequest", "RoundResult"]

#: Called on the event loop with each text fragment as it arrives.
FragmentCallback = Callable[[str], None]


@dataclass(frozen=True)
class RoundRequest:
    """One prediction round. ``messages`` use the SDK's history wire format
    (``{"role": ..., "content": [{"type": "text", "text": ...}, ...]}``)."""

    messages: Sequence[Mapping[str, Any]]
    tools: Sequence[Mapping[str, Any]] | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class RequestedCall:
    """A tool call the model asked for. ``arguments`` is ``None`` when the model sent none."""

    name: str
    arguments: Mapping[str, Any] | None
    id: str | None = None


@dataclass(frozen=True)
class MalformedCall:
    """A tool call the server could not parse (``toolCallGenerationFailed``); ``raw`` is the
    model's text when the server sent it, for the agent's repair step."""

    error: str
    raw: str | None = None


@dataclass(frozen=True)
class RoundResult:
    text: str
    tool_calls: Sequence[RequestedCall] = ()
    malformed: Sequence[MalformedCall] = ()
    stop_reason: str = "eosFound"
    prompt_tokens: int = 0
    predicted_tokens: int = 0
    time_to_first_token_s: float | None = None
    total_time_s: float = 0.0
    host: str = ""
    model: str = ""
    provider: str = "lmstudio"
    #: Resilience events met while producing this round (retries, reconnects, failovers), in order.
    events: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
