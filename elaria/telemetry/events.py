"""The inference event log: one validated JSONL line per model request (prediction round).

Usage (the agent / LM Studio layer, on the event loop)::

    log = EventLog.from_settings(settings)      # path checked here: ConfigError if outside
    await log.start()
    log.round(result, request_id=rid, run_id=run_id)          # a RoundResult came back
    log.failed_round(exc, host=h, model=m, latency_s=dt, request_id=rid)
    log.emit(InferenceEvent(...))                              # any hand-built event
    await log.aclose()                                         # flushes

Contract:

* :class:`InferenceEvent` is the schema (``SCHEMA_VERSION``); invalid values raise pydantic's
  ``ValidationError`` when the event is built, never when it is written.
* ``emit`` never blocks and never raises: it redacts and serialises the event and hands one line
  to a single writer task through a bounded queue (``telemetry.queue_size``). ``round`` only
  takes the (frozen) round result, its ids and the time, and leaves checking, redaction and
  encoding to the writer's batch (a line per agent round, built between the SDK's and the
  tools' work, is several times dearer than the same line built in a batch); a round whose
  values the schema refuses is dropped there and counted. A full queue drops
  the event and counts it. A failing disk is reported once in the log and counted; inference
  goes on. ``stats()`` shows every counter (the health snapshot reads it).
* The file rotates at ``logging.rotation_mb`` (``from_settings``), keeping
  :data:`ROTATED_FILES_KEPT` older files; readers (``elaria events``) read them oldest first.
* Lines are whole even with many concurrent runs and processes (one writer per log, one
  ``O_APPEND`` write per batch of complete lines).
* Loop-confined: ``start``/``emit``/``aclose`` on the loop that started the log. Cancelling
  ``aclose`` cancels the flush; unwritten events are counted as dropped.
"""

from __future__ import annotations

import functools
import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

from elaria.security.redact import redact, redact_text
from elaria.telemetry.logging import current_request_id, current_run_id, new_id
from elaria.telemetry.paths import resolve_telemetry_path
from elaria.telemetry.writer import JsonlFile, LineWriter, encode_line

if TYPE_CHECKING:
    from elaria.config import Settings
    from elaria.lmstudio.rounds import RoundResult

__all__ = [
    "COST_WARNING_PER_1K",
    "ROTATED_FILES_KEPT",
    "SCHEMA_VERSION",
    "EventLog",
    "InferenceEvent",
    "cost_usd",
]

SCHEMA_VERSION: Final = 1
#: Rotated files kept beside the live one (``inference.jsonl.1`` … ``.10``), at
#: ``logging.rotation_mb`` each: the event log is append-only, but not unbounded.
ROTATED_FILES_KEPT: Final = 10
#: Above this a configured price is almost certainly a unit mistake (cents, per-token).
COST_WARNING_PER_1K: Final = 100.0

Provider = Literal["lmstudio", "embedded"]
#: Text fields that can carry text from outside (configuration, servers, callers): redacted on
#: write. The rest are numbers, flags, a literal and our timestamp: nothing to redact.
_TEXT_FIELDS: Final = (
    "request_id",
    "run_id",
    "tenant",
    "project",
    "tier",
    "host",
    "model",
    "error_class",
)
#: Distinct texts whose redaction is remembered: hosts, models, tenants and error classes
#: repeat on every line; fresh ids pass through once and age out.
_REDACTED_TEXTS_CACHED: Final = 1024


class InferenceEvent(BaseModel):
    """One model request. Times in milliseconds, money in US dollars."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    request_id: str = Field(min_length=1, max_length=128)
    run_id: str | None = Field(default=None, max_length=128)
    tenant: str | None = None
    project: str | None = None
    tier: str | None = None
    provider: Provider
    host: str
    model: str
    latency_ms: float = Field(ge=0, allow_inf_nan=False)
    time_to_first_token_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    tokens_in: int = Field(default=0, ge=0)
    tokens_out: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    success: bool
    error_class: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    def to_line(self) -> bytes:
        """The redacted JSON line (with its newline) this event is stored as."""
        changed: dict[str, Any] = {}
        for key in _TEXT_FIELDS:
            value = getattr(self, key)
            if value is not None:
                cleaned = _redacted(value)
                if cleaned is not value:
                    changed[key] = cleaned
        if self.meta:
            meta = redact(self.meta)
            if meta != self.meta:
                changed["meta"] = meta
        event = self.model_copy(update=changed) if changed else self
        try:
            # pydantic's serialiser: the same compact JSON as json.dumps, a few times faster.
            return event.model_dump_json().encode() + b"\n"
        except ValueError:  # text that UTF-8 cannot hold (a lone surrogate): escape it
            data = event.model_dump(mode="json")
            return (json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n").encode(
                "utf-8", "backslashreplace"
            )


#: ``request_id`` / ``run_id`` length bound of :class:`InferenceEvent` (the fast line checks it).
_ID_MAX_LEN: Final = 128
#: Exact types the fast line writes as JSON numbers (subclasses take the validated path).
_PLAIN_NUMBERS: Final = (int, float)


@functools.lru_cache(maxsize=_REDACTED_TEXTS_CACHED)
def _redacted(text: str) -> str:
    """``redact_text`` remembered: it is a pure function of its argument."""
    return redact_text(text)


def cost_usd(tokens_in: int, tokens_out: int, cost_per_1k_tokens: float) -> float:
    """Price of a request at a flat rate per 1,000 tokens (prompt and completion alike)."""
    if cost_per_1k_tokens < 0 or not math.isfinite(cost_per_1k_tokens):
        raise ValueError("cost_per_1k_tokens must be a finite, non-negative number")
    return (tokens_in + tokens_out) / 1000.0 * cost_per_1k_tokens


class EventLog:
    """Append-only JSONL of :class:`InferenceEvent`; see the module docstring."""

    def __init__(
        self,
        path: str | Path,
        *,
        queue_size: int = 10_000,
        cost_per_1k_tokens: float = 0.0,
        tenant: str | None = None,
        project: str | None = None,
        tier: str | None = None,
        rotate_bytes: int | None = None,
        keep: int = ROTATED_FILES_KEPT,
        setting: str = "telemetry.events_file",
    ) -> None:
        self.path = resolve_telemetry_path(path, setting=setting)
        cost_usd(0, 0, cost_per_1k_tokens)  # validates
        if cost_per_1k_tokens > COST_WARNING_PER_1K:
            logger.bind(kind="telemetry", cost_per_1k_tokens=cost_per_1k_tokens).warning(
                f"telemetry.cost_per_1k_tokens is ${cost_per_1k_tokens:g} per 1,000 tokens; "
                "is that meant per token or in cents?"
            )
        self.cost_per_1k_tokens = cost_per_1k_tokens
        self.tenant, self.project, self.tier = tenant, project, tier
        self._writer = LineWriter(
            JsonlFile(self.path, max_bytes=rotate_bytes, keep=keep, on_failure=_report_failure),
            queue_size=queue_size,
        )
        self._not_running_reported = False

    @classmethod
    def from_settings(cls, settings: Settings) -> EventLog:
        """The event log configured by ``settings`` (``logging.log_dir`` / ``events_file``)."""
        t = settings.telemetry
        return cls(
            settings.logging.log_dir / t.events_file,
            queue_size=t.queue_size,
            cost_per_1k_tokens=t.cost_per_1k_tokens,
            tenant=t.tenant,
            project=t.project,
            tier=t.tier,
            rotate_bytes=settings.logging.rotation_mb * 1024 * 1024,
        )

    async def start(self) -> None:
        await self._writer.start()

    async def aclose(self) -> None:
        await self._writer.aclose()

    async def __aenter__(self) -> EventLog:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def emit(self, event: InferenceEvent) -> bool:
        """Queue ``event`` for writing. Never blocks or raises; False when it was dropped."""
        try:
            line = event.to_line()
        except Exception:  # a meta value json cannot encode: drop it, never the caller
            logger.opt(exception=True).bind(kind="telemetry").warning(
                "inference event could not be serialised; dropped"
            )
            return False
        return self._submit(line)

    def _submit(self, line: bytes) -> bool:
        return self._reported(self._writer.submit(line))

    def _reported(self, accepted: bool) -> bool:
        """``accepted``, after logging (once) a drop because the log is not running."""
        if not accepted and not self._writer.running and not self._not_running_reported:
            self._not_running_reported = True
            logger.bind(kind="telemetry", path=str(self.path)).warning(
                "inference event emitted while the event log is not running; dropped and counted"
            )
        return accepted

    def round(
        self,
        result: RoundResult,
        *,
        request_id: str | None = None,
        run_id: str | None = None,
        latency_s: float | None = None,
        **meta: Any,
    ) -> bool:
        """Record a successful round from its :class:`~elaria.lmstudio.rounds.RoundResult`.

        Only the ids and the time are taken now (``result`` is frozen); the writer checks the
        values, redacts and encodes them with its batch, within ``LINGER_S``. Values the
        schema refuses drop the line there (counted, the first reported), never the caller."""
        if meta:
            return self.emit(self._round_event(result, request_id, run_id, latency_s, meta))
        captured = _CapturedRound(
            time.time(),
            result,
            request_id or current_request_id() or new_id(),
            run_id or current_run_id(),
            latency_s,
        )
        return self._reported(
            self._writer.submit_deferred(functools.partial(self._deferred, captured))
        )

    def failed_round(
        self,
        error: BaseException | str,
        *,
        host: str,
        model: str,
        latency_s: float,
        provider: str = "lmstudio",
        request_id: str | None = None,
        run_id: str | None = None,
        **meta: Any,
    ) -> bool:
        """Record a round that ended in ``error`` (an exception or its class name)."""
        error_class = error if isinstance(error, str) else type(error).__name__
        return self.emit(
            self._event(
                provider=_provider(provider),
                host=host,
                model=model,
                latency_ms=max(0.0, latency_s) * 1000,
                time_to_first_token_ms=None,
                tokens_in=0,
                tokens_out=0,
                success=False,
                error_class=error_class,
                request_id=request_id,
                run_id=run_id,
                meta=meta,
            )
        )

    def stats(self) -> dict[str, Any]:
        return {"path": str(self.path), **self._writer.stats()}

    def _round_event(
        self,
        result: RoundResult,
        request_id: str | None,
        run_id: str | None,
        latency_s: float | None,
        meta: dict[str, Any],
        created: float | None = None,
    ) -> InferenceEvent:
        """The validated event of a successful round (the general path of :meth:`round`)."""
        ttft = result.time_to_first_token_s
        # ``created`` defaults to now in the schema; a captured round keeps its own time.
        when = {} if created is None else {"created": datetime.fromtimestamp(created, UTC)}
        return self._event(
            **when,
            provider=_provider(result.provider),
            host=result.host,
            model=result.model,
            latency_ms=max(0.0, (latency_s if latency_s is not None else result.total_time_s))
            * 1000,
            time_to_first_token_ms=None if ttft is None else max(0.0, ttft) * 1000,
            tokens_in=max(0, result.prompt_tokens),
            tokens_out=max(0, result.predicted_tokens),
            success=True,
            error_class=None,
            request_id=request_id,
            run_id=run_id,
            meta={"stop_reason": result.stop_reason, **meta},
        )

    def _round_line(
        self,
        result: RoundResult,
        request_id: str | None,
        run_id: str | None,
        latency_s: float | None,
        created: float | None = None,
    ) -> bytes | None:
        """The fast line for ``result`` (``created``: the round's time, default now); None when
        a value needs the validated path (see :meth:`_round_fields`)."""
        when = time.time() if created is None else created
        fields = self._round_fields(result, request_id, run_id, latency_s, when)
        return None if fields is None else self._build_round_line(fields)

    def _round_fields(
        self,
        result: RoundResult,
        request_id: str | None,
        run_id: str | None,
        latency_s: float | None,
        created: float,
    ) -> _RoundFields | None:
        """The round's values, checked as the schema would; None when any is one the schema
        would reject (the caller then takes the validated path, which raises or writes).

        The line built from them has the same fields, order, redaction and values as
        ``InferenceEvent(...).to_line()``; the tests check that every such line parses as an
        :class:`InferenceEvent` equal to the slow path's.
        """
        request_id = request_id or current_request_id() or new_id()
        run_id = run_id or current_run_id()
        latency = latency_s if latency_s is not None else result.total_time_s
        ttft = result.time_to_first_token_s
        tokens_in, tokens_out = result.prompt_tokens, result.predicted_tokens
        if not (
            type(request_id) is str
            and 0 < len(request_id) <= _ID_MAX_LEN
            and (run_id is None or (type(run_id) is str and len(run_id) <= _ID_MAX_LEN))
            and type(result.host) is str
            and type(result.model) is str
            and type(result.stop_reason) is str
            and type(tokens_in) is int
            and type(tokens_out) is int
            and type(latency) in _PLAIN_NUMBERS
            and math.isfinite(latency)
            and (ttft is None or (type(ttft) in _PLAIN_NUMBERS and math.isfinite(ttft)))
        ):
            return None
        tokens_in, tokens_out = max(0, tokens_in), max(0, tokens_out)
        cost = cost_usd(tokens_in + tokens_out, 0, self.cost_per_1k_tokens)
        latency_ms = float(max(0.0, latency) * 1000)
        ttft_ms = None if ttft is None else float(max(0.0, ttft) * 1000)
        # Finite seconds can still overflow as milliseconds; the schema refuses infinity.
        if not (
            math.isfinite(cost)
            and math.isfinite(latency_ms)
            and (ttft_ms is None or math.isfinite(ttft_ms))
        ):
            return None
        return _RoundFields(
            created,
            request_id,
            run_id,
            _provider(result.provider),
            result.host,
            result.model,
            latency_ms,
            ttft_ms,
            tokens_in,
            tokens_out,
            float(cost),
            result.stop_reason,
        )

    def _build_round_line(self, f: _RoundFields) -> bytes | None:
        """The redacted JSON line of ``f``; None for text UTF-8 cannot hold (a lone surrogate),
        which only the validated event's own escaping writes."""
        data = {
            "schema_version": SCHEMA_VERSION,
            "created": datetime.fromtimestamp(f.created, UTC).isoformat()[:-6] + "Z",
            "request_id": _redacted(f.request_id),
            "run_id": None if f.run_id is None else _redacted(f.run_id),
            "tenant": None if self.tenant is None else _redacted(self.tenant),
            "project": None if self.project is None else _redacted(self.project),
            "tier": None if self.tier is None else _redacted(self.tier),
            "provider": f.provider,
            "host": _redacted(f.host),
            "model": _redacted(f.model),
            "latency_ms": f.latency_ms,
            "time_to_first_token_ms": f.ttft_ms,
            "tokens_in": f.tokens_in,
            "tokens_out": f.tokens_out,
            "cost_usd": f.cost_usd,
            "success": True,
            "error_class": None,
            "meta": redact({"stop_reason": f.stop_reason}),
        }
        try:  # compact, like pydantic's model_dump_json; the values are finite (checked)
            return encode_line(data)
        except UnicodeEncodeError:
            return None

    def _deferred(self, r: _CapturedRound) -> bytes:
        """The writer's builder for a captured round: the fast line when every value passes the
        schema's checks, else the validated event's line (which raises for a value it refuses:
        the writer then drops and counts the line)."""
        line = self._round_line(r.result, r.request_id, r.run_id, r.latency_s, r.created)
        if line is not None:
            return line
        event = self._round_event(r.result, r.request_id, r.run_id, r.latency_s, {}, r.created)
        return event.to_line()

    def _event(
        self, *, request_id: str | None, run_id: str | None, **fields: Any
    ) -> InferenceEvent:
        tokens = fields["tokens_in"] + fields["tokens_out"]
        return InferenceEvent(
            request_id=request_id or current_request_id() or new_id(),
            run_id=run_id or current_run_id(),
            tenant=self.tenant,
            project=self.project,
            tier=self.tier,
            cost_usd=cost_usd(tokens, 0, self.cost_per_1k_tokens),
            **fields,
        )


class _CapturedRound(NamedTuple):
    """What :meth:`EventLog.round` takes when a round ends; the writer builds the line from it."""

    created: float
    result: RoundResult
    request_id: str
    run_id: str | None
    latency_s: float | None


class _RoundFields(NamedTuple):
    """A successful round's values, checked and captured when it ends (see ``EventLog.round``)."""

    created: float
    request_id: str
    run_id: str | None
    provider: Provider
    host: str
    model: str
    latency_ms: float
    ttft_ms: float | None
    tokens_in: int
    tokens_out: int
    cost_usd: float
    stop_reason: str


def _provider(value: str) -> Provider:
    return "embedded" if value == "embedded" else "lmstudio"


def _report_failure(text: str) -> None:
    logger.bind(kind="telemetry").error(f"inference event log: {text}")
