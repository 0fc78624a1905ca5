"""The pipeline every tool call passes before it runs, and the run's loop breakers.

Order (DESIGN.md, "Data flow"):

1. the tool exists, and the arguments pass its schema (arguments sent as JSON text are parsed
   leniently first: :func:`~elaria.agent.repair.repair_arguments`);
2. :func:`~elaria.security.check_tool_arguments`: forbidden keys, depth, argument lengths;
3. tool-specific validators chosen by ``Tool.arg_kinds`` (``path``, ``sql``, ``shell``, ``url``);
4. the approval policy (:class:`~elaria.agent.approval.ApprovalPolicy`) — ``ask`` is answered
   by the loop, which owns the callback;
5. a per-tool rate limit (sliding window, ``agent.tool_calls_per_minute``);
6. the repeated-identical-call detector (``agent.max_repeated_calls`` in a row → LoopDetected).

Steps 1–3 are :meth:`Guard.check`, 5–6 :meth:`Guard.admit`; each refusal is a
:class:`~elaria.errors.ToolError` the loop hands back to the model, except ``LoopDetected``
which ends the run. :class:`RetryBudget` counts the model's failures per tool.

Sans-I/O: plain values, an injected clock; loop-confined, no locks needed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from elaria.agent.approval import ApprovalPolicy, Decision
from elaria.agent.repair import repair_arguments
from elaria.agent.tools import ArgKind, Tool, ToolRegistry
from elaria.config import AgentSettings
from elaria.errors import (
    LoopDetected,
    SecurityViolation,
    ToolBudgetExhausted,
    ToolDenied,
    ToolError,
    ToolRefused,
)
from elaria.resilience.ratelimit import SlidingWindowLimiter
from elaria.security import check_tool_arguments

__all__ = ["ArgumentValidator", "Guard", "RateLimited", "RetryBudget", "call_signature"]

#: Validates one argument value of a kind; raises SecurityViolation to refuse.
ArgumentValidator = Callable[[Any], None]

#: The rate-limit window: ``tool_calls_per_minute`` is per minute by definition.
RATE_WINDOW_S = 60.0


class RateLimited(ToolDenied):
    """The tool's per-minute limit is used up (a kind of denial; tell the model to wait)."""


#: What ``json.dumps(sort_keys=True, separators=(",", ":"), default=str)`` builds on every call,
#: made once: a signature is taken for every tool call.
_SIGNATURE_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def call_signature(name: str, arguments: Mapping[str, Any] | None) -> str:
    """Canonical text of a call: same tool and same arguments give the same signature."""
    try:
        args = _SIGNATURE_ENCODER.encode(arguments or {})
    except (TypeError, ValueError):
        args = repr(arguments)
    return f"{name}:{args}"


@dataclass
class Guard:
    """Decisions before a call runs. One per run (the detector and budget are per run)."""

    registry: ToolRegistry
    agent: AgentSettings
    policy: ApprovalPolicy
    validators: Mapping[ArgKind, ArgumentValidator] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    limiter: SlidingWindowLimiter | None = None
    _last_signature: str | None = field(default=None, init=False)
    _repeats: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.limiter is None:
            self.limiter = SlidingWindowLimiter(
                self.agent.tool_calls_per_minute, RATE_WINDOW_S, clock=self.clock
            )

    def check(self, name: str, arguments: Any) -> tuple[Tool, dict[str, Any]]:
        """Steps 1–3: the tool, its schema, keys and lengths, domain validators."""
        tool = self.registry.get(name)
        valid = repair_arguments(tool, arguments)
        raw = arguments if isinstance(arguments, Mapping) else valid
        try:
            check_tool_arguments(raw, max_chars=self.agent.max_argument_chars)
            for arg, kind in tool.arg_kinds.items():
                validator = self.validators.get(kind)
                value = valid.get(arg)
                if validator is None or value is None:
                    continue
                for item in value if isinstance(value, list | tuple) else (value,):
                    validator(item)
        except SecurityViolation as exc:
            raise ToolRefused(
                exc.message,
                rule=exc.rule,
                tool=tool.name,
                hint="This call was refused before it ran; change the arguments.",
            ) from exc
        return tool, valid

    def approval(self, tool: Tool, arguments: Mapping[str, Any]) -> Decision:
        """Step 4."""
        return self.policy.decide(tool.name, arguments, tool.approval)

    def admit(self, tool: Tool, arguments: Mapping[str, Any]) -> None:
        """Steps 5–6, called right before the tool runs."""
        assert self.limiter is not None
        if not self.limiter.try_acquire(tool.name):
            wait = self.limiter.retry_after(tool.name)
            raise RateLimited(
                f"rate limit: at most {self.limiter.limit} calls of {tool.name} per minute",
                tool=tool.name,
                hint=f"Wait {wait:.0f} s, or use the results you already have.",
            )
        self.observe(tool.name, arguments)

    def observe(self, name: str, arguments: Mapping[str, Any] | None) -> None:
        """Count identical calls in a row; the ``max_repeated_calls``-th one ends the run."""
        signature = call_signature(name, arguments)
        if signature == self._last_signature:
            self._repeats += 1
        else:
            self._last_signature, self._repeats = signature, 1
        if self._repeats >= self.agent.max_repeated_calls:
            raise LoopDetected(name, self._repeats)


@dataclass
class RetryBudget:
    """The model's failures per tool. Each failure costs one; a success resets that tool.

    With budget ``n`` the model may fail a tool ``n`` times and be told so; failure ``n + 1``
    ends the run with :class:`~elaria.errors.ToolBudgetExhausted`.
    """

    budget: int
    failures: dict[str, int] = field(default_factory=dict)

    def fail(self, tool: str, error: ToolError) -> int:
        """Record a failure; return how many are left, or raise when none are."""
        count = self.failures.get(tool, 0) + 1
        self.failures[tool] = count
        if count > self.budget:
            raise ToolBudgetExhausted(tool, count, error)
        return self.budget - count

    def succeed(self, tool: str) -> None:
        self.failures.pop(tool, None)
