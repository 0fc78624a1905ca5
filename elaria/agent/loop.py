"""The agent loop: prediction rounds, tool calls through the guard, history, events.

One :class:`AgentLoop` runs one task at a time over a :class:`Predictor` (the LM Studio layer:
``Failover.predict``, which owns timeouts, reconnects, breakers and the server-side cancel).

Per round: send the history (and the tool schemas, except on the last of ``max_iterations``
rounds, which goes without tools), stream the text, then handle the calls the model asked for:
repair malformed ones, pass each through the :class:`~elaria.agent.guard.Guard` in request order
(interactive approval happens here, one question at a time), run the admitted ones with at most
``max_parallel_tools`` at once and a timeout each, cap every result, and append the round to
history. A round without calls is the answer.

Errors the model caused become tool results (DESIGN.md, "Errors"); a tool's budget running out
ends the run with ToolBudgetExhausted, identical calls in a row with LoopDetected. A round that
fails with a transient backend error (or with every failover target down, e.g. while the pool
reconnects after a dropped connection) is retried from history (``ROUND_ATTEMPTS``); tools whose
results are recorded never run again. Context overflow sheds history once and retries.

Loop confinement: everything runs on the caller's event loop; ``on_event`` is called
synchronously, in order. Cancellation (of the task awaiting :meth:`AgentLoop.run`) cancels the
prediction (the LM Studio layer sends ``cancel``) or the running tools, records unfinished
calls as cancelled so history stays consistent, and re-raises ``CancelledError``. A sync tool
runs in a worker thread: a timeout or cancellation abandons its result, the thread finishes on
its own.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from loguru import logger

from elaria.agent import events as ev
from elaria.agent.approval import (
    ApprovalAnswer,
    ApprovalCallback,
    ApprovalPolicy,
    ApprovalRequest,
    describe_rule,
)
from elaria.agent.guard import ArgumentValidator, Guard, RateLimited, RetryBudget
from elaria.agent.repair import Repaired, looks_like_text_call, repair_call
from elaria.agent.state import CallRecord, RoundState, RunState, result_text
from elaria.agent.tools import ArgKind, Tool, ToolRegistry
from elaria.config import Settings
from elaria.errors import (
    AllTargetsFailed,
    ContextOverflowError,
    RunError,
    SecurityViolation,
    ToolCallMalformed,
    ToolDenied,
    ToolError,
    ToolExecutionError,
    ToolRefused,
    ToolTimeoutError,
    TransientBackendError,
)
from elaria.lmstudio.rounds import (
    FragmentCallback,
    MalformedCall,
    RequestedCall,
    RoundRequest,
    RoundResult,
)
from elaria.memory.history import ConversationHistory
from elaria.resilience.backoff import delays
from elaria.security import cap_result

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "AgentLoop",
    "EventCallback",
    "Predictor",
    "RunResult",
]

#: A round interrupted by a transient backend error is tried this often in all (the LM Studio
#: layer already retried inside; this covers a connection lost between its attempts).
ROUND_ATTEMPTS = 3
#: First pause before a round is retried; short, the pool reconnects in the background.
ROUND_RETRY_INITIAL_S = 0.2
#: Longest pause between round attempts.
ROUND_RETRY_CAP_S = 2.0

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful assistant that can call tools. Call a tool when you need facts you do "
    "not have; use only the tools listed, with arguments that match their schema. When a tool "
    "reports an error, fix the call or answer without it. When you know the answer, reply in "
    "plain text without calling a tool."
)

EventCallback = Callable[[ev.AgentEvent], None]


class Predictor(Protocol):
    """The LM Studio layer as the loop sees it (``elaria.lmstudio.failover.Failover``)."""

    async def predict(
        self, request: RoundRequest, *, on_fragment: FragmentCallback | None = None
    ) -> RoundResult: ...


@dataclass
class RunResult:
    """What a run produced. ``tool_calls`` are plain dicts (see ``CallRecord.summary``)."""

    run_id: str
    answer: str
    rounds: int
    tool_calls: list[dict[str, Any]]
    prompt_tokens: int
    predicted_tokens: int
    seconds: float
    host: str = ""
    model: str = ""
    round_details: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.predicted_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "answer": self.answer,
            "rounds": self.rounds,
            "tool_calls": self.tool_calls,
            "prompt_tokens": self.prompt_tokens,
            "predicted_tokens": self.predicted_tokens,
            "seconds": round(self.seconds, 6),
            "host": self.host,
            "model": self.model,
            "round_details": self.round_details,
        }


class AgentLoop:
    """Runs tasks against one history. Not re-entrant: one ``run`` at a time."""

    def __init__(
        self,
        predictor: Predictor,
        registry: ToolRegistry,
        settings: Settings,
        history: ConversationHistory,
        *,
        policy: ApprovalPolicy | None = None,
        validators: Mapping[ArgKind, ArgumentValidator] | None = None,
        approve: ApprovalCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
        restate_task: bool = False,
    ) -> None:
        self.predictor = predictor
        #: Append the task to each round's last tool result (helps very small models).
        self.restate_task = restate_task
        self.registry = registry
        self.settings = settings
        self.history = history
        self.policy = policy or ApprovalPolicy(settings.agent)
        self.validators = dict(validators or {})
        self.approve = approve
        self._clock = clock
        self._sleep = sleep
        self._busy = False

    async def run(
        self,
        task: str,
        *,
        on_event: EventCallback | None = None,
        run_id: str | None = None,
    ) -> RunResult:
        if self._busy:
            raise RunError(
                "this agent is already running a task",
                hint="Await the first run, or use a second Runtime.run (each gets its own loop).",
            )
        self._busy = True
        run = _Run(self, task, on_event, run_id or uuid.uuid4().hex)
        try:
            return await run.execute()
        except asyncio.CancelledError:
            run.emit(
                ev.RunFailed(
                    run_id=run.run_id,
                    round=run.round,
                    error_class="cancelled",
                    message="the run was cancelled",
                )
            )
            raise
        except Exception as exc:
            run.emit(
                ev.RunFailed(
                    run_id=run.run_id,
                    round=run.round,
                    error_class=type(exc).__name__,
                    message=str(exc),
                )
            )
            raise
        finally:
            self._busy = False


class _Run:
    """The state of one run; private so the loop object stays reusable."""

    def __init__(
        self, loop: AgentLoop, task: str, on_event: EventCallback | None, run_id: str
    ) -> None:
        self.loop = loop
        self.agent = loop.settings.agent
        self.task = task
        self.on_event = on_event
        self.run_id = run_id
        self.guard = Guard(
            loop.registry, self.agent, loop.policy, loop.validators, clock=loop._clock
        )
        self.budget = RetryBudget(self.agent.tool_retry_budget)
        self.state = RunState()
        self.started = loop._clock()
        self.prompt_tokens = 0
        self.predicted_tokens = 0
        self.host = ""
        self.model = ""
        self.round = 0
        self.round_details: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ events

    def emit(self, event: ev.AgentEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:  # an observer must never break the run
            logger.opt(exception=True).warning("on_event callback failed for {}", event.kind)

    # ------------------------------------------------------------------ the run

    async def execute(self) -> RunResult:
        history = self.loop.history
        if history.system_prompt is None and len(history) == 0:
            history.add(_text("system", self.agent.system_prompt or DEFAULT_SYSTEM_PROMPT))
        self._add_history(_text("user", self.task))
        self.emit(ev.RunStarted(run_id=self.run_id, task=self.task, tools=tuple(self._names())))
        max_rounds = self.agent.max_iterations
        for index in range(1, max_rounds + 1):
            self.round = index
            final = index == max_rounds or len(self.loop.registry) == 0
            result = await self._predict_round(final)
            calls = [] if final else self._requested_calls(result)
            if not calls:
                answer = result.text.strip()
                if not answer and result.tool_calls:
                    raise RunError(
                        f"the model still wanted tools after {max_rounds} rounds and gave no "
                        "answer",
                        hint="Raise agent.max_iterations, or make the task smaller.",
                    )
                self._add_history(_text("assistant", result.text))
                self.emit(ev.FinalAnswer(run_id=self.run_id, round=index, text=answer))
                return self._result(answer)
            await self._handle_calls(RoundState(index, _text_before_call(result), calls))
        raise AssertionError("unreachable: the last round is sent without tools")

    def _names(self) -> list[str]:
        return self.loop.registry.names()

    def _result(self, answer: str) -> RunResult:
        return RunResult(
            run_id=self.run_id,
            answer=answer,
            rounds=self.round,
            tool_calls=[c.summary() for c in self.state.calls],
            prompt_tokens=self.prompt_tokens,
            predicted_tokens=self.predicted_tokens,
            seconds=self.loop._clock() - self.started,
            host=self.host,
            model=self.model,
            round_details=self.round_details,
        )

    def _add_history(self, message: dict[str, Any]) -> None:
        history = self.loop.history
        expected = len(history) + (0 if message.get("role") == "system" else 1)
        history.add(message)
        # Fewer messages than expected means the history trimmed old ones to stay in bounds.
        dropped = expected - len(history)
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

    # ------------------------------------------------------------------ prediction

    async def _predict_round(self, final: bool) -> RoundResult:
        schemas = None if final else self.loop.registry.lmstudio_schemas()
        lm = self.loop.settings.lmstudio
        pauses = delays(ROUND_RETRY_INITIAL_S, ROUND_RETRY_CAP_S)
        shed = False
        attempt = 0
        while True:
            attempt += 1
            request = RoundRequest(
                messages=self.loop.history.get_all(),
                tools=schemas,
                temperature=lm.temperature,
                max_tokens=lm.max_tokens,
                request_id=f"{self.run_id}-{self.round}-{attempt}",
            )
            self.emit(
                ev.RoundStarted(
                    run_id=self.run_id, round=self.round, tools_enabled=not final, attempt=attempt
                )
            )
            started = self.loop._clock()
            try:
                result = await self.loop.predictor.predict(request, on_fragment=self._fragment)
            except ContextOverflowError:
                if shed:
                    raise
                shed = True
                dropped = self.loop.history.shed()
                self.emit(
                    ev.HistoryTrimmed(
                        run_id=self.run_id,
                        round=self.round,
                        dropped_messages=dropped,
                        tokens=self.loop.history.stats()["tokens"],
                    )
                )
                continue
            except ToolCallMalformed as exc:
                # The server could not even frame the call: hand it to the repair step.
                result = RoundResult(text="", malformed=[MalformedCall(exc.message, exc.raw)])
            except (TransientBackendError, AllTargetsFailed) as exc:
                if attempt >= ROUND_ATTEMPTS:
                    raise
                pause = next(pauses)
                self.emit(
                    ev.ResilienceEvent(
                        run_id=self.run_id,
                        round=self.round,
                        action="retry",
                        detail={
                            "attempt": attempt,
                            "error_class": type(exc).__name__,
                            "message": exc.message,
                            "delay_s": round(pause, 3),
                        },
                    )
                )
                await self.loop._sleep(pause)
                continue
            self._account(result, self.loop._clock() - started, attempt)
            return result

    def _fragment(self, text: str) -> None:
        if text:
            self.emit(ev.TextFragment(run_id=self.run_id, round=self.round, text=text))

    def _account(self, result: RoundResult, seconds: float, attempt: int) -> None:
        for item in result.events:
            action = str(item.get("action") or item.get("kind") or "event")
            self.emit(
                ev.ResilienceEvent(
                    run_id=self.run_id, round=self.round, action=action, detail=dict(item)
                )
            )
        self.prompt_tokens += result.prompt_tokens
        self.predicted_tokens += result.predicted_tokens
        self.host, self.model = result.host or self.host, result.model or self.model
        calls = len(result.tool_calls) + len(result.malformed)
        self.round_details.append(
            {
                "round": self.round,
                "attempts": attempt,
                "seconds": round(seconds, 6),
                "time_to_first_token_s": result.time_to_first_token_s,
                "prompt_tokens": result.prompt_tokens,
                "predicted_tokens": result.predicted_tokens,
                "tool_calls": calls,
                "stop_reason": result.stop_reason,
                "host": result.host,
                "model": result.model,
                "provider": result.provider,
            }
        )
        self.emit(
            ev.RoundFinished(
                run_id=self.run_id,
                round=self.round,
                text=result.text,
                tool_calls=calls,
                prompt_tokens=result.prompt_tokens,
                predicted_tokens=result.predicted_tokens,
                seconds=seconds,
                host=result.host,
                model=result.model,
                stop_reason=result.stop_reason,
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
        self.emit(
            ev.ToolCallRequested(
                run_id=self.run_id,
                round=self.round,
                call_id=call_id,
                tool=req.name,
                arguments=record.arguments,
            )
        )
        if args is not None and not isinstance(args, Mapping):
            record.raw_arguments = args
        return record

    def _from_text(self, raw: str | None, *, error: str | None) -> CallRecord:
        call_id = self._new_id()
        try:
            fixed: Repaired = repair_call(raw, self.loop.registry, error=error)
        except ToolError as exc:
            name = exc.tool or "unparsed_tool_call"
            record = CallRecord(call_id, name, {}, raw=raw)
            self.emit(
                ev.ToolCallRequested(
                    run_id=self.run_id, round=self.round, call_id=call_id, tool=name, arguments={}
                )
            )
            record.record("error", exc.to_model_text(), error_class=type(exc).__name__)
            return record
        record = CallRecord(call_id, fixed.name, fixed.arguments, raw=raw)
        record.repaired_by = fixed.method
        self.emit(
            ev.ToolCallRequested(
                run_id=self.run_id,
                round=self.round,
                call_id=call_id,
                tool=fixed.name,
                arguments=fixed.arguments,
            )
        )
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
            async with asyncio.timeout(timeout):
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


def _text(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": text}]}


def _text_before_call(result: RoundResult) -> str:
    """The round's text, without a tool call that leaked into it."""
    text = result.text
    if result.tool_calls or result.malformed or not looks_like_text_call(text):
        return text
    cut = min(i for i in (text.find("<tool_call>"), text.find("<function=")) if i >= 0)
    return text[:cut].rstrip()
