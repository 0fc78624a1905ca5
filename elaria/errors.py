"""Every error Elaria raises, under one root.

Two audiences, two branches (DESIGN.md, "Contracts"):

* **Tell the model** — :class:`ToolError` and its children. The model caused them (an unknown
  tool, bad arguments, a validator refusal, a tool that failed). The agent loop turns them into a
  tool result the model can read and try again, within a per-tool retry budget. They reach the
  caller only wrapped in :class:`ToolBudgetExhausted`.
* **Tell the operator** — everything else. They carry what failed, where, and what to do
  (``hint``), as structured fields; ``str(exc)`` renders all three as one readable paragraph.

Tree::

    ElariaError
    ├── ConfigError (ValueError)                  settings or a config file are invalid
    ├── SecurityViolation (ValueError)            a validator refused an input; ``.rule``
    ├── ToolError                                 tell the model
    │   ├── UnknownToolError
    │   ├── ToolArgumentsError (ValueError)       arguments fail the tool's schema
    │   ├── ToolCallMalformed                     the model's call could not be parsed
    │   ├── ToolExecutionError                    the tool itself raised
    │   ├── ToolTimeoutError (TimeoutError)
    │   ├── ToolDenied                            the approval policy said no
    │   └── ToolRefused                           a security validator refused; ``.rule``
    ├── BackendError                              LM Studio / the embedded server
    │   ├── TransientBackendError                 retry may help (connection lost mid-call)
    │   │   ├── HostDown                          the host does not answer
    │   │   └── ModelNotLoaded                    the model is not loaded (any more): load, retry
    │   ├── CircuitOpenError                      a breaker refuses calls for now
    │   ├── ModelNotFoundError
    │   ├── ContextOverflowError                  never fail over: compact instead
    │   ├── ContentPolicyError                    never fail over
    │   └── AllTargetsFailed                      every failover target failed; ``.attempts``
    ├── ElariaTimeoutError (TimeoutError)         a network deadline of ours expired
    ├── RunError                                  a run ended without an answer
    │   ├── ToolBudgetExhausted                   a tool's retry budget ran out
    │   ├── LoopDetected                          the model repeats the same call
    │   └── RunCancelled
    ├── ResourceExhausted                         memory critical: new runs refused
    └── McpError                                  an MCP server failed to start or answer

Errors from libraries are never leaked raw across the public API; they are chained
(``raise ... from exc``) so the original stays available in ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AllTargetsFailed",
    "BackendError",
    "CircuitOpenError",
    "ConfigError",
    "ConfigProblem",
    "ContentPolicyError",
    "ContextOverflowError",
    "ElariaError",
    "ElariaTimeoutError",
    "FailedAttempt",
    "HostDown",
    "LoopDetected",
    "McpError",
    "ModelNotFoundError",
    "ModelNotLoaded",
    "ResourceExhausted",
    "RunCancelled",
    "RunError",
    "SecurityViolation",
    "ToolArgumentsError",
    "ToolBudgetExhausted",
    "ToolCallMalformed",
    "ToolDenied",
    "ToolError",
    "ToolExecutionError",
    "ToolRefused",
    "ToolTimeoutError",
    "TransientBackendError",
    "UnknownToolError",
]


class ElariaError(Exception):
    """The root. ``message`` says what failed; ``where`` and ``hint`` are optional context."""

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        parts = [self.message]
        if self.where:
            parts.append(f"(at {self.where})")
        text = " ".join(parts)
        if self.hint:
            text = f"{text}. {self.hint}" if not text.endswith(".") else f"{text} {self.hint}"
        return text


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ConfigProblem:
    """One invalid setting: which field, what value, what is allowed, how to fix it."""

    field: str
    value: Any
    allowed: str
    fix: str
    source: str | None = None

    def render(self) -> str:
        where = f" [{self.source}]" if self.source else ""
        return f"{self.field}{where}: got {self.value!r}; allowed: {self.allowed}. Fix: {self.fix}"


class ConfigError(ElariaError, ValueError):
    """Settings are invalid. ``problems`` lists every one of them, not just the first."""

    def __init__(
        self,
        message: str,
        *,
        problems: Sequence[ConfigProblem] = (),
        where: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, where=where, hint=hint)
        self.problems = tuple(problems)

    def __str__(self) -> str:
        head = super().__str__()
        if not self.problems:
            return head
        return head + "\n" + "\n".join(f"  - {p.render()}" for p in self.problems)


# --------------------------------------------------------------------------- security


class SecurityViolation(ElariaError, ValueError):
    """A validator refused an input. ``rule`` is machine-readable (``"path.escape"``)."""

    def __init__(self, rule: str, message: str, *, value: str | None = None) -> None:
        super().__init__(message, hint=None)
        self.rule = rule
        self.value = value

    def __str__(self) -> str:
        return f"{self.message} [rule {self.rule}]"


# --------------------------------------------------------------------------- tell the model


class ToolError(ElariaError):
    """The model caused it; the agent loop shows ``to_model_text()`` to the model."""

    def __init__(self, message: str, *, tool: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, where=f"tool {tool}" if tool else None, hint=hint)
        self.tool = tool

    def to_model_text(self) -> str:
        """What the model reads as the tool result: what was wrong and what to do instead."""
        text = f"Error: {self.message}"
        if self.hint:
            text = f"{text.rstrip()}{'' if text.rstrip().endswith(('.', '!', '?', ':')) else '.'}"
            text += f" {self.hint}"
        return text


class UnknownToolError(ToolError):
    """The model asked for a tool that does not exist."""


class ToolArgumentsError(ToolError, ValueError):
    """The arguments fail the tool's schema."""


class ToolCallMalformed(ToolError):
    """The model emitted a tool call that could not be parsed or repaired."""

    def __init__(
        self,
        message: str,
        *,
        tool: str | None = None,
        raw: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, tool=tool, hint=hint)
        self.raw = raw


class ToolExecutionError(ToolError):
    """The tool ran and raised."""


class ToolTimeoutError(ToolError, TimeoutError):
    """The tool did not finish within its timeout."""


class ToolDenied(ToolError):
    """The approval policy (or the operator) refused this call."""


class ToolRefused(ToolError):
    """A security validator refused the call's arguments; ``rule`` says which rule."""

    def __init__(
        self, message: str, *, rule: str, tool: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, tool=tool, hint=hint)
        self.rule = rule


# --------------------------------------------------------------------------- backends


class BackendError(ElariaError):
    """LM Studio or the embedded server failed. ``host`` and ``model`` say which."""

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        model: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ", ".join(x for x in (host and f"host {host}", model and f"model {model}") if x)
        super().__init__(message, where=where or None, hint=hint)
        self.host = host
        self.model = model


class TransientBackendError(BackendError):
    """A retry may succeed: the connection dropped mid-call, the client is being replaced."""


class HostDown(TransientBackendError):
    """The host does not answer (refused, reset, frozen past the liveness bound)."""


class ModelNotLoaded(TransientBackendError):
    """The model is downloaded but not loaded (or was unloaded): load it, then retry."""


class CircuitOpenError(BackendError):
    """The breaker for this host (or host and model) is open; calls fail fast until it probes."""

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        model: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        hint = f"It will let one probe through in {retry_after:.1f} s." if retry_after else None
        super().__init__(message, host=host, model=model, hint=hint)
        self.retry_after = retry_after


class ModelNotFoundError(BackendError):
    """The model is neither loaded nor downloaded on that host."""


class ContextOverflowError(BackendError):
    """The conversation does not fit the model's context. Compact history; never fail over."""


class ContentPolicyError(BackendError):
    """The model or server refused the content. Never fail over: another model is no fix."""


@dataclass(frozen=True)
class FailedAttempt:
    """One link of a failover chain."""

    host: str
    model: str | None
    error_class: str
    message: str
    skipped: bool = False


_ALL_FAILED_HINT = (
    "Check that LM Studio is running and its server is enabled, or use --backend embedded."
)


class AllTargetsFailed(BackendError):
    """Every failover target failed; ``attempts`` keeps the whole chain in order."""

    def __init__(self, attempts: Sequence[FailedAttempt], *, hint: str | None = None) -> None:
        self.attempts = tuple(attempts)
        lines = "; ".join(
            f"{a.host}/{a.model or '*'}: {'skipped, ' if a.skipped else ''}"
            f"{a.error_class}: {a.message}"
            for a in self.attempts
        )
        super().__init__(
            f"All {len(self.attempts)} LM Studio targets failed: {lines}",
            hint=hint or _ALL_FAILED_HINT,
        )


# --------------------------------------------------------------------------- time, runs, resources


class ElariaTimeoutError(ElariaError, TimeoutError):
    """A deadline of ours expired. ``operation`` names the awaited thing, ``seconds`` the bound."""

    def __init__(
        self,
        operation: str,
        seconds: float,
        *,
        where: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(f"{operation} timed out after {seconds:g} s", where=where, hint=hint)
        self.operation = operation
        self.seconds = seconds


class RunError(ElariaError):
    """A run ended without an answer."""


class ToolBudgetExhausted(RunError):
    """The model kept failing one tool past its retry budget. ``last`` is the last tool error."""

    def __init__(self, tool: str, attempts: int, last: ToolError | None = None) -> None:
        detail = f": {last.message}" if last else ""
        super().__init__(
            f"The model failed to call tool {tool!r} correctly {attempts} times{detail}",
            hint="Try a larger model, a clearer task, or raise agent.tool_retry_budget.",
        )
        self.tool = tool
        self.attempts = attempts
        self.last = last


class LoopDetected(RunError):
    """The model made the same call with the same arguments too many times in a row."""

    def __init__(self, tool: str, repeats: int) -> None:
        super().__init__(
            f"The model called {tool!r} with identical arguments {repeats} times in a row",
            hint="The run was stopped to break the loop; rephrase the task or use a larger model.",
        )
        self.tool = tool
        self.repeats = repeats


class RunCancelled(RunError):
    """The run was cancelled by its caller."""


class ResourceExhausted(ElariaError):
    """Memory is critical; new runs are refused until it falls back under the threshold."""


class McpError(ElariaError):
    """An MCP server failed: it would not start, it died, or it did not answer in time."""

    def __init__(self, message: str, *, server: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, where=f"MCP server {server}" if server else None, hint=hint)
        self.server = server
