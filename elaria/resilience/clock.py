"""A manual clock for tests of time-based code (shipped, so users can test their own policies).

``ManualClock()`` is callable like ``time.monotonic``; its :meth:`~ManualClock.sleep` advances
the clock instead of waiting (and records each wait), so a test of a backoff or a rate limiter
runs in microseconds. Loop-confined; not thread-safe.
"""

from __future__ import annotations

import asyncio

__all__ = ["ManualClock"]


class ManualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not run backwards")
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        # Yield like a real sleep so other tasks get a turn.
        await asyncio.sleep(0)
