"""How the agent loop's typed events fill a :class:`~elaria.telemetry.ledger.RequestContext`.

``OBSERVERS`` maps an event ``kind`` (``elaria.agent.events``) to a function of the context and
the event (an object with the event's attributes). Tool arguments seen when a call is requested,
repaired or started are kept by call id until its outcome (finished, failed, denied) is known.
Plain functions on the caller's loop; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from elaria.telemetry.ledger import RequestContext

__all__ = ["OBSERVERS"]

#: Error classes of a tool call that a security validator refused.
_REFUSAL_CLASSES: Final = frozenset({"ToolRefused", "SecurityViolation"})


def _args_of(ctx: RequestContext, event: Any) -> Any:
    return ctx._pending_args.get(getattr(event, "call_id", ""), getattr(event, "arguments", None))


def _on_round_finished(ctx: RequestContext, e: Any) -> None:
    ctx.model_call(
        e.host,
        e.model,
        latency_s=e.seconds,
        tokens_in=e.prompt_tokens,
        tokens_out=e.predicted_tokens,
    )


def _on_requested(ctx: RequestContext, e: Any) -> None:
    ctx._pending_args[e.call_id] = e.arguments


def _on_repaired(ctx: RequestContext, e: Any) -> None:
    ctx._pending_args[e.call_id] = e.arguments
    ctx.event("repair", tool=e.tool, call_id=e.call_id, method=e.method)


def _on_approved(ctx: RequestContext, e: Any) -> None:
    ctx.event("approval", tool=e.tool, call_id=e.call_id, by=e.by, rule=e.rule)


def _on_denied(ctx: RequestContext, e: Any) -> None:
    kind = "validator_refusal" if e.by == "validator" else "denial"
    ctx.event(kind, tool=e.tool, call_id=e.call_id, by=e.by, reason=e.reason)
    outcome = "refused" if e.by == "validator" else "denied"
    ctx.tool_call(e.tool, _args_of(ctx, e), outcome, None, call_id=e.call_id)
    ctx._pending_args.pop(e.call_id, None)


def _on_started(ctx: RequestContext, e: Any) -> None:
    ctx._pending_args[e.call_id] = e.arguments


def _on_tool_finished(ctx: RequestContext, e: Any) -> None:
    ctx.tool_call(e.tool, _args_of(ctx, e), "ok", e.seconds, call_id=e.call_id)
    ctx._pending_args.pop(e.call_id, None)


def _on_tool_failed(ctx: RequestContext, e: Any) -> None:
    # A validator refusing inside the tool (paths, SQL, shell) is a refusal, not a tool bug.
    refused = e.error_class in _REFUSAL_CLASSES
    kind = "validator_refusal" if refused else "tool_error"
    ctx.event(kind, tool=e.tool, call_id=e.call_id, error_class=e.error_class, reason=e.message)
    outcome = "refused" if refused else "timeout" if "Timeout" in e.error_class else "error"
    ctx.tool_call(
        e.tool, _args_of(ctx, e), outcome, None, error_class=e.error_class, call_id=e.call_id
    )
    ctx._pending_args.pop(e.call_id, None)


def _on_resilience(ctx: RequestContext, e: Any) -> None:
    detail = dict(e.detail) if isinstance(e.detail, Mapping) else {"detail": e.detail}
    detail.pop("kind", None)
    detail.pop("action", None)
    ctx.event(str(e.action), **detail)


def _on_trimmed(ctx: RequestContext, e: Any) -> None:
    ctx.event("trim", dropped_messages=e.dropped_messages, tokens=e.tokens)


def _on_answer(ctx: RequestContext, e: Any) -> None:
    ctx.set_answer(e.text)


def _on_failed(ctx: RequestContext, e: Any) -> None:
    cancelled = e.error_class == "cancelled"
    ctx.set_error("CancelledError" if cancelled else e.error_class, e.message)
    if cancelled:
        ctx.finish("cancelled")


OBSERVERS: Final[dict[str, Callable[[RequestContext, Any], None]]] = {
    "round_finished": _on_round_finished,
    "tool_call_requested": _on_requested,
    "tool_call_repaired": _on_repaired,
    "tool_call_approved": _on_approved,
    "tool_call_denied": _on_denied,
    "tool_call_started": _on_started,
    "tool_call_finished": _on_tool_finished,
    "tool_call_failed": _on_tool_failed,
    "resilience": _on_resilience,
    "history_trimmed": _on_trimmed,
    "final_answer": _on_answer,
    "run_failed": _on_failed,
}
