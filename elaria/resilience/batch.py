"""Run many async jobs with bounded concurrency, a progress callback and per-job errors.

:meth:`BatchExecutor.run` returns one :class:`Outcome` per job, in input order; a job that raised
has ``error`` set and does not stop the others. Cancelling ``run`` cancels every running job and
propagates; a job's own ``CancelledError`` is not swallowed into an outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BatchExecutor", "Outcome"]

T = TypeVar("T")

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Outcome(Generic[T]):
    index: int
    value: T | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class BatchExecutor:
    def __init__(self, max_concurrency: int, on_progress: ProgressCallback | None = None) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency
        self._on_progress = on_progress

    async def run(self, jobs: Sequence[Callable[[], Awaitable[T]]]) -> list[Outcome[T]]:
        gate = asyncio.Semaphore(self.max_concurrency)
        total = len(jobs)
        done = 0

        async def one(index: int, job: Callable[[], Awaitable[T]]) -> Outcome[T]:
            nonlocal done
            async with gate:
                try:
                    outcome: Outcome[T] = Outcome(index, value=await job())
                except Exception as exc:
                    outcome = Outcome(index, error=exc)
            done += 1
            if self._on_progress is not None:
                self._on_progress(done, total)
            return outcome

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(i, job)) for i, job in enumerate(jobs)]
        return [t.result() for t in tasks]
