"""The agent's round state as plain objects: which calls a round asked for, which are recorded.

Sans-I/O. The loop creates a :class:`RoundState` when a prediction round completes, records one
:class:`CallRecord` per requested call as its outcome becomes known, and turns the round into
history with :meth:`RoundState.messages` — an ``assistant`` message with the text and every
``toolCallRequest``, then one ``tool`` message with a ``toolCallResult`` per call, in request
order (the SDK's ``act()`` shape). :meth:`messages` refuses while a call is unrecorded unless
``close_pending`` is given, so history never holds a tool call without its result; a cancelled
run closes the pending calls with a "cancelled" result instead of dropping them (the tools that
did run had their side effects, and the model should know).

Resume: a prediction round interrupted by a dropped connection leaves no state (no RoundState
exists before the round completes, and no tool runs before then) and is simply retried from
history. Every executed call's result is in history before the next prediction starts, so no
tool ever runs twice; a later identical request is a new call by the model (and counts toward
the repeated-call detector).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["CallRecord", "CallStatus", "RoundState", "RunState", "result_text"]

CallStatus = Literal["pending", "ok", "error", "denied", "cancelled"]

#: What the model reads for a call that never finished because the run was cancelled.
CANCELLED_RESULT = "Error: the run was cancelled before this tool call finished."


@dataclass
class CallRecord:
    """One requested call and, once known, its outcome."""

    call_id: str
    name: str
    #: The arguments as finally used (after a repair), or as requested when they were unusable.
    arguments: Mapping[str, Any] | None
    raw: str | None = None
    #: Arguments that came as something other than an object (JSON text), for the guard to parse.
    raw_arguments: Any = None
    repaired_by: str | None = None
    status: CallStatus = "pending"
    #: The text the model reads as the tool result.
    result: str | None = None
    error_class: str | None = None
    seconds: float = 0.0
    #: True when the tool's handler actually ran (its side effects happened).
    executed: bool = False
    truncated: bool = False

    @property
    def recorded(self) -> bool:
        return self.status != "pending"

    def record(
        self,
        status: CallStatus,
        result: str,
        *,
        error_class: str | None = None,
        seconds: float = 0.0,
        executed: bool = False,
        truncated: bool = False,
    ) -> None:
        if status == "pending":
            raise ValueError("record a final status, not 'pending'")
        self.status = status
        self.result = result
        self.error_class = error_class
        self.seconds = seconds
        self.executed = executed
        self.truncated = truncated

    def summary(self) -> dict[str, Any]:
        """Plain, JSON-ready description for results, events and the audit ledger."""
        return {
            "call_id": self.call_id,
            "tool": self.name,
            "arguments": dict(self.arguments) if self.arguments is not None else None,
            "status": self.status,
            "error_class": self.error_class,
            "repaired_by": self.repaired_by,
            "seconds": round(self.seconds, 6),
            "executed": self.executed,
            "truncated": self.truncated,
        }


@dataclass
class RoundState:
    """One completed prediction round and its calls."""

    index: int
    text: str
    calls: list[CallRecord] = field(default_factory=list)
    #: The round was sent without tools (the last round).
    final: bool = False

    def pending(self) -> list[CallRecord]:
        return [c for c in self.calls if not c.recorded]

    @property
    def complete(self) -> bool:
        return not self.pending()

    def close_pending(self, result: str = CANCELLED_RESULT) -> int:
        """Record every unfinished call as cancelled; returns how many there were."""
        pending = self.pending()
        for call in pending:
            call.record("cancelled", result, error_class="RunCancelled")
        return len(pending)

    def messages(self) -> list[dict[str, Any]]:
        """The round as history: assistant message (text + requests), then tool results."""
        if not self.calls:
            return [_assistant(self.text, [])]
        if not self.complete:
            raise ValueError(
                f"round {self.index} has unrecorded calls "
                f"({', '.join(c.call_id for c in self.pending())}); record or close them first"
            )
        requests = [
            {
                "type": "toolCallRequest",
                "toolCallRequest": {
                    "type": "function",
                    "id": c.call_id,
                    "name": c.name,
                    "arguments": dict(c.arguments) if c.arguments is not None else {},
                },
            }
            for c in self.calls
        ]
        results = [
            {"type": "toolCallResult", "content": c.result or "", "toolCallId": c.call_id}
            for c in self.calls
        ]
        return [_assistant(self.text, requests), {"role": "tool", "content": results}]


@dataclass
class RunState:
    """Everything a run has recorded so far; survives round retries."""

    rounds: list[RoundState] = field(default_factory=list)

    def add_round(self, state: RoundState) -> None:
        self.rounds.append(state)

    @property
    def calls(self) -> list[CallRecord]:
        return [c for r in self.rounds for c in r.calls]

    @property
    def executed(self) -> int:
        return sum(1 for c in self.calls if c.executed)


#: ``json.dumps(ensure_ascii=False, default=str)``, built once: every tool result passes here.
_RESULT_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


def result_text(value: Any) -> str:
    """A tool's return value as the text the model reads (the SDK's rule: JSON unless text)."""
    if isinstance(value, str):
        return value
    try:
        return _RESULT_ENCODER.encode(value)
    except (TypeError, ValueError):
        return repr(value)


def _assistant(text: str, requests: list[dict[str, Any]]) -> dict[str, Any]:
    # The SDK's act() always sends the text part first, even when empty.
    return {"role": "assistant", "content": [{"type": "text", "text": text}, *requests]}
