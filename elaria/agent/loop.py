"""The agent loop: prediction rounds, tool calls through the guard, history, events.

One :class:`AgentLoop` runs one task at a time over a :class:`Predictor` (the LM Studio layer:
``Failover.predict``, which owns timeouts, reconnects, breakers and the server-side cancel).

Per round: send the history (and the tool schemas, except on the last of ``max_iterations``
rounds, which goes without tools), stream the text, then handle the calls the model asked for
(:mod:`elaria.agent.dispatch`):
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
import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from elaria.agent import events as ev
from elaria.agent.approval import (
    ApprovalCallback,
    ApprovalPolicy,
)
from elaria.agent.dispatch import CallDispatcher
from elaria.agent.guard import ArgumentValidator, Guard, RetryBudget
from elaria.agent.repair import looks_like_text_call
from elaria.agent.state import RoundState, RunState
from elaria.agent.tools import ArgKind, ToolRegistry
from elaria.config import Settings
from elaria.errors import (
    AllTargetsFailed,
    ContextOverflowError,
    RunError,
    ToolCallMalformed,
    TransientBackendError,
)
from elaria.lmstudio.rounds import (
    FragmentCallback,
    MalformedCall,
    RoundRequest,
    RoundResult,
)
from elaria.memory.history import ConversationHistory
from elaria.resilience.backoff import delays
from elaria.telemetry.logging import new_id

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
        run = _Run(self, task, on_event, run_id or new_id())
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


class _Run(CallDispatcher):
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

    # ------------------------------------------------------------------ the run

    async def execute(self) -> RunResult:
        history = self.loop.history
        # len() first: system_prompt re-reads the prompt text, and a non-empty history skips it.
        if len(history) == 0 and history.system_prompt is None:
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

    # ------------------------------------------------------------------ prediction

    async def _predict_round(self, final: bool) -> RoundResult:
        schemas = None if final else self.loop.registry.lmstudio_schemas()
        lm = self.loop.settings.lmstudio
        pauses: Iterator[float] | None = None  # made at the first retry (rounds rarely fail)
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
                if pauses is None:
                    pauses = delays(ROUND_RETRY_INITIAL_S, ROUND_RETRY_CAP_S)
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


def _text(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": text}]}


def _text_before_call(result: RoundResult) -> str:
    """The round's text, without a tool call that leaked into it."""
    text = result.text
    if result.tool_calls or result.malformed or not looks_like_text_call(text):
        return text
    cut = min(i for i in (text.find("<tool_call>"), text.find("<function=")) if i >= 0)
    return text[:cut].rstrip()
