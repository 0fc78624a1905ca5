"""Circuit breakers with exactly one half-open probe, and a registry per host and (host, model).

States::

    CLOSED --N counted failures in a row--> OPEN --reset timeout--> HALF_OPEN
       ^                                     ^                          |
       +------------- probe succeeded -------+---- probe failed --------+

* In HALF_OPEN exactly **one** caller (the probe) is let through; every other caller is refused
  with :class:`~elaria.errors.CircuitOpenError` until the probe reports back. pybreaker-style
  breakers let every concurrent caller through here; that is the stampede this prevents.
* A cancellation never counts and never changes state: a cancelled probe gives its slot back.
  Errors for which ``counts(exc)`` is false (the caller's fault: context overflow, bad request)
  do not count either; they prove the host answered, so a probe that ends in one closes the
  breaker.

Sans-I/O and loop-confined: the decision in :meth:`CircuitBreaker.try_acquire` is a plain
check-and-set with no await inside, so on one event loop it is atomic. The clock is injected.
State changes are logged through loguru with ``kind="breaker"`` and counted in :meth:`stats`.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

from loguru import logger

from elaria.errors import CircuitOpenError

__all__ = [
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_RESET_TIMEOUT_S",
    "BreakerRegistry",
    "BreakerState",
    "CircuitBreaker",
    "Permit",
]

#: Five failures in a row: one or two are blips, five means the host is really gone.
DEFAULT_FAILURE_THRESHOLD = 5
#: A minute before probing again: long enough for LM Studio to restart, short for a human.
DEFAULT_RESET_TIMEOUT_S = 60.0

Clock = Callable[[], float]
CountsPredicate = Callable[[BaseException], bool]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Permit:
    """Proof that :meth:`CircuitBreaker.try_acquire` let a call through; ``probe`` marks the
    single half-open caller."""

    probe: bool


#: Permits are immutable: one of each serves every call.
_PASS: Final = Permit(probe=False)
_PROBE: Final = Permit(probe=True)


def _always_counts(exc: BaseException) -> bool:
    return True


class CircuitBreaker:
    """One breaker. Use :meth:`guard` around a call, or the acquire/record methods directly."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        reset_timeout_s: float = DEFAULT_RESET_TIMEOUT_S,
        clock: Clock = time.monotonic,
        counts: CountsPredicate = _always_counts,
        host: str | None = None,
        model: str | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        self.name = name
        self.host = host
        self.model = model
        self._threshold = failure_threshold
        self._reset_timeout = reset_timeout_s
        self._clock = clock
        self._counts = counts
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_out = False
        self._transitions = 0
        self._rejected = 0
        self._last_failure: str | None = None

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> BreakerState:
        """The current state; OPEN turns into HALF_OPEN here once the timeout has passed."""
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self._reset_timeout
        ):
            self._move(BreakerState.HALF_OPEN, "reset timeout passed")
        return self._state

    def retry_after(self) -> float:
        """Seconds until an OPEN breaker lets a probe through (0 when not OPEN)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._reset_timeout - (self._clock() - self._opened_at))

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "consecutive_failures": self._failures,
            "transitions": self._transitions,
            "rejected": self._rejected,
            "probe_in_flight": self._probe_out,
            "retry_after_s": round(self.retry_after(), 3),
            "last_failure": self._last_failure,
        }

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name} {self.state.value} failures={self._failures}>"

    # ------------------------------------------------------------------ deciding

    def try_acquire(self) -> Permit | None:
        """Let a call through (a :class:`Permit`) or refuse it (``None``). No await inside."""
        state = self.state
        if state is BreakerState.CLOSED:
            return _PASS
        if state is BreakerState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return _PROBE
        self._rejected += 1
        return None

    def acquire(self) -> Permit:
        """Like :meth:`try_acquire`, raising :class:`CircuitOpenError` when refused."""
        permit = self.try_acquire()
        if permit is None:
            raise CircuitOpenError(
                f"circuit {self.name} is {self._state.value}",
                host=self.host,
                model=self.model,
                retry_after=self.retry_after() or None,
            )
        return permit

    def allow_probe(self, reason: str) -> None:
        """Outside evidence says the host is back (e.g. the pool's own health probe passed):
        an OPEN breaker goes HALF_OPEN now instead of waiting out its reset timeout."""
        if self.state is BreakerState.OPEN:
            self._move(BreakerState.HALF_OPEN, reason)

    def record_success(self, permit: Permit) -> None:
        self._failures = 0
        if permit.probe:
            self._probe_out = False
        if self._state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED, "call succeeded")

    def record_failure(self, permit: Permit, exc: BaseException) -> None:
        """Count ``exc`` unless it is a cancellation or not the host's fault."""
        if isinstance(exc, asyncio.CancelledError):
            self.release(permit)
            return
        if not self._counts(exc):
            # The host answered; only the request was bad.
            self.record_success(permit)
            return
        if permit.probe:
            self._probe_out = False
        self._last_failure = f"{type(exc).__name__}: {exc}"[:300]
        if permit.probe:
            self._open("probe failed")
            return
        if self._state is not BreakerState.CLOSED:
            # A straggler from before the breaker opened: the state already says "down".
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._open(f"{self._failures} failures in a row")

    def release(self, permit: Permit) -> None:
        """The call was abandoned (cancelled): nothing is counted, a probe slot is given back."""
        if permit.probe:
            self._probe_out = False

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[Permit]:
        """``async with breaker.guard():`` acquire, run, record; raises CircuitOpenError."""
        permit = self.acquire()
        try:
            yield permit
        except BaseException as exc:
            self.record_failure(permit, exc)
            raise
        self.record_success(permit)

    # ------------------------------------------------------------------ internals

    def _open(self, reason: str) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._move(BreakerState.OPEN, reason)

    def _move(self, new: BreakerState, reason: str) -> None:
        old, self._state = self._state, new
        self._transitions += 1
        logger.bind(
            kind="breaker",
            breaker=self.name,
            host=self.host,
            model=self.model,
            old=old.value,
            new=new.value,
        ).info("circuit {} {} -> {}: {}", self.name, old.value, new.value, reason)


class BreakerRegistry:
    """Breakers created on first use, one per host and one per (host, model), sharing settings."""

    def __init__(
        self,
        *,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        reset_timeout_s: float = DEFAULT_RESET_TIMEOUT_S,
        clock: Clock = time.monotonic,
        counts: CountsPredicate = _always_counts,
    ) -> None:
        self._kwargs: dict[str, Any] = {
            "failure_threshold": failure_threshold,
            "reset_timeout_s": reset_timeout_s,
            "clock": clock,
            "counts": counts,
        }
        self._hosts: dict[str, CircuitBreaker] = {}
        self._models: dict[tuple[str, str], CircuitBreaker] = {}

    def for_host(self, host: str) -> CircuitBreaker:
        breaker = self._hosts.get(host)
        if breaker is None:
            breaker = CircuitBreaker(f"host:{host}", host=host, **self._kwargs)
            self._hosts[host] = breaker
        return breaker

    def for_model(self, host: str, model: str) -> CircuitBreaker:
        key = (host, model)
        breaker = self._models.get(key)
        if breaker is None:
            name = f"model:{host}/{model}"
            breaker = CircuitBreaker(name, host=host, model=model, **self._kwargs)
            self._models[key] = breaker
        return breaker

    def stats(self) -> dict[str, Any]:
        return {
            "hosts": {h: b.stats() for h, b in self._hosts.items()},
            "models": {f"{h}/{m}": b.stats() for (h, m), b in self._models.items()},
        }
