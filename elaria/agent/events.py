"""Typed events of an agent run, in the order they happen.

Every event is a frozen dataclass with a ``kind`` (stable, snake_case: it is what ``--json``
prints and what the audit ledger records), the ``run_id`` and the ``round`` it belongs to, and a
monotonic timestamp ``at``. ``to_dict()`` gives the plain JSON-ready form.

Events are built with :func:`~elaria.lmstudio.rounds.quick_init` (same fields, defaults and
frozenness, cheaper to build: a run builds several per round, whoever listens).

Events are produced on the event loop that runs the agent and handed to ``on_event`` callbacks
synchronously, in order; a callback must not block (queue the event if it has slow work to do).
A callback that raises is logged and ignored: observing a run must never break it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from elaria.lmstudio.rounds import quick_init

__all__ = [
    "AgentEvent",
    "ApprovalRequested",
    "FinalAnswer",
    "HistoryTrimmed",
    "ResilienceEvent",
    "RoundFinished",
    "RoundStarted",
    "RunFailed",
    "RunStarted",
    "TextFragment",
    "ToolCallApproved",
    "ToolCallDenied",
    "ToolCallFailed",
    "ToolCallFinished",
    "ToolCallRepaired",
    "ToolCallRequested",
    "ToolCallStarted",
]


@quick_init
@dataclass(frozen=True, kw_only=True)
class AgentEvent:
    """Base of every event."""

    kind: ClassVar[str] = "event"
    run_id: str
    round: int = 0
    at: float = field(default_factory=time.monotonic)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind
        return data


@quick_init
@dataclass(frozen=True, kw_only=True)
class RunStarted(AgentEvent):
    kind: ClassVar[str] = "run_started"
    task: str
    tools: tuple[str, ...] = ()


@quick_init
@dataclass(frozen=True, kw_only=True)
class RoundStarted(AgentEvent):
    kind: ClassVar[str] = "round_started"
    #: False on the last round, which is sent without tools.
    tools_enabled: bool = True
    attempt: int = 1


@quick_init
@dataclass(frozen=True, kw_only=True)
class TextFragment(AgentEvent):
    kind: ClassVar[str] = "text_fragment"
    text: str


@quick_init
@dataclass(frozen=True, kw_only=True)
class RoundFinished(AgentEvent):
    kind: ClassVar[str] = "round_finished"
    text: str
    tool_calls: int
    prompt_tokens: int
    predicted_tokens: int
    seconds: float
    host: str = ""
    model: str = ""
    stop_reason: str = ""


@quick_init
@dataclass(frozen=True, kw_only=True)
class ToolCallRequested(AgentEvent):
    kind: ClassVar[str] = "tool_call_requested"
    call_id: str
    tool: str
    arguments: Mapping[str, Any] | None


@quick_init
@dataclass(frozen=True, kw_only=True)
class ToolCallRepaired(AgentEvent):
    kind: ClassVar[str] = "tool_call_repaired"
    call_id: str
    tool: str
    arguments: Mapping[str, Any]
    #: Which repair made it parse (``json``, ``xml_tool_call``, ``function_tags``, ``python_call``).
    method: str
    raw: str | None = None


@quick_init
@dataclass(frozen=True, kw_only=True)
class ApprovalRequested(AgentEvent):
    kind: ClassVar[str] = "approval_requested"
    call_id: str
    tool: str
    arguments: Mapping[str, Any]


@quick_init
@dataclass(frozen=True, kw_only=True)
class ToolCallApproved(AgentEvent):
    kind: ClassVar[str] = "tool_call_approved"
    call_id: str
    tool: str
    #: ``policy`` (auto), ``rule`` (a saved rule), ``user`` (answered yes/always).
    by: str
    rule: str | None = None


@quick_init
@dataclass(frozen=True, kw_only=True)
class ToolCallDenied(AgentEvent):
    kind: ClassVar[str] = "tool_call_denied"
    call_id: str
    tool: str
    #: ``policy``, ``rule``, ``user``, ``validator``, ``rate_limit``.
    by: str
    reason: str


@quick_init
@dataclass(frozen=True, kw_only=True)
class ToolCallStarted(AgentEvent):
    kind: ClassVar[str] = "tool_call_started"
    call_id: str
    tool: str
    arguments: Mapping[str, Any]


@quick_init
@dataclass(frozen=True, kw_only=True)
class ToolCallFinished(AgentEvent):
    kind: ClassVar[str] = "tool_call_finished"
    call_id: str
    tool: str
    seconds: float
    result_chars: int
    truncated: bool = False


@quick_init
@dataclass(frozen=True, kw_only=True)
class ToolCallFailed(AgentEvent):
    """The call went back to the model as an error result (it did not end the run)."""

    kind: ClassVar[str] = "tool_call_failed"
    call_id: str
    tool: str
    error_class: str
    message: str
    #: Failures left for this tool before the run ends with ToolBudgetExhausted.
    budget_left: int = 0


@quick_init
@dataclass(frozen=True, kw_only=True)
class ResilienceEvent(AgentEvent):
    """A retry, reconnect, failover or breaker change met while producing a round."""

    kind: ClassVar[str] = "resilience"
    #: ``retry``, ``reconnect``, ``failover``, ``breaker`` … as the LM Studio layer names them.
    action: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@quick_init
@dataclass(frozen=True, kw_only=True)
class HistoryTrimmed(AgentEvent):
    kind: ClassVar[str] = "history_trimmed"
    dropped_messages: int
    tokens: int


@quick_init
@dataclass(frozen=True, kw_only=True)
class FinalAnswer(AgentEvent):
    kind: ClassVar[str] = "final_answer"
    text: str


@quick_init
@dataclass(frozen=True, kw_only=True)
class RunFailed(AgentEvent):
    kind: ClassVar[str] = "run_failed"
    error_class: str
    message: str
