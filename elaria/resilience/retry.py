"""Retry and deadlines for async callables.

* :func:`retry` calls ``fn`` up to ``attempts`` times, waiting the next value of ``delays``
  between tries. Only errors accepted by ``retry_on`` are retried. A cancellation is **never**
  retried, whatever ``retry_on`` says (tenacity's ``retry_if_not_exception_type`` does retry it).
* :func:`with_timeout` bounds one await and raises :class:`~elaria.errors.ElariaTimeoutError`
  naming the operation; :func:`with_timeout_and_retry` bounds each attempt and retries timeouts.

State lives in each call, never in a shared object, so concurrent tasks cannot corrupt each
other's attempt counts. ``sleep`` is injectable so tests need no real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TypeVar

from elaria.errors import ElariaTimeoutError
from elaria.resilience.backoff import delays as default_delays

__all__ = ["DEFAULT_ATTEMPTS", "RetryPredicate", "retry", "with_timeout", "with_timeout_and_retry"]

T = TypeVar("T")

#: Three tries: one blip is common, two in a row means "fail over", not "try harder".
DEFAULT_ATTEMPTS = 3

RetryPredicate = Callable[[BaseException], bool] | tuple[type[BaseException], ...]
OnRetry = Callable[[int, BaseException, float], None]
Sleep = Callable[[float], Awaitable[None]]


def _accepts(retry_on: RetryPredicate, exc: BaseException) -> bool:
    if isinstance(exc, asyncio.CancelledError):
        return False
    if isinstance(retry_on, tuple):
        return isinstance(exc, retry_on)
    return retry_on(exc)


async def retry(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    retry_on: RetryPredicate = (Exception,),
    delays: Iterable[float] | None = None,
    on_retry: OnRetry | None = None,
    sleep: Sleep = asyncio.sleep,
) -> T:
    """Await ``fn()`` until it succeeds, fails with a non-retryable error, or attempts run out.

    ``on_retry(attempt, exc, delay)`` runs before each wait (attempt is 1-based: the one that
    failed). The last error is re-raised unchanged.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    schedule: Iterator[float] = iter(default_delays() if delays is None else delays)
    attempt = 1
    while True:
        try:
            return await fn()
        except BaseException as exc:
            if attempt >= attempts or not _accepts(retry_on, exc):
                raise
            delay = next(schedule, 0.0)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
        await sleep(delay)
        attempt += 1


async def with_timeout(
    awaitable: Awaitable[T],
    seconds: float,
    operation: str,
    *,
    where: str | None = None,
) -> T:
    """Await with a deadline; on expiry raise ``ElariaTimeoutError(operation, seconds)``.

    A cancellation from outside propagates as ``CancelledError``, never as a timeout.
    """
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError as exc:
        if isinstance(exc, ElariaTimeoutError):
            raise
        raise ElariaTimeoutError(operation, seconds, where=where) from exc


async def with_timeout_and_retry(
    fn: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    operation: str,
    attempts: int = DEFAULT_ATTEMPTS,
    retry_on: RetryPredicate = (TimeoutError, ConnectionError),
    delays: Iterable[float] | None = None,
    on_retry: OnRetry | None = None,
    sleep: Sleep = asyncio.sleep,
) -> T:
    """Each attempt gets its own ``timeout``; timeouts (and ``retry_on`` errors) are retried."""

    async def attempt() -> T:
        return await with_timeout(fn(), timeout, operation)

    return await retry(
        attempt,
        attempts=attempts,
        retry_on=retry_on,
        delays=delays,
        on_retry=on_retry,
        sleep=sleep,
    )
