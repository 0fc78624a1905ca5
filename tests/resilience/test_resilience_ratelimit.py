from __future__ import annotations

import asyncio

import pytest

from elaria.resilience import BatchExecutor, ManualClock, SlidingWindowLimiter, TokenBucket


def test_bucket_starts_full_and_refills_at_rate() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=2.0, capacity=3, clock=clock)
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    clock.advance(100)
    assert bucket.tokens == 3  # never above capacity


async def test_acquire_waits_for_the_refill() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=4.0, capacity=1, clock=clock, sleep=clock.sleep)
    assert await bucket.acquire(timeout=1.0)
    assert await bucket.acquire(timeout=1.0)
    assert clock.sleeps == [pytest.approx(0.25)]


async def test_acquire_gives_up_when_the_wait_exceeds_the_timeout() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=1.0, capacity=1, clock=clock, sleep=clock.sleep)
    bucket.try_acquire()
    assert not await bucket.acquire(timeout=0.5)
    assert clock.sleeps == []  # it did not sleep for nothing


def test_bucket_rejects_impossible_requests() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0, capacity=1)
    with pytest.raises(ValueError, match="cannot take"):
        TokenBucket(rate=1, capacity=1).try_acquire(2)


def test_sliding_window_limits_per_key() -> None:
    clock = ManualClock()
    limiter = SlidingWindowLimiter(limit=2, window_s=60, clock=clock)
    assert limiter.try_acquire("read_file")
    clock.advance(10)
    assert limiter.try_acquire("read_file")
    assert not limiter.try_acquire("read_file")
    assert limiter.try_acquire("write_file")  # other keys are independent
    assert limiter.retry_after("read_file") == pytest.approx(50)
    clock.advance(50.1)
    assert limiter.count("read_file") == 1
    assert limiter.try_acquire("read_file")
    with pytest.raises(ValueError, match="limit"):
        SlidingWindowLimiter(limit=0, window_s=1)


async def test_batch_bounds_concurrency_and_keeps_errors_per_job() -> None:
    running = 0
    peak = 0
    progress: list[tuple[int, int]] = []

    def job(i: int):  # type: ignore[no-untyped-def]
        async def run() -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0)
            running -= 1
            if i == 3:
                raise RuntimeError("job 3 broke")
            return i * 10

        return run

    executor = BatchExecutor(max_concurrency=2, on_progress=lambda d, t: progress.append((d, t)))
    outcomes = await executor.run([job(i) for i in range(6)])
    assert peak == 2
    assert [o.value for o in outcomes] == [0, 10, 20, None, 40, 50]
    assert not outcomes[3].ok
    assert str(outcomes[3].error) == "job 3 broke"
    assert progress[-1] == (6, 6)
    assert len(progress) == 6
    with pytest.raises(ValueError, match="max_concurrency"):
        BatchExecutor(0)


def test_resilience_public_surface() -> None:
    import elaria.resilience as package

    assert all(hasattr(package, name) for name in package.__all__)
    assert {"CircuitBreaker", "classify", "delays", "retry", "TokenBucket"} <= set(package.__all__)
