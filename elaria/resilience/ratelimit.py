"""Rate limits: a token bucket for call rates, a sliding window for per-tool call limits.

* :class:`TokenBucket` refills ``rate`` tokens per second up to ``capacity``.
  :meth:`~TokenBucket.try_acquire` never waits; :meth:`~TokenBucket.acquire` waits at most
  ``timeout`` seconds and returns ``False`` if it could not get the tokens in time (it never
  waits when the wait it would need is already longer than the timeout).
* :class:`SlidingWindowLimiter` allows ``limit`` events per key within any ``window_s`` seconds
  (e.g. 120 calls of one tool per minute). Memory per key is bounded by ``limit``.

Loop-confined, clock and sleep injected; a cancelled :meth:`TokenBucket.acquire` takes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

__all__ = ["SlidingWindowLimiter", "TokenBucket"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    def __init__(
        self,
        rate: float,
        capacity: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError(f"rate and capacity must be > 0, got {rate}, {capacity}")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._sleep = sleep
        self._tokens = capacity
        self._stamp = clock()

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_acquire(self, n: float = 1.0) -> bool:
        if n > self.capacity:
            raise ValueError(f"cannot take {n} tokens from a bucket of {self.capacity}")
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def wait_time(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are available (0 if they are now)."""
        self._refill()
        return max(0.0, (n - self._tokens) / self.rate)

    async def acquire(self, timeout: float | None = None, n: float = 1.0) -> bool:
        """Wait for ``n`` tokens for at most ``timeout`` seconds (None: as long as it takes)."""
        deadline = None if timeout is None else self._clock() + timeout
        while not self.try_acquire(n):
            wait = self.wait_time(n)
            if deadline is not None and self._clock() + wait > deadline:
                return False
            await self._sleep(wait)
        return True


class SlidingWindowLimiter:
    def __init__(self, limit: int, window_s: float, *, clock: Clock = time.monotonic) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError(f"need limit >= 1 and window_s > 0, got {limit}, {window_s}")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def _trim(self, key: str) -> deque[float]:
        events = self._events.setdefault(key, deque(maxlen=self.limit))
        horizon = self._clock() - self.window_s
        while events and events[0] <= horizon:
            events.popleft()
        return events

    def try_acquire(self, key: str) -> bool:
        events = self._trim(key)
        if len(events) >= self.limit:
            return False
        events.append(self._clock())
        return True

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may be used again (0 if it may now)."""
        events = self._trim(key)
        if len(events) < self.limit:
            return 0.0
        return max(0.0, events[0] + self.window_s - self._clock())

    def count(self, key: str) -> int:
        return len(self._trim(key))
