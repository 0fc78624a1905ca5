"""Tool dispatch for one agent run: from the calls a round asked for to results in history.

:class:`CallDispatcher` is the half of a run (``elaria.agent.loop``) that handles calls:

1. read the round's calls — native ones, malformed ones (repaired when the repair passes the
   schema, else explained), and calls leaked into the answer text;
2. pass each through the :class:`~elaria.agent.guard.Guard` in request order — schema, keys and
   lengths, validators, approval (the callback is asked here, one question at a time), rate
   limit, repeated-call detector;
3. run the admitted ones, at most ``max_parallel_tools`` at once, each under its timeout, and cap
   every result;
4. append the round to history (every call with its result, even when cancelled) and settle
   the per-tool retry budget.

Loop-confined, like the run it belongs to. Cancellation while tools run cancels them; the
unfinished calls are recorded as cancelled before the CancelledError goes on.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from loguru import logger

from elaria.agent import events as ev
from elaria.agent.approval import ApprovalAnswer, ApprovalRequest, describe_rule
from elaria.agent.guard import Guard, RateLimited, RetryBudget
from elaria.agent.repair import Repaired, looks_like_text_call, repair_call
from elaria.agent.state import CallRecord, RoundState, RunState, result_text
from elaria.agent.tools import Tool
from elaria.config import AgentSettings
from elaria.errors import (
    SecurityViolation,
    ToolDenied,
    ToolError,
    ToolExecutionError,
    ToolRefused,
    ToolTimeoutError,
)
from elaria.lmstudio.rounds import RequestedCall, RoundResult
from elaria.resilience import deadlines
from elaria.security import cap_result

if TYPE_CHECKING:
    from elaria.agent.loop import AgentLoop, EventCallback

__all__ = ["CallDispatcher"]


class CallDispatcher:
    """Mixin of the run: the state it needs is set by the run's ``__init__``."""

    loop: AgentLoop
    agent: AgentSettings
    task: str
    run_id: str
    round: int
    on_event: EventCallback | None
    guard: Guard
    budget: RetryBudget
    state: RunState
    _ids: itertools.count[int]

    # ------------------------------------------------------------------ events

    def emit(self, event: ev.AgentEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:  # an observer must never break the run
            logger.opt(exception=True).warning("on_event callback failed for {}", event.kind)

    def _add_history(self, message: dict[str, Any]) -> None:
        history = self.loop.history
        # The history trimmed old messages to stay in bounds: say how many.
        dropped = history.add(message)
        if dropped > 0:
            stats = history.stats()
            self.emit(
                ev.HistoryTrimmed(
                    run_id=self.run_id,
                    round=self.round,
                    dropped_messages=dropped,
                    tokens=stats["tokens"],
                )
            )

    # ------------------------------------------------------------------ calls

    def _new_id(self) -> str:
        return f"call_{self.round}_{next(self._ids)}"

    def _requested_calls(self, result: RoundResult) -> list[CallRecord]:
        calls: list[CallRecord] = []
        for req in result.tool_calls:
            calls.append(self._from_request(req))
        for bad in result.malformed:
            calls.append(self._from_text(bad.raw, error=bad.error))
        if not calls and looks_like_text_call(result.text):
            calls.append(self._from_text(result.text, error=None))
        return calls

    def _from_request(self, req: RequestedCall) -> CallRecord:
        call_id = req.id or self._new_id()
        args: Any = req.arguments
        record = CallRecord(call_id, req.name, dict(args) if isinstance(args, Mapping) else None)
        self._announce(record)
        if args is not None and not isinstance(args, Mapping):
            record.raw_arguments = args
        return record

    def _announce(self, record: CallRecord) -> None:
        self.emit(
            ev.ToolCallRequested(
                run_id=self.run_id,
                round=self.round,
                call_id=record.call_id,
                tool=record.name,
                arguments=record.arguments,
            )
        )

    def _from_text(self, raw: str | None, *, error: str | None) -> CallRecord:
        call_id = self._new_id()
        try:
            fixed: Repaired = repair_call(raw, self.loop.registry, error=error)
        except ToolError as exc:
            name = exc.tool or "unparsed_tool_call"
            record = CallRecord(call_id, name, {}, raw=raw)
            self._announce(record)
            record.record("error", exc.to_model_text(), error_class=type(exc).__name__)
            return record
        record = CallRecord(call_id, fixed.name, fixed.arguments, raw=raw)
        record.repaired_by = fixed.method
        self._announce(record)
        self.emit(
            ev.ToolCallRepaired(
                run_id=self.run_id,
                round=self.round,
                call_id=call_id,
                tool=fixed.name,
                arguments=fixed.arguments,
                method=fixed.method,
                raw=raw,
            )
        )
        return record

    async def _handle_calls(self, state: RoundState) -> None:
        committed = False
        try:
            runnable: list[tuple[CallRecord, Tool, dict[str, Any]]] = []
            for call in state.calls:
                if call.recorded:
                    continue
                admitted = await self._admit(call)
                if admitted is not None:
                    runnable.append((call, *admitted))
            await self._run_tools(runnable)
            self._commit(state)
            committed = True
            for call in state.calls:
                self._settle_budget(call)
        finally:
            if not committed:
                state.close_pending()
                self._commit(state)

    def _commit(self, state: RoundState) -> None:
        self.state.add_round(state)
        messages = state.messages()
        if self.loop.restate_task and messages[-1]["role"] == "tool":
            # Small models lose the thread after a tool result; the task, restated last,
            # points them at the next step (the result itself is unchanged before it).
            results = messages[-1]["content"]
            last = dict(results[-1])
            last["content"] = f"{last['content']}\n(Your task: {self.task})"
            messages[-1] = {"role": "tool", "content": [*results[:-1], last]}
        for message in messages:
            self._add_history(message)

    def _settle_budget(self, call: CallRecord) -> None:
        if call.status == "ok":
            self.budget.succeed(call.name)
            return
        error = _RecordedError((call.result or "").removeprefix("Error: "), tool=call.name)
        left = self.budget.fail(call.name, error)
        if call.status == "denied":
            return
        self.emit(
            ev.ToolCallFailed(
                run_id=self.run_id,
                round=self.round,
                call_id=call.call_id,
                tool=call.name,
                error_class=call.error_class or "ToolError",
                message=call.result or "",
                budget_left=left,
            )
        )

    async def _admit(self, call: CallRecord) -> tuple[Tool, dict[str, Any]] | None:
        """Guard steps in request order; None when the call was refused (and recorded)."""
        by = "policy"
        try:
            arguments: Any = call.arguments if call.raw_arguments is None else call.raw_arguments
            tool, args = self.guard.check(call.name, arguments)
            call.arguments = args
            decision = self.guard.approval(tool, args)
            verdict: str = decision.verdict
            by = decision.by
            rule: str | None = decision.describe() if decision.rule is not None else None
            if verdict == "ask":
                verdict, rule = await self._ask(call, tool, args)
                by = "user"
            if verdict == "deny":
                reason = "the operator" if by == "user" else f"the approval {decision.describe()}"
                raise ToolDenied(
                    f"calling {tool.name} was refused by {reason}",
                    tool=tool.name,
                    hint="Do not call it again with these arguments; answer without it or ask "
                    "the user.",
                )
            self.emit(
                ev.ToolCallApproved(
                    run_id=self.run_id,
                    round=self.round,
                    call_id=call.call_id,
                    tool=tool.name,
                    by=by,
                    rule=rule,
                )
            )
            self.guard.admit(tool, args)
        except RateLimited as exc:
            self._deny(call, exc, by="rate_limit")
            return None
        except ToolDenied as exc:
            self._deny(call, exc, by=by)
            return None
        except ToolRefused as exc:
            self._deny(call, exc, by="validator")
            return None
        except ToolError as exc:
            call.record("error", exc.to_model_text(), error_class=type(exc).__name__)
            return None
        return tool, args

    def _deny(self, call: CallRecord, exc: ToolError, *, by: str) -> None:
        call.record("denied", exc.to_model_text(), error_class=type(exc).__name__)
        self.emit(
            ev.ToolCallDenied(
                run_id=self.run_id,
                round=self.round,
                call_id=call.call_id,
                tool=call.name,
                by=by,
                reason=exc.message,
            )
        )

    async def _ask(
        self, call: CallRecord, tool: Tool, args: dict[str, Any]
    ) -> tuple[str, str | None]:
        """Ask the callback; returns (verdict, saved rule description or None)."""
        self.emit(
            ev.ApprovalRequested(
                run_id=self.run_id,
                round=self.round,
                call_id=call.call_id,
                tool=tool.name,
                arguments=args,
            )
        )
        if self.loop.approve is None:
            raise ToolDenied(
                f"{tool.name} needs approval and no one can be asked in this run",
                tool=tool.name,
                hint="Answer without this tool.",
            )
        scope = next((name for name, kind in tool.arg_kinds.items() if kind == "path"), None)
        request = ApprovalRequest(call.call_id, tool.name, args, scope_argument=scope)
        raw = self.loop.approve(request)
        answer = await raw if inspect.isawaitable(raw) else raw
        if isinstance(answer, str):
            answer = ApprovalAnswer(answer)
        saved = self.loop.policy.remember(tool.name, answer)
        verdict = "allow" if answer.answer in ("yes", "always") else "deny"
        return verdict, describe_rule(saved) if saved is not None else None

    async def _run_tools(self, runnable: Sequence[tuple[CallRecord, Tool, dict[str, Any]]]) -> None:
        if not runnable:
            return
        if len(runnable) == 1:
            await self._run_tool(*runnable[0])  # the common case needs no task group
            return
        limit = asyncio.Semaphore(self.agent.max_parallel_tools)

        async def one(call: CallRecord, tool: Tool, args: dict[str, Any]) -> None:
            async with limit:
                await self._run_tool(call, tool, args)

        async with asyncio.TaskGroup() as group:
            for call, tool, args in runnable:
                group.create_task(one(call, tool, args))

    async def _run_tool(self, call: CallRecord, tool: Tool, args: dict[str, Any]) -> None:
        timeout = tool.timeout or self.agent.tool_timeout_ms / 1000
        self.emit(
            ev.ToolCallStarted(
                run_id=self.run_id,
                round=self.round,
                call_id=call.call_id,
                tool=tool.name,
                arguments=args,
            )
        )
        started = self.loop._clock()
        error: ToolError | None = None
        try:
            async with deadlines.timeout(timeout):
                value = await tool.handler(args)
        except ToolError as exc:
            error = exc
        except SecurityViolation as exc:
            error = ToolRefused(exc.message, rule=exc.rule, tool=tool.name)
        except TimeoutError:
            error = ToolTimeoutError(
                f"{tool.name} did not finish within {timeout:g} s",
                tool=tool.name,
                hint="Ask for less work at once, or answer without it.",
            )
        except Exception as exc:
            error = ToolExecutionError(
                f"{tool.name} failed: {type(exc).__name__}: {exc}", tool=tool.name
            )
        seconds = self.loop._clock() - started
        if error is not None:
            call.record(
                "error",
                error.to_model_text(),
                error_class=type(error).__name__,
                seconds=seconds,
                executed=True,
            )
            return
        text = result_text(value)
        capped = cap_result(text, self.agent.max_tool_output_chars)
        call.record(
            "ok", capped, seconds=seconds, executed=True, truncated=len(capped) != len(text)
        )
        self.emit(
            ev.ToolCallFinished(
                run_id=self.run_id,
                round=self.round,
                call_id=call.call_id,
                tool=tool.name,
                seconds=seconds,
                result_chars=len(capped),
                truncated=call.truncated,
            )
        )


class _RecordedError(ToolError):
    """A failure already shown to the model, carried into the budget's final error."""
