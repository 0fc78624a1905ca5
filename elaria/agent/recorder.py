"""Telemetry for runs: the inference event log per round and the audit record per run.

:class:`Telemetry` owns the sinks for a Runtime (started and closed with it).
:meth:`Telemetry.recorder` gives a :class:`RunRecorder` per run that

* wraps the predictor, so every prediction round — successful or failed — becomes one
  :class:`~elaria.telemetry.events.InferenceEvent` line, with the run id and request id;
* watches the run's agent events and fills the audit ``RequestContext`` as the run goes
  (tool calls, denials, repairs, retries, trims);
* writes the audit record in :meth:`RunRecorder.finish`, which the runtime calls in a
  ``finally``-equivalent path for success, failure and cancellation alike.

Logging: :meth:`Telemetry.start` sets up Elaria's logging
(:func:`~elaria.telemetry.logging.setup_logging`: the redaction patcher, ``diagnose=False``, the
JSONL files) when nothing configured loguru yet — only loguru's own default handler, or none —
so a library user gets the same redacted logs as the CLI. A configuration someone else made (the
CLI's, the caller's own ``logger.add``) is left alone. The last Telemetry that set logging up puts
back a plain stderr handler when it closes, leaving loguru as it found it. Each run's
:meth:`RunRecorder.log_context` makes every log record of the run carry its id.

Recording never disturbs a run: sinks drop and count instead of raising. Loop-confined.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from loguru import logger

from elaria.agent import events as ev
from elaria.agent.loop import Predictor, RunResult
from elaria.config import Settings
from elaria.lmstudio.rounds import FragmentCallback, RoundRequest, RoundResult
from elaria.telemetry.events import EventLog
from elaria.telemetry.ledger import AuditLedger, RequestContext
from elaria.telemetry.logging import logging_stats, reset_logging, run_context, setup_logging

if TYPE_CHECKING:
    from loguru import Message

__all__ = ["RunRecorder", "Telemetry", "logging_is_configured"]


class Telemetry:
    def __init__(self, settings: Settings, *, configure_logging: bool | None = None) -> None:
        """``configure_logging``: True always sets up Elaria's logging, False never, None (the
        default) only when nothing configured loguru yet (see the module docstring)."""
        self.settings = settings
        self.events: EventLog | None = (
            EventLog.from_settings(settings) if settings.telemetry.events else None
        )
        self.ledger = _open_ledger(settings)
        self._configure_logging = configure_logging
        self.owns_logging = False

    async def start(self) -> None:
        self.owns_logging = _claim_logging(self.settings, self._configure_logging)
        if self.events is not None:
            await self.events.start()
        if self.ledger is not None:
            await self.ledger.start()

    async def close(self) -> None:
        try:
            if self.events is not None:
                await self.events.aclose()
            if self.ledger is not None:
                await self.ledger.aclose()
        finally:
            if self.owns_logging:
                self.owns_logging = False
                _release_logging()

    def stats(self) -> dict[str, Any]:
        """``{"events", "ledger", "logs"}``, each with its own ``status`` and ``reasons``."""
        data: dict[str, Any] = {}
        if self.events is not None:
            data["events"] = self.events.stats()
        if self.ledger is not None:
            data["ledger"] = self.ledger.stats()
        data["logs"] = logging_stats()
        return data

    def recorder(self, run_id: str, task: str, *, provider: str) -> RunRecorder:
        return RunRecorder(self, run_id, task, provider)


class RunRecorder:
    def __init__(self, telemetry: Telemetry, run_id: str, task: str, provider: str) -> None:
        self.telemetry = telemetry
        self.run_id = run_id
        self.provider = provider
        self.started = time.monotonic()
        self.context = _new_context(telemetry, run_id, task)
        self.rounds = 0
        # Bound once: several agent events per round reach it.
        self._record_event = None if self.context is None else self.context.observe

    @contextlib.contextmanager
    def log_context(self) -> Iterator[str]:
        """Log records made inside (and in tasks started inside) carry this run's id."""
        with run_context(self.run_id) as run_id:
            yield run_id

    # ------------------------------------------------------------------ rounds

    def wrap(self, predictor: Predictor) -> Predictor:
        return _RecordingPredictor(predictor, self)

    def round_ok(self, request: RoundRequest, result: RoundResult, seconds: float) -> RoundResult:
        self.rounds += 1
        if result.provider != self.provider:
            result = replace(result, provider=self.provider)
        log = self.telemetry.events
        if log is not None:
            log.round(result, request_id=request.request_id, run_id=self.run_id, latency_s=seconds)
        if self.context is not None:
            try:
                self.context.record_model_call(
                    result=result, seconds=seconds, request_id=request.request_id
                )
            except Exception:
                logger.opt(exception=True).bind(kind="telemetry").warning(
                    "audit {} failed", "record_model_call"
                )
        return result

    def round_failed(self, request: RoundRequest, exc: BaseException, seconds: float) -> None:
        self.rounds += 1
        log = self.telemetry.events
        host = getattr(exc, "host", None) or ""
        model = getattr(exc, "model", None) or ""
        if log is not None:
            log.failed_round(
                exc,
                host=host,
                model=model,
                latency_s=seconds,
                provider=self.provider,
                request_id=request.request_id,
                run_id=self.run_id,
            )
        _call(
            self.context,
            "record_model_error",
            error=exc,
            seconds=seconds,
            request_id=request.request_id,
        )

    # ------------------------------------------------------------------ run

    def on_event(self, event: ev.AgentEvent) -> None:
        """Feed ``event`` to the audit record. Never raises (a failure is logged)."""
        if self._record_event is None:
            return
        try:
            self._record_event(event)
        except Exception:
            logger.opt(exception=True).bind(kind="telemetry").warning(
                "audit {} failed", "record_agent_event"
            )

    def finish(
        self,
        result: RunResult | None,
        *,
        error: BaseException | None = None,
        cancelled: bool = False,
    ) -> None:
        ledger = self.telemetry.ledger
        if ledger is None or self.context is None:
            return
        try:
            if cancelled:
                self.context.finish_cancelled()
            elif error is not None:
                self.context.finish_failed(error)
            elif result is not None:
                self.context.finish_ok(result.answer, host=result.host, model=result.model)
            ledger.write(self.context)
        except Exception:  # the audit must never break a run
            logger.opt(exception=True).bind(kind="telemetry").warning("audit record failed")


class _RecordingPredictor:
    def __init__(self, inner: Predictor, recorder: RunRecorder) -> None:
        self.inner = inner
        self.recorder = recorder

    async def predict(
        self, request: RoundRequest, *, on_fragment: FragmentCallback | None = None
    ) -> RoundResult:
        started = time.monotonic()
        try:
            result = await self.inner.predict(request, on_fragment=on_fragment)
        except (Exception, asyncio.CancelledError) as exc:
            # A cancelled round was still a request to the model: it gets its line too.
            self.recorder.round_failed(request, exc, time.monotonic() - started)
            raise
        return self.recorder.round_ok(request, result, time.monotonic() - started)


# ------------------------------------------------------------------ the audit ledger (optional)


def _open_ledger(settings: Settings) -> AuditLedger | None:
    return AuditLedger.from_settings(settings) if settings.telemetry.ledger else None


def _new_context(telemetry: Telemetry, run_id: str, task: str) -> RequestContext | None:
    if telemetry.ledger is None:
        return None
    return telemetry.ledger.begin(task, run_id=run_id)


def _call(target: Any, method: str, **kwargs: Any) -> None:
    if target is None:
        return
    try:
        getattr(target, method)(**kwargs)
    except Exception:
        logger.opt(exception=True).bind(kind="telemetry").warning("audit {} failed", method)


# ------------------------------------------------------------------ logging for library users

#: Telemetry instances sharing the logging setup one of them made; the last one undoes it.
_logging_users = 0
#: Handler ids that are loguru's stock stderr handler (id 0 at import; the one we put back).
_stock_handlers: set[int] = {0}


def logging_is_configured() -> bool:
    """True when loguru has a handler other than its stock stderr one (someone chose sinks)."""
    handlers = getattr(getattr(logger, "_core", None), "handlers", None)
    if not isinstance(handlers, dict):
        return True  # an unknown loguru: assume someone configured it, and leave it alone
    return bool(set(handlers) - _stock_handlers)


def _claim_logging(settings: Settings, configure: bool | None) -> bool:
    """Set logging up if asked (or, with None, if nobody did); True if this caller must release."""
    global _logging_users
    if configure is False:
        return False
    if _logging_users > 0:  # another Runtime set it up already: share it
        _logging_users += 1
        return True
    if configure is None and logging_is_configured():
        return False
    setup_logging(settings.logging)
    _logging_users = 1
    return True


def _to_current_stderr(message: Message) -> None:
    sys.stderr.write(message)


def _release_logging() -> None:
    global _logging_users
    _logging_users -= 1
    if _logging_users > 0:
        return
    reset_logging()
    # Put back what loguru starts with, resolving sys.stderr at write time (it may be swapped).
    handler = logger.add(_to_current_stderr, level="DEBUG")
    _stock_handlers.clear()
    _stock_handlers.add(handler)
