from __future__ import annotations

import asyncio

import pytest
from loguru import logger

from elaria.errors import CircuitOpenError, ContextOverflowError, HostDown
from elaria.resilience import BreakerRegistry, BreakerState, CircuitBreaker, ManualClock


def make(clock: ManualClock, **kw: object) -> CircuitBreaker:
    return CircuitBreaker("host:test", failure_threshold=3, reset_timeout_s=10.0, clock=clock, **kw)  # type: ignore[arg-type]


def state(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state


def fail(breaker: CircuitBreaker, exc: BaseException | None = None) -> None:
    permit = breaker.acquire()
    breaker.record_failure(permit, exc or HostDown("down"))


def test_opens_after_threshold_failures_in_a_row() -> None:
    clock = ManualClock()
    breaker = make(clock)
    fail(breaker)
    fail(breaker)
    assert state(breaker) is BreakerState.CLOSED
    fail(breaker)
    assert state(breaker) is BreakerState.OPEN
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.retry_after == pytest.approx(10.0)


def test_default_threshold_is_five() -> None:
    breaker = CircuitBreaker("x", clock=ManualClock())
    for _ in range(4):
        fail(breaker)
    assert state(breaker) is BreakerState.CLOSED
    fail(breaker)
    assert state(breaker) is BreakerState.OPEN


def test_a_success_resets_the_failure_count() -> None:
    breaker = make(ManualClock())
    fail(breaker)
    fail(breaker)
    breaker.record_success(breaker.acquire())
    fail(breaker)
    fail(breaker)
    assert state(breaker) is BreakerState.CLOSED


def test_half_open_after_timeout_then_closed_on_probe_success() -> None:
    clock = ManualClock()
    breaker = make(clock)
    for _ in range(3):
        fail(breaker)
    clock.advance(9.9)
    assert state(breaker) is BreakerState.OPEN
    clock.advance(0.2)
    assert state(breaker) is BreakerState.HALF_OPEN
    probe = breaker.acquire()
    assert probe.probe
    assert breaker.try_acquire() is None  # only one probe
    breaker.record_success(probe)
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.stats()["transitions"] == 3


def test_failed_probe_reopens_for_a_full_timeout() -> None:
    clock = ManualClock()
    breaker = make(clock)
    for _ in range(3):
        fail(breaker)
    clock.advance(10)
    fail(breaker)
    assert state(breaker) is BreakerState.OPEN
    assert breaker.retry_after() == pytest.approx(10.0)


def test_cancellations_never_count_and_give_the_probe_back() -> None:
    clock = ManualClock()
    breaker = make(clock)
    for _ in range(10):
        fail(breaker, asyncio.CancelledError())
    assert state(breaker) is BreakerState.CLOSED
    for _ in range(3):
        fail(breaker)
    clock.advance(10)
    probe = breaker.acquire()
    breaker.record_failure(probe, asyncio.CancelledError())
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.acquire().probe  # the slot came back


def test_caller_errors_do_not_count() -> None:
    breaker = make(ManualClock(), counts=lambda e: not isinstance(e, ContextOverflowError))
    for _ in range(10):
        fail(breaker, ContextOverflowError("too long"))
    assert state(breaker) is BreakerState.CLOSED


def test_stragglers_do_not_reopen_or_count_twice() -> None:
    clock = ManualClock()
    breaker = make(clock)
    old = [breaker.acquire() for _ in range(5)]
    for permit in old[:3]:
        breaker.record_failure(permit, HostDown("x"))
    clock.advance(10)
    probe = breaker.acquire()
    breaker.record_failure(old[3], HostDown("late"))  # from before it opened
    assert state(breaker) is BreakerState.HALF_OPEN
    breaker.record_success(probe)
    assert state(breaker) is BreakerState.CLOSED


async def test_exactly_one_half_open_probe_under_100_concurrent_callers() -> None:
    clock = ManualClock()
    breaker = make(clock)
    for _ in range(3):
        fail(breaker)
    clock.advance(10)
    release = asyncio.Event()
    entered = 0

    async def caller() -> str:
        nonlocal entered
        try:
            async with breaker.guard():
                entered += 1
                await asyncio.wait_for(release.wait(), 5)
                return "ran"
        except CircuitOpenError:
            return "refused"

    tasks = [asyncio.create_task(caller()) for _ in range(100)]
    await asyncio.sleep(0)  # every caller reaches the breaker before the probe finishes
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert results.count("ran") == 1
    assert results.count("refused") == 99
    assert entered == 1
    assert state(breaker) is BreakerState.CLOSED


async def test_cancelled_callers_never_trip_the_breaker() -> None:
    breaker = make(ManualClock())
    started = asyncio.Event()

    async def hang() -> None:
        async with breaker.guard():
            started.set()
            await asyncio.Event().wait()

    for _ in range(10):
        started.clear()
        task = asyncio.create_task(hang())
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.stats()["consecutive_failures"] == 0


def test_state_changes_are_logged_with_kind_breaker() -> None:
    records: list[dict[str, object]] = []
    sink = logger.add(lambda m: records.append(dict(m.record["extra"])), level="INFO")
    try:
        clock = ManualClock()
        breaker = make(clock)
        for _ in range(3):
            fail(breaker)
    finally:
        logger.remove(sink)
    assert records[-1]["kind"] == "breaker"
    assert records[-1]["new"] == "open"
    assert records[-1]["old"] == "closed"


def test_registry_keys_per_host_and_per_model() -> None:
    registry = BreakerRegistry(failure_threshold=1, clock=ManualClock())
    host = registry.for_host("ws://a:1")
    assert registry.for_host("ws://a:1") is host
    model = registry.for_model("ws://a:1", "m")
    assert model is not host
    assert registry.for_model("ws://a:1", "m") is model
    fail(model)
    stats = registry.stats()
    assert stats["models"]["ws://a:1/m"]["state"] == "open"
    assert stats["hosts"]["ws://a:1"]["state"] == "closed"
    assert "open" in repr(model)


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker("x", failure_threshold=0)


def test_outside_evidence_lets_a_probe_through_early() -> None:
    clock = ManualClock()
    breaker = make(clock)
    for _ in range(3):
        fail(breaker)
    breaker.allow_probe("health probe passed")
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.acquire().probe
    assert breaker.try_acquire() is None  # still exactly one probe
    breaker.allow_probe("again")  # only acts on OPEN
    assert state(breaker) is BreakerState.HALF_OPEN
