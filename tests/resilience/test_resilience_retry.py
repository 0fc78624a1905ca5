from __future__ import annotations

import asyncio

import pytest

from elaria.errors import ElariaTimeoutError, HostDown
from elaria.resilience import ManualClock, retry, with_timeout, with_timeout_and_retry


class Flaky:
    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


async def test_retries_until_success_and_reports_each_retry() -> None:
    clock = ManualClock()
    fn = Flaky([ConnectionError("a"), ConnectionError("b")])
    seen: list[tuple[int, str, float]] = []
    result = await retry(
        fn,
        attempts=3,
        delays=[0.5, 1.0],
        on_retry=lambda n, exc, d: seen.append((n, str(exc), d)),
        sleep=clock.sleep,
    )
    assert result == "ok"
    assert fn.calls == 3
    assert seen == [(1, "a", 0.5), (2, "b", 1.0)]
    assert clock.sleeps == [0.5, 1.0]


async def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    clock = ManualClock()
    fn = Flaky([ConnectionError("1"), ConnectionError("2"), ConnectionError("3"), OSError()])
    with pytest.raises(ConnectionError, match="3"):
        await retry(fn, sleep=clock.sleep, delays=[0, 0, 0])
    assert fn.calls == 3  # the default is three attempts


async def test_non_retryable_errors_are_raised_at_once() -> None:
    fn = Flaky([ValueError("bad request")])
    with pytest.raises(ValueError):
        await retry(fn, retry_on=(ConnectionError,), sleep=ManualClock().sleep)
    assert fn.calls == 1
    fn2 = Flaky([HostDown("gone")])
    with pytest.raises(HostDown):
        await retry(fn2, retry_on=lambda e: False, sleep=ManualClock().sleep)
    assert fn2.calls == 1


async def test_cancellation_is_never_retried_even_if_the_filter_accepts_it() -> None:
    fn = Flaky([asyncio.CancelledError()])
    with pytest.raises(asyncio.CancelledError):
        await retry(fn, retry_on=(BaseException,), sleep=ManualClock().sleep)
    assert fn.calls == 1


async def test_retry_requires_at_least_one_attempt() -> None:
    with pytest.raises(ValueError, match="attempts"):
        await retry(Flaky([]), attempts=0)


async def test_with_timeout_names_the_operation() -> None:
    never = asyncio.Event()
    with pytest.raises(ElariaTimeoutError) as info:
        await with_timeout(never.wait(), 0.01, "probe", where="ws://h:1")
    assert info.value.operation == "probe"
    assert "probe timed out after 0.01 s" in str(info.value)
    assert isinstance(info.value, TimeoutError)


async def test_with_timeout_passes_results_and_outside_cancellation() -> None:
    async def value() -> int:
        return 7

    assert await with_timeout(value(), 1.0, "x") == 7
    started = asyncio.Event()

    async def waiter() -> None:
        started.set()
        await with_timeout(asyncio.Event().wait(), 30.0, "x")

    task = asyncio.create_task(waiter())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_with_timeout_and_retry_bounds_each_attempt() -> None:
    attempts = 0

    async def slow_then_fast() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            await asyncio.Event().wait()
        return "done"

    clock = ManualClock()
    result = await with_timeout_and_retry(
        slow_then_fast, timeout=0.01, operation="list", delays=[0, 0], sleep=clock.sleep
    )
    assert result == "done"
    assert attempts == 3
