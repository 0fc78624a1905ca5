"""Host and model failover for prediction rounds, and model questions for the agent.

Public API::

    failover = Failover(pool, settings)             # settings: the whole Settings
    result = await failover.predict(RoundRequest(...), on_fragment=print)
    await failover.context_length()                 # of the primary reachable target's model
    await failover.count_tokens("some text")        # with that model's real tokenizer
    await failover.list_models(host)                # downloaded + loaded, for ``elaria models``

:meth:`Failover.predict` walks ``settings.lmstudio.targets()`` in order (hosts in order, models
within a host), skipping targets whose host or (host, model) breaker is open. Each failure is
classified once (:func:`~elaria.resilience.classify.classify`) and handled by the action table:

* transient: one more try on the same target, then the next target;
* host down: the pool evicts the client; next target;
* model unloaded: forget the cached handle, load it (JIT ``client.llm.model(key)``), retry once;
* context overflow / content policy: raise :class:`~elaria.errors.ContextOverflowError` /
  :class:`~elaria.errors.ContentPolicyError` at once — never fail over;
* fatal (model not downloaded, protocol mismatch, auth): next target.

Every step is appended to ``RoundResult.events`` as a plain dict (``kind``: ``retry``,
``load_model``, ``failover``, ``skip``) and logged with ``kind="resilience"``. When every
target failed: :class:`~elaria.errors.AllTargetsFailed` with the whole chain. Because targets
are always tried in order, traffic returns to the primary as soon as its breaker lets a probe
through and that probe succeeds. The breaker lets that probe through after its reset timeout,
or earlier when the pool's own supervisor has reconnected to the host (its probe passed).

Breakers: only the host's own failures (transient, host down) count, on the host breaker for
host-down and on the (host, model) breaker otherwise; cancellations never count. If a fragment
callback already saw text from an attempt that then failed, the next attempt streams its text
from the start; the ``failover``/``retry`` event tells the consumer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from elaria.config import FailoverTarget, Settings
from elaria.errors import (
    AllTargetsFailed,
    BackendError,
    ConfigError,
    ContentPolicyError,
    ContextOverflowError,
    FailedAttempt,
    ToolCallMalformed,
)
from elaria.lmstudio.pool import ClientPool, HostState
from elaria.lmstudio.predict import predict_round
from elaria.lmstudio.rounds import FragmentCallback, RoundRequest, RoundResult
from elaria.resilience.breaker import BreakerRegistry, CircuitBreaker, Permit
from elaria.resilience.classify import ACTIONS, FailureClass, classify, to_backend_error

__all__ = ["Failover"]

#: One extra try on the same target for a transient error: a blip, not a pattern.
TRANSIENT_RETRIES_PER_TARGET = 1


def _counts_against_host(exc: BaseException) -> bool:
    if isinstance(exc, asyncio.CancelledError):
        return False
    return ACTIONS[classify(exc)].counts_against_host


class Failover:
    def __init__(
        self,
        pool: ClientPool,
        settings: Settings,
        *,
        breakers: BreakerRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self.breakers = breakers or BreakerRegistry(
            failure_threshold=settings.breaker.failure_threshold,
            reset_timeout_s=settings.breaker.reset_timeout_ms / 1000,
            clock=clock,
            counts=_counts_against_host,
        )
        self._chain_key: tuple[tuple[str, ...], str | None, tuple[str, ...]] | None = None
        self._chain_pairs: tuple[tuple[str, str | None], ...] = ()

    def stats(self) -> dict[str, Any]:
        """Breaker states per host and per (host, model), for the health snapshot."""
        return {"breakers": self.breakers.stats()}

    def targets(self) -> list[FailoverTarget]:
        targets = self._settings.lmstudio.targets()
        if not targets:
            raise ConfigError(
                "no LM Studio host is configured",
                where="lmstudio.hosts",
                hint='Set lmstudio.hosts = ["ws://localhost:1234"] in elaria.toml or '
                "ELARIA_LMSTUDIO__HOSTS='[\"ws://localhost:1234\"]'.",
            )
        return targets

    def _chain(self) -> tuple[tuple[str, str | None], ...]:
        """``targets()`` as plain (host, model) pairs, rebuilt only when the settings change.

        Every round walks the chain; building pydantic targets for it each time cost more than
        the walk. The key is read from the settings on each call, so a changed host or model
        list (settings are mutable) is seen at once."""
        lm = self._settings.lmstudio
        key = (tuple(lm.hosts), lm.model, tuple(lm.models))
        if key != self._chain_key:
            self._chain_pairs = tuple((t.host, t.model) for t in self.targets())
            self._chain_key = key
        return self._chain_pairs

    # ------------------------------------------------------------------ rounds

    async def predict(
        self, request: RoundRequest, on_fragment: FragmentCallback | None = None
    ) -> RoundResult:
        events: list[dict[str, Any]] = []
        chain: list[FailedAttempt] = []
        for host, model in self._chain():
            result = await self._try_target(host, model, request, on_fragment, events, chain)
            if result is not None:
                return _with_events(result, events)
        raise AllTargetsFailed(chain)

    async def _try_target(
        self,
        host: str,
        model: str | None,
        request: RoundRequest,
        on_fragment: FragmentCallback | None,
        events: list[dict[str, Any]],
        chain: list[FailedAttempt],
    ) -> RoundResult | None:
        host_breaker = self.breakers.for_host(host)
        model_breaker = self.breakers.for_model(host, model or "*")
        if self._pool.state(host) is HostState.CONNECTED:
            # The pool's supervisor just proved the host answers: probe it now rather than
            # after the whole reset timeout, so traffic returns to the primary quickly.
            host_breaker.allow_probe("the pool reconnected to the host")
        permits = _acquire_both(host_breaker, model_breaker)
        if permits is None:
            wait = max(host_breaker.retry_after(), model_breaker.retry_after())
            reason = f"circuit open (next probe in {wait:.1f} s)"
            chain.append(FailedAttempt(host, model, "CircuitOpenError", reason, skipped=True))
            events.append(_event("skip", host, model, "CircuitOpenError", reason))
            return None
        host_permit, model_permit = permits
        transient_left = TRANSIENT_RETRIES_PER_TARGET
        loaded = False
        while True:
            try:
                # Inline, not a coroutine of its own: every stream message resumes each
                # coroutine between the task and the socket read.
                async with self._pool.lease(host) as lease:
                    handle = self._pool.cached_handle(lease, model)
                    if handle is None:
                        handle = await self._pool.model_handle(lease, model)
                    result = await predict_round(
                        lease, str(handle.identifier), request, self._settings.lmstudio, on_fragment
                    )
            except asyncio.CancelledError:
                host_breaker.release(host_permit)
                model_breaker.release(model_permit)
                raise
            except Exception as exc:
                kind = classify(exc)
                action = ACTIONS[kind]
                name = type(exc).__name__
                if kind is FailureClass.CONTEXT_OVERFLOW:
                    _record_ok(host_breaker, host_permit, model_breaker, model_permit)
                    raise _typed(exc, ContextOverflowError, host, model) from exc
                if kind is FailureClass.CONTENT_POLICY:
                    _record_ok(host_breaker, host_permit, model_breaker, model_permit)
                    raise _typed(exc, ContentPolicyError, host, model) from exc
                if kind is FailureClass.TOOL_CALL_MALFORMED:
                    _record_ok(host_breaker, host_permit, model_breaker, model_permit)
                    raise ToolCallMalformed(str(exc)) from exc
                if action.load_model and not loaded:
                    loaded = True
                    self._pool.forget_handle(host, model)
                    events.append(_event("load_model", host, model, name, str(exc)))
                    continue
                if (
                    action.retry_same_target
                    and transient_left > 0
                    and kind is not FailureClass.MODEL_UNLOADED
                ):
                    transient_left -= 1
                    events.append(_event("retry", host, model, name, str(exc)))
                    continue
                if kind is FailureClass.HOST_DOWN:
                    host_breaker.record_failure(host_permit, exc)
                    model_breaker.release(model_permit)
                else:
                    host_breaker.record_success(host_permit)  # the host answered
                    model_breaker.record_failure(model_permit, exc)
                message = str(to_backend_error(exc, host=host, model=model).message)
                chain.append(FailedAttempt(host, model, name, message))
                events.append(_event("failover", host, model, name, message))
                return None
            _record_ok(host_breaker, host_permit, model_breaker, model_permit)
            return result

    # ------------------------------------------------------------------ model questions

    async def context_length(self, target: FailoverTarget | None = None) -> int:
        """The loaded context length of ``target``'s model (default: the first reachable)."""
        return int(await self._ask(target, "context length", lambda h: h.get_context_length()))

    async def count_tokens(self, text: str, target: FailoverTarget | None = None) -> int:
        """Tokens in ``text`` by the model's own tokenizer."""
        return int(await self._ask(target, "count tokens", lambda h: h.count_tokens(text)))

    async def _ask(
        self, target: FailoverTarget | None, operation: str, call: Callable[[Any], Any]
    ) -> Any:
        candidates = [target] if target is not None else self.targets()
        chain: list[FailedAttempt] = []
        timeout = self._settings.lmstudio.probe_timeout_ms / 1000 * 5
        for t in candidates:
            try:
                async with self._pool.lease(t.host) as lease:
                    handle = await self._pool.model_handle(lease, t.model)
                    return await lease.run(call(handle), timeout, operation)
            except BackendError as exc:
                chain.append(FailedAttempt(t.host, t.model, type(exc).__name__, exc.message))
            except Exception as exc:
                err = to_backend_error(exc, host=t.host, model=t.model)
                chain.append(FailedAttempt(t.host, t.model, type(exc).__name__, err.message))
        raise AllTargetsFailed(chain)

    async def list_models(self, host: str) -> dict[str, Any]:
        """``{"host", "downloaded": [...], "loaded": [...]}`` as plain dicts."""
        timeout = self._settings.lmstudio.probe_timeout_ms / 1000 * 5
        async with self._pool.lease(host) as lease:
            downloaded = await lease.run(
                lease.client.list_downloaded_models(), timeout, "list downloaded models"
            )
            loaded = await lease.run(lease.client.llm.list_loaded(), timeout, "list loaded models")
        return {
            "host": host,
            "downloaded": [
                {
                    "model_key": m.model_key,
                    "type": m.type,
                    "display_name": m.info.display_name,
                    "size_bytes": m.info.size_bytes,
                    "max_context_length": m.info.max_context_length,
                }
                for m in downloaded
            ],
            "loaded": [{"identifier": h.identifier} for h in loaded],
        }


def _acquire_both(
    host_breaker: CircuitBreaker, model_breaker: CircuitBreaker
) -> tuple[Permit, Permit] | None:
    host_permit = host_breaker.try_acquire()
    if host_permit is None:
        return None
    model_permit = model_breaker.try_acquire()
    if model_permit is None:
        host_breaker.release(host_permit)
        return None
    return host_permit, model_permit


def _record_ok(
    host_breaker: CircuitBreaker,
    host_permit: Permit,
    model_breaker: CircuitBreaker,
    model_permit: Permit,
) -> None:
    host_breaker.record_success(host_permit)
    model_breaker.record_success(model_permit)


def _typed(exc: Exception, cls: type[BackendError], host: str, model: str | None) -> BackendError:
    converted = to_backend_error(exc, host=host, model=model)
    if isinstance(converted, cls):
        return converted
    return cls(str(exc).splitlines()[0], host=host, model=model)


def _event(
    kind: str, host: str, model: str | None, error_class: str, message: str
) -> dict[str, Any]:
    event = {
        "kind": kind,
        "host": host,
        "model": model,
        "error_class": error_class,
        "message": message.splitlines()[0][:300] if message else "",
        "at": time.time(),
    }
    logger.bind(kind="resilience", action=kind, host=host, model=model).info(
        "{} on {}/{}: {}: {}", kind, host, model or "*", error_class, event["message"]
    )
    return event


def _with_events(result: RoundResult, events: list[dict[str, Any]]) -> RoundResult:
    if not events:
        return result
    from dataclasses import replace

    return replace(result, events=tuple(events) + tuple(result.events))
