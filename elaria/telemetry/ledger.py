"""The audit ledger: one record per agent run, written even when the run fails or is cancelled.

The agent loop fills a :class:`RequestContext` as the run goes, and hands it to the ledger in a
``finally``::

    ledger = AuditLedger.from_settings(settings)   # path checked: ConfigError if outside
    await ledger.start()

    ctx = ledger.begin(task, run_id=run_id)      # hashes and previews the prompt
    try:
        ...
        ctx.model_call(host, model, latency_s=dt, tokens_in=p, tokens_out=c, request_id=rid)
        ctx.event("failover", from_host=a, to_host=b)          # retries, reconnects, breaker
        ctx.event("repair", tool="read_file", method="json")   # trips, trims, refusals, approvals
        ctx.tool_call("read_file", arguments, "ok", duration_s=0.01)
        answer = ...
        ctx.finish(answer=answer)            # success, or mitigated_success after resilience
    except BaseException as exc:
        ctx.finish(error=exc)                # failure, or cancelled for CancelledError
        raise
    finally:
        ledger.record(ctx)                   # never blocks, never raises

or, equivalently, ``async with ledger.request(task, run_id=run_id) as ctx: ...`` (finishes and
records on the way out, outcome taken from the exception if any), or pass ``ctx.observe`` as the
agent loop's ``on_event`` callback: it maps the loop's typed events (rounds, tool calls, repairs,
approvals, denials, resilience events, trims, the final answer, the failure) onto the same calls.
The runtime's run recorder (``elaria.agent.recorder``) can use its own vocabulary, provided as
thin adapters: ``ledger.begin(task, run_id=...)`` for the context, ``ctx.record_model_call(
result=..., seconds=...)``, ``ctx.record_model_error(error=..., seconds=...)``,
``ctx.record_agent_event(event=...)``, ``ctx.finish_ok/finish_failed/finish_cancelled`` and
``ledger.write(ctx)``.

Record shape (``record: "request"``, JSON): schema_version, run_id, request_id, started/finished
(ISO 8601 UTC), latency_ms, prompt_sha256, prompt_preview (redacted, then truncated to
``telemetry.prompt_preview_chars``; whole only with ``telemetry.ledger_full_text``),
answer_preview (same, ``answer_preview_chars``), outcome (``success`` | ``mitigated_success`` |
``failure`` | ``cancelled``), error_class / error (redacted), model_calls (count), final_host,
final_model, tokens_in/out, and three chronological lists sharing one ``seq`` counter (so their
merged order is the order things happened): ``calls`` (each model request), ``events``
(resilience: retry, reconnect, breaker, failover, repair, trim, validator_refusal, approval,
denial …) and ``tool_calls`` (name, redacted arguments preview, outcome, duration).
``ledger.record_run(...)`` adds a ``record: "run"`` summary for a run that spans several
requests (a chat session).

The ledger file is JSONL (``telemetry.ledger_file``, rotated like the event log at
``logging.rotation_mb``, 10 older files kept), optionally mirrored into SQLite
(``telemetry.ledger_sqlite``: ``audit.sqlite`` beside it, tables ``requests`` and ``runs``). It
shares the writer of :mod:`elaria.telemetry.writer`: a bounded queue, one writer task, whole
lines, failures logged once and counted in ``stats()``.

Threads: a RequestContext belongs to the task that runs the request (plain object, no lock).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import TYPE_CHECKING, Any, Final, Literal, cast

from loguru import logger

from elaria.errors import RunCancelled
from elaria.security.redact import redact, redact_text
from elaria.telemetry.events import ROTATED_FILES_KEPT
from elaria.telemetry.ledger_observe import OBSERVERS
from elaria.telemetry.ledger_sqlite import SqliteLedgerStore
from elaria.telemetry.logging import current_run_id, new_id, request_context, run_context
from elaria.telemetry.paths import resolve_telemetry_path
from elaria.telemetry.writer import JsonlFile, LineWriter, encode_line

if TYPE_CHECKING:
    from elaria.config import Settings
    from elaria.lmstudio.rounds import RoundResult

__all__ = [
    "LEDGER_SCHEMA_VERSION",
    "MITIGATING_EVENTS",
    "AuditLedger",
    "Outcome",
    "RequestContext",
    "preview",
]

LEDGER_SCHEMA_VERSION: Final = 1
Outcome = Literal["success", "mitigated_success", "failure", "cancelled"]
OUTCOMES: Final[tuple[Outcome, ...]] = ("success", "mitigated_success", "failure", "cancelled")
#: Event kinds that mean the run needed help to succeed (success becomes mitigated_success).
MITIGATING_EVENTS: Final = frozenset(
    {
        "retry",
        "reconnect",
        "failover",
        "breaker",
        "repair",
        "trim",
        "validator_refusal",
        "denial",
        "tool_error",
        "compaction",
    }
)
#: Bounds on one record's lists: a runaway run must not make a multi-megabyte line.
MAX_ENTRIES: Final = 1_000
#: Queued entries (see :meth:`RequestContext.settle`) are applied at once past this many.
_QUEUED_MAX: Final = 256
_TRUNCATION_MARK: Final = "…[truncated]"


#: ``json.dumps(ensure_ascii=False, default=str, sort_keys=True)`` and the same without
#: ``sort_keys``, made once instead of on every call (encoders keep no state between calls).
_PREVIEW_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, default=str, sort_keys=True)
_RECORD_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, default=str)


def preview(value: Any, limit: int | None) -> str:
    """Redacted text of ``value`` (JSON for structures), cut to ``limit`` characters.

    Redaction comes first, so a secret cut in half by truncation is never left recognisable.
    """
    text = redact_text(value) if isinstance(value, str) else _PREVIEW_ENCODER.encode(redact(value))
    if limit is not None and len(text) > limit:
        return text[:limit] + _TRUNCATION_MARK
    return text


@dataclass(frozen=True, slots=True)
class _Arguments:
    """A tool's arguments as given, until the record turns them into their preview."""

    value: Any


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass
class RequestContext:
    """What one request (an agent run of one task) did; see the module docstring.

    Cheap to fill: the methods below capture plain values (and the caller's objects, such as a
    tool's arguments: do not change them afterwards); the prompt and answer previews and the
    lists' redaction are made when read — by :meth:`to_record`, which the ledger's writer calls
    with its batch. What a run reports on its hot path — :meth:`observe`,
    :meth:`record_model_call` and :meth:`finish_ok` — is queued with its time and applied, in
    order, by :meth:`settle`: :meth:`to_record` and every other method settle first, so the
    record is the same as if each had been applied at once. The list fields and ``outcome``
    show queued entries only once settled."""

    run_id: str | None
    request_id: str
    prompt: str = field(repr=False)
    started_wall: float
    started: float
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    prompt_preview_chars: int | None = 512
    answer_preview_chars: int | None = 1_024
    arguments_preview_chars: int | None = 512
    outcome: Outcome | None = None
    error_class: str | None = None
    error: str | None = None
    finished: float | None = None
    finished_wall: float | None = None
    final_host: str | None = None
    final_model: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    dropped_entries: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    _seq: int = 0
    _pending_args: dict[str, Any] = field(default_factory=dict)
    _answer: str | None = field(default=None, repr=False)
    #: Entries the run's hot path handed over (observe, record_model_call, finish_ok), applied
    #: in order by :meth:`settle`; each with the clock reading it gets as its time.
    _queued: list[tuple[float, Callable[[RequestContext, Any], None], Any]] = field(
        default_factory=list, repr=False
    )
    _now: float | None = field(default=None, repr=False)
    #: What :meth:`observe` maps; without ``round_finished`` once the rounds come directly.
    _observers: Mapping[str, Callable[[RequestContext, Any], None]] = field(
        default_factory=lambda: OBSERVERS, repr=False
    )

    @classmethod
    def begin(
        cls,
        prompt: str,
        *,
        run_id: str | None = None,
        request_id: str | None = None,
        prompt_preview_chars: int | None = 512,
        answer_preview_chars: int | None = 1_024,
        arguments_preview_chars: int | None = 512,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        **meta: Any,
    ) -> RequestContext:
        """Start the record. ``None`` for a preview size keeps the whole (redacted) text."""
        return cls(
            run_id=run_id or current_run_id(),
            request_id=request_id or new_id(),
            prompt=prompt,
            started_wall=wall_clock(),
            started=clock(),
            clock=clock,
            wall_clock=wall_clock,
            prompt_preview_chars=prompt_preview_chars,
            answer_preview_chars=answer_preview_chars,
            arguments_preview_chars=arguments_preview_chars,
            meta=dict(meta),
        )

    @property
    def prompt_sha256(self) -> str:
        return hashlib.sha256(self.prompt.encode("utf-8", "surrogatepass")).hexdigest()

    @property
    def prompt_preview(self) -> str:
        """The prompt, redacted, then cut to ``prompt_preview_chars``."""
        return preview(self.prompt, self.prompt_preview_chars)

    @property
    def answer_preview(self) -> str | None:
        """The answer, redacted, then cut to ``answer_preview_chars`` (None before one)."""
        return None if self._answer is None else preview(self._answer, self.answer_preview_chars)

    # ------------------------------------------------------------------ filling it in

    def event(self, kind: str, **data: Any) -> None:
        """A resilience event (retry, reconnect, breaker, failover, repair, trim,
        validator_refusal, approval, denial …), in the order they happen."""
        self.settle()
        self._append(self.events, {"kind": kind, **data})

    def model_call(
        self,
        host: str,
        model: str,
        *,
        latency_s: float | None = None,
        tokens_in: int = 0,
        tokens_out: int = 0,
        success: bool = True,
        error_class: str | None = None,
        request_id: str | None = None,
        provider: str | None = None,
    ) -> None:
        """One model request (prediction round); the last successful one sets final host/model."""
        self.settle()
        if success:
            self.final_host, self.final_model = host, model
            self.tokens_in += max(0, tokens_in)
            self.tokens_out += max(0, tokens_out)
        self._append(
            self.calls,
            {
                "host": host,
                "model": model,
                "provider": provider,
                "latency_ms": None if latency_s is None else round(latency_s * 1000, 3),
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "success": success,
                "error_class": error_class,
                "request_id": request_id,
            },
        )

    def tool_call(
        self,
        name: str,
        arguments: Any,
        outcome: str,
        duration_s: float | None = None,
        *,
        error_class: str | None = None,
        call_id: str | None = None,
    ) -> None:
        """A tool call: ``outcome`` is ``ok``, ``error``, ``refused``, ``denied``, ``timeout``,
        ``cancelled`` …; ``arguments`` are redacted and truncated into ``arguments_preview`` when
        the record is built."""
        self.settle()
        self._append(
            self.tool_calls,
            {
                "name": name,
                "call_id": call_id,
                "arguments_preview": _Arguments(arguments),
                "outcome": outcome,
                "duration_ms": None if duration_s is None else round(duration_s * 1000, 3),
                "error_class": error_class,
            },
        )

    def finish(
        self,
        outcome: Outcome | None = None,
        *,
        answer: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Close the record. Without ``outcome``: ``cancelled`` for CancelledError/RunCancelled,
        ``failure`` for any other error, else ``mitigated_success`` when a mitigating event
        happened, else ``success``. Calling it again only fills what is still missing."""
        self.settle()
        self._mark_finished()
        if answer is not None and self._answer is None:
            self._answer = answer
        if error is not None and self.error_class is None:
            self.error_class = type(error).__name__
            self.error = preview(str(error), self.answer_preview_chars)
        if self.outcome is None:
            self.outcome = outcome or self._infer_outcome(error)

    def set_answer(self, text: str) -> None:
        """The answer as it is known (the final one wins); previewed when read."""
        self.settle()
        self._answer = text

    def set_error(self, error_class: str, message: str) -> None:
        """The error that ended the run, by class name and message (redacted here)."""
        self.settle()
        self.error_class = error_class
        self.error = preview(message, self.answer_preview_chars)

    def _infer_outcome(self, error: BaseException | None) -> Outcome:
        if isinstance(error, asyncio.CancelledError | RunCancelled):
            return "cancelled"
        if error is not None or self.error_class is not None:
            return "cancelled" if self.error_class == "cancelled" else "failure"
        if any(e["kind"] in MITIGATING_EVENTS for e in self.events):
            return "mitigated_success"
        return "success"

    # ------------------------------------------------------------------ agent events

    def observe(self, event: Any) -> None:
        """An ``on_event`` callback for :class:`elaria.agent.loop.AgentLoop`: maps its typed
        events (objects, or their ``to_dict()`` form) by ``kind`` onto :meth:`model_call`,
        :meth:`event`, :meth:`tool_call` and :meth:`finish`. Unknown kinds are ignored.
        ``round_finished`` is ignored once :meth:`record_model_call` has fed the context, so a
        round is never counted twice."""
        kind = getattr(event, "kind", None)
        if type(kind) is not str and not isinstance(kind, str):
            if kind is None and isinstance(event, Mapping):
                self.observe(SimpleNamespace(**event))
            return
        handler = self._observers.get(kind)
        if handler is not None:
            self._queue(handler, event)

    def settle(self) -> None:
        """Apply the queued entries now, in order, each at the time it was queued. An entry
        that fails to apply is counted in ``dropped_entries`` and logged; the others stay."""
        queued = self._queued
        if not queued:
            return
        self._queued = []
        try:
            for at, apply, payload in queued:
                self._now = at
                try:
                    apply(self, payload)
                except Exception:
                    self.dropped_entries += 1
                    logger.opt(exception=True).bind(kind="telemetry").warning(
                        "audit entry {} could not be recorded", getattr(apply, "__name__", apply)
                    )
        finally:
            self._now = None

    def _queue(self, apply: Callable[[RequestContext, Any], None], payload: Any) -> None:
        self._queued.append((self.clock(), apply, payload))
        if len(self._queued) >= _QUEUED_MAX:
            self.settle()

    # The vocabulary of the runtime's run recorder (``elaria.agent.recorder``), as thin adapters.

    def record_model_call(
        self, *, result: RoundResult, seconds: float, request_id: str | None = None
    ) -> None:
        """A round came back: host, model, tokens and latency from its RoundResult.
        ``request_id`` (the round's) links the entry to its inference event line."""
        self._observers = _DIRECT_OBSERVERS
        self._queue(_apply_model_call, (result, seconds, request_id))

    def record_model_error(
        self, *, error: BaseException, seconds: float, request_id: str | None = None
    ) -> None:
        """A round failed; host and model come from the error when it carries them."""
        self._observers = _DIRECT_OBSERVERS
        self.model_call(
            str(getattr(error, "host", None) or ""),
            str(getattr(error, "model", None) or ""),
            latency_s=seconds,
            success=False,
            error_class=type(error).__name__,
            request_id=request_id,
        )

    def record_agent_event(self, *, event: Any) -> None:
        self.observe(event)

    def finish_ok(self, answer: str, *, host: str | None = None, model: str | None = None) -> None:
        """:meth:`finish` with the answer (after the queued entries; timed now)."""
        self._mark_finished()
        self._queue(_apply_finish_ok, (answer, host, model))

    def finish_failed(self, error: BaseException) -> None:
        self.finish(error=error)

    def finish_cancelled(self) -> None:
        self.finish("cancelled")

    # ------------------------------------------------------------------ the record

    @property
    def latency_ms(self) -> float | None:
        if self.finished is None:
            return None
        return round((self.finished - self.started) * 1000, 3)

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready, redacted ledger record (finishes the context if still open)."""
        self.settle()
        if self.outcome is None:
            self.finish()
        record = {
            "record": "request",
            "schema_version": LEDGER_SCHEMA_VERSION,
            "run_id": self.run_id,
            "request_id": self.request_id,
            "started": _iso(self.started_wall),
            "finished": _iso(self.finished_wall or self.started_wall),
            "latency_ms": self.latency_ms,
            "outcome": self.outcome,
            "error_class": self.error_class,
            "error": self.error,
            "prompt_sha256": self.prompt_sha256,
            "prompt_preview": self.prompt_preview,
            "answer_preview": self.answer_preview,
            "model_calls": len(self.calls),
            "final_host": self.final_host,
            "final_model": self.final_model,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "calls": redact(self.calls),
            "events": redact(self.events),
            "tool_calls": [self._tool_entry(entry) for entry in self.tool_calls],
            "dropped_entries": self.dropped_entries,
            "meta": redact(self.meta),
        }
        # Previews and errors are redacted text already; hosts and model names are the only
        # other free text.
        for key in ("final_host", "final_model"):
            value = record[key]
            if isinstance(value, str):
                record[key] = redact_text(value)
        return record

    def _append(self, target: list[dict[str, Any]], entry: dict[str, Any]) -> None:
        """Keep ``entry`` as given (redacted by :meth:`to_record`), numbered and timed now."""
        self._seq += 1
        if len(self.calls) + len(self.events) + len(self.tool_calls) >= MAX_ENTRIES:
            self.dropped_entries += 1
            return
        now = self.clock() if self._now is None else self._now
        t_ms = round((now - self.started) * 1000, 3)
        target.append({"seq": self._seq, "t_ms": t_ms, **entry})

    def _mark_finished(self) -> None:
        if self.finished is None:
            self.finished = self.clock()
            self.finished_wall = self.wall_clock()

    def _tool_entry(self, entry: dict[str, Any]) -> dict[str, Any]:
        arguments = entry.get("arguments_preview")
        if isinstance(arguments, _Arguments):
            entry = {**entry, "arguments_preview": None}
            redacted: dict[str, Any] = redact(entry)
            redacted["arguments_preview"] = preview(arguments.value, self.arguments_preview_chars)
            return redacted
        return cast(dict[str, Any], redact(entry))


#: :data:`OBSERVERS` for a context fed its rounds by :meth:`RequestContext.record_model_call`
#: (or ``record_model_error``): the loop's ``round_finished`` would count each round twice.
_DIRECT_OBSERVERS: Final = MappingProxyType(
    {kind: apply for kind, apply in OBSERVERS.items() if kind != "round_finished"}
)


def _apply_model_call(ctx: RequestContext, payload: tuple[RoundResult, float, str | None]) -> None:
    result, seconds, request_id = payload
    ctx.model_call(
        result.host,
        result.model,
        latency_s=seconds,
        tokens_in=result.prompt_tokens,
        tokens_out=result.predicted_tokens,
        provider=result.provider,
        request_id=request_id,
    )


def _apply_finish_ok(ctx: RequestContext, payload: tuple[str, str | None, str | None]) -> None:
    answer, host, model = payload
    if host:
        ctx.final_host = host
    if model:
        ctx.final_model = model
    ctx.finish(answer=answer)


# --------------------------------------------------------------------------- the ledger


class AuditLedger:
    """Append-only JSONL (and optional SQLite) of request and run records."""

    def __init__(
        self,
        path: str | Path,
        *,
        sqlite: bool = False,
        queue_size: int = 10_000,
        prompt_preview_chars: int | None = 512,
        answer_preview_chars: int | None = 1_024,
        arguments_preview_chars: int | None = 512,
        rotate_bytes: int | None = None,
        keep: int = ROTATED_FILES_KEPT,
        setting: str = "telemetry.ledger_file",
    ) -> None:
        self.path = resolve_telemetry_path(path, setting=setting)
        self.sqlite_path = self.path.with_suffix(".sqlite") if sqlite else None
        self.prompt_preview_chars = prompt_preview_chars
        self.answer_preview_chars = answer_preview_chars
        self.arguments_preview_chars = arguments_preview_chars
        self._store = SqliteLedgerStore(self.sqlite_path) if self.sqlite_path else None
        self._writer = LineWriter(
            JsonlFile(self.path, max_bytes=rotate_bytes, keep=keep, on_failure=_report_failure),
            queue_size=queue_size,
            on_batch=self._store.write_lines if self._store else None,
            on_failure=_report_failure,
        )
        self._not_running_reported = False

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditLedger:
        t = settings.telemetry
        full = t.ledger_full_text
        return cls(
            settings.logging.log_dir / t.ledger_file,
            sqlite=t.ledger_sqlite,
            queue_size=t.queue_size,
            prompt_preview_chars=None if full else t.prompt_preview_chars,
            answer_preview_chars=None if full else t.answer_preview_chars,
            arguments_preview_chars=t.arguments_preview_chars,
            rotate_bytes=settings.logging.rotation_mb * 1024 * 1024,
        )

    def begin(self, prompt: str, **kwargs: Any) -> RequestContext:
        """:meth:`RequestContext.begin` with this ledger's preview sizes."""
        kwargs.setdefault("prompt_preview_chars", self.prompt_preview_chars)
        kwargs.setdefault("answer_preview_chars", self.answer_preview_chars)
        kwargs.setdefault("arguments_preview_chars", self.arguments_preview_chars)
        return RequestContext.begin(prompt, **kwargs)

    @asynccontextmanager
    async def request(self, prompt: str, **kwargs: Any) -> AsyncIterator[RequestContext]:
        """Begin a context, and finish and record it however the block ends. Inside, log records
        carry its run and request ids (:func:`~elaria.telemetry.logging.run_context`)."""
        ctx = self.begin(prompt, **kwargs)
        try:
            # Log records made inside carry the run and request ids.
            with (
                run_context(ctx.run_id) if ctx.run_id else nullcontext(),
                request_context(ctx.request_id),
            ):
                yield ctx
        except BaseException as exc:
            ctx.finish(error=exc)
            raise
        finally:
            ctx.finish()
            self.record(ctx)

    async def start(self) -> None:
        if self._store is not None:
            await asyncio.to_thread(self._store.open)
        await self._writer.start()

    async def aclose(self) -> None:
        try:
            await self._writer.aclose()
        finally:
            if self._store is not None:
                self._store.close()

    async def __aenter__(self) -> AuditLedger:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def record(self, ctx: RequestContext) -> bool:
        """Queue the request record. Never blocks or raises; False when it was dropped.

        The record is built (:meth:`RequestContext.to_record`, redacted and encoded) by the
        writer with its next batch, within ``LINGER_S``: leave ``ctx`` alone once recorded. A
        record that cannot be built is dropped, counted, and the first such failure logged."""
        return self._reported(self._writer.submit_deferred(functools.partial(_record_line, ctx)))

    write = record  # the run recorder's name for it

    def record_run(
        self,
        run_id: str,
        *,
        started_wall: float,
        finished_wall: float,
        outcome: Outcome,
        requests: list[str] | None = None,
        **meta: Any,
    ) -> bool:
        """A summary record for a run made of several requests (a chat session)."""
        return self._submit(
            redact(
                {
                    "record": "run",
                    "schema_version": LEDGER_SCHEMA_VERSION,
                    "run_id": run_id,
                    "started": _iso(started_wall),
                    "finished": _iso(finished_wall),
                    "latency_ms": round((finished_wall - started_wall) * 1000, 3),
                    "outcome": outcome,
                    "requests": list(requests or ()),
                    "meta": meta,
                }
            )
        )

    def stats(self) -> dict[str, Any]:
        stats = {"path": str(self.path), **self._writer.stats()}
        stats["sqlite"] = None if self.sqlite_path is None else str(self.sqlite_path)
        return stats

    def _submit(self, record: dict[str, Any]) -> bool:
        return self._reported(self._writer.submit(_encode(record)))

    def _reported(self, accepted: bool) -> bool:
        """``accepted``, after logging (once) a drop because the ledger is not running."""
        if not accepted and not self._writer.running and not self._not_running_reported:
            self._not_running_reported = True
            logger.bind(kind="telemetry", path=str(self.path)).warning(
                "audit record written while the ledger is not running; dropped and counted"
            )
        return accepted


def _encode(record: dict[str, Any]) -> bytes:
    try:
        return encode_line(record)
    except Exception:  # a lone surrogate, a key JSON cannot have: json's slower path copes
        return (_RECORD_ENCODER.encode(record) + "\n").encode(
            "utf-8",
            "backslashreplace",  # a lone surrogate becomes a JSON escape, not an error
        )


def _record_line(ctx: RequestContext) -> bytes:
    return _encode(ctx.to_record())


def _report_failure(text: str) -> None:
    logger.bind(kind="telemetry").error(f"audit ledger: {text}")
