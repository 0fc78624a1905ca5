"""Reconnect delays: exponential with full jitter, and the "stay up before it counts" rule.

Sans-I/O: nothing here sleeps or reads a clock by itself. :func:`delays` yields seconds to wait;
:class:`ReconnectBackoff` adds the rule that a connection must stay healthy for ``stable_after_s``
before the schedule starts again from the initial delay. Without that rule a server that accepts
and drops at once would reset the backoff on every accept and the caller would loop hot.

Plain objects, loop-confined by convention (no locks); the clock is injected.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

__all__ = ["DEFAULT_CAP_S", "DEFAULT_INITIAL_S", "ReconnectBackoff", "ceiling", "delays"]

#: First reconnect delay: does not hammer a restarting server, still feels instant.
DEFAULT_INITIAL_S = 1.0
#: Longest delay: a laptop waking from sleep should be noticed within half a minute.
DEFAULT_CAP_S = 30.0

Random = Callable[[], float]


def ceiling(attempt: int, *, initial: float, cap: float, factor: float = 2.0) -> float:
    """Upper bound of the delay before retry number ``attempt`` (0-based): initial·factorⁿ ≤ cap."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    # Cap the exponent so a long outage cannot overflow a float.
    exponent = min(attempt, 64)
    return min(cap, initial * factor**exponent)


def delays(
    initial: float = DEFAULT_INITIAL_S,
    cap: float = DEFAULT_CAP_S,
    *,
    factor: float = 2.0,
    rng: Random = random.random,
) -> Iterator[float]:
    """Endless schedule with full jitter: each delay is uniform in ``[0, ceiling]``.

    The jitter is kept at the cap (delays there stay uniform in ``[0, cap]``, never pinned to the
    cap), so many clients that lost the same server do not reconnect in lockstep.
    """
    if initial <= 0 or cap < initial:
        raise ValueError(f"need 0 < initial <= cap, got initial={initial}, cap={cap}")
    attempt = 0
    while True:
        yield rng() * ceiling(attempt, initial=initial, cap=cap, factor=factor)
        attempt += 1


class ReconnectBackoff:
    """The delay before each reconnect attempt, reset only by a connection that stayed up.

    Feed it events: :meth:`connected` when a connection passed its health check,
    :meth:`disconnected` when it was lost. :meth:`next_delay` returns how long to wait before the
    next attempt. A connection lost before ``stable_after_s`` does not reset the schedule.
    """

    def __init__(
        self,
        *,
        initial: float = DEFAULT_INITIAL_S,
        cap: float = DEFAULT_CAP_S,
        stable_after_s: float = 10.0,
        clock: Callable[[], float],
        rng: Random = random.random,
        factor: float = 2.0,
    ) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError(f"need 0 < initial <= cap, got initial={initial}, cap={cap}")
        self._initial = initial
        self._cap = cap
        self._factor = factor
        self._stable_after = stable_after_s
        self._clock = clock
        self._rng = rng
        self._attempt = 0
        self._up_since: float | None = None

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt

    def next_delay(self) -> float:
        """Seconds to wait before the next connection attempt (full jitter)."""
        bound = ceiling(self._attempt, initial=self._initial, cap=self._cap, factor=self._factor)
        self._attempt += 1
        return self._rng() * bound

    def connected(self) -> None:
        """A connection is up and healthy; the reset is decided when it goes down (or stays up)."""
        self._up_since = self._clock()
        self._maybe_reset()

    def disconnected(self) -> None:
        """The connection was lost; the schedule resets only if it had been stable."""
        self._maybe_reset()
        self._up_since = None

    def still_up(self) -> None:
        """Called on a successful health check: a long-lived connection resets the schedule."""
        self._maybe_reset()

    def _maybe_reset(self) -> None:
        if self._up_since is not None and self._clock() - self._up_since >= self._stable_after:
            self._attempt = 0
