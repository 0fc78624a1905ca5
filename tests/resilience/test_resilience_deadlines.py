"""The deadline wheel and its timeout: many deadlines on one loop timer, asyncio.timeout's
contract kept."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

from elaria.resilience import deadlines
from elaria.resilience.deadlines import COMPACT_AFTER, DeadlineWheel, timeout, wheel

#: Bound for waits on things that happen promptly; generous for a busy machine.
PROMPT_S = 5.0
FAR_S = 600.0


def count_loop_timers(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record every loop timer armed from now on (the real loop's call_at, counted)."""
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    real_call_at = loop.call_at

    def call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        armed.append(when)
        return real_call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", call_at)
    return armed


async def test_later_deadlines_share_the_loop_timer_of_the_earliest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = DeadlineWheel(asyncio.get_running_loop())
    armed = count_loop_timers(monkeypatch)
    now = clock.time()
    entries = [clock.at(now + FAR_S + i, lambda: None) for i in range(100)]
    assert armed == [now + FAR_S]
    assert len(clock) == 100
    for entry in entries:
        entry.cancel()
    assert len(clock) == 0
    assert armed == [now + FAR_S]  # withdrawing touches no loop timer either


async def test_an_earlier_deadline_rearms_and_fires_in_order() -> None:
    clock = DeadlineWheel(asyncio.get_running_loop())
    fired: list[str] = []
    done = asyncio.Event()
    now = clock.time()

    def second() -> None:
        fired.append("second")
        done.set()

    clock.at(now + FAR_S, lambda: fired.append("far"))
    clock.at(now + 0.02, second)
    clock.at(now + 0.01, lambda: fired.append("first"))
    async with asyncio.timeout(PROMPT_S):
        await done.wait()
    assert fired == ["first", "second"]
    assert clock.time() >= now + 0.02
    assert len(clock) == 1  # the far one is still filed
    assert "armed_at" in repr(clock)
    assert "filed=1" in repr(clock)


async def test_a_withdrawn_deadline_never_fires_and_cancel_is_idempotent() -> None:
    clock = DeadlineWheel(asyncio.get_running_loop())
    fired: list[str] = []
    done = asyncio.Event()
    now = clock.time()
    withdrawn = clock.at(now + 0.01, lambda: fired.append("withdrawn"))
    clock.at(now + 0.02, done.set)
    withdrawn.cancel()
    withdrawn.cancel()
    assert len(clock) == 1
    async with asyncio.timeout(PROMPT_S):
        await done.wait()
    assert fired == []
    assert len(clock) == 0
    assert "withdrawn=0" in repr(clock)  # the marked entry left the heap when it reached the top


async def test_cancel_after_the_deadline_fired_changes_nothing() -> None:
    clock = DeadlineWheel(asyncio.get_running_loop())
    done = asyncio.Event()
    entry = clock.at(clock.time(), done.set)
    async with asyncio.timeout(PROMPT_S):
        await done.wait()
    entry.cancel()
    assert len(clock) == 0
    assert "withdrawn=0" in repr(clock)


async def test_withdrawn_entries_are_swept_out_once_they_are_the_majority() -> None:
    clock = DeadlineWheel(asyncio.get_running_loop())
    now = clock.time()
    keep = [clock.at(now + FAR_S, lambda: None) for _ in range(10)]
    for _ in range(COMPACT_AFTER * 4):
        clock.at(now + FAR_S, lambda: None).cancel()
    # Without the sweep the heap would hold every withdrawn entry until its deadline.
    filed = int(repr(clock).split("filed=")[1].split()[0])
    assert len(keep) <= filed < len(keep) + COMPACT_AFTER
    assert len(clock) == len(keep)


async def test_a_failing_callback_is_reported_and_the_others_still_run() -> None:
    loop = asyncio.get_running_loop()
    clock = DeadlineWheel(loop)
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    done = asyncio.Event()
    now = clock.time()

    def broken() -> None:
        raise ValueError("boom")

    clock.at(now + 0.01, broken)
    clock.at(now + 0.01, done.set)
    try:
        async with asyncio.timeout(PROMPT_S):
            await done.wait()
    finally:
        loop.set_exception_handler(None)
    assert [type(c["exception"]) for c in reported] == [ValueError]
    assert "deadline callback" in reported[0]["message"]


async def test_a_callback_may_file_the_next_deadline() -> None:
    clock = DeadlineWheel(asyncio.get_running_loop())
    hops: list[int] = []
    done = asyncio.Event()

    def hop() -> None:
        hops.append(len(hops))
        if len(hops) < 3:
            clock.at(clock.time() + 0.005, hop)
        else:
            done.set()

    clock.at(clock.time() + 0.005, hop)
    async with asyncio.timeout(PROMPT_S):
        await done.wait()
    assert hops == [0, 1, 2]


async def test_each_loop_has_its_own_wheel() -> None:
    here = wheel()
    assert wheel() is here

    def elsewhere() -> DeadlineWheel:
        return asyncio.run(_current_wheel())

    other = await asyncio.to_thread(elsewhere)
    assert other is not here
    assert wheel() is here


async def _current_wheel() -> DeadlineWheel:
    return wheel()


# --------------------------------------------------------------------------- timeout()


async def test_timeout_expires_into_timeout_error_and_leaves_no_cancel_behind() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    scope = timeout(0.01)
    with pytest.raises(TimeoutError) as info:
        async with scope:
            await never
    assert isinstance(info.value.__cause__, asyncio.CancelledError)
    assert scope.expired()
    assert never.cancelled()
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_a_block_that_ends_in_time_is_never_cancelled_later() -> None:
    scope = timeout(0.01)
    async with scope:
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)  # past the deadline
    assert not scope.expired()
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_an_outside_cancel_racing_the_deadline_wins() -> None:
    entered = asyncio.Event()
    scope = timeout(FAR_S)

    async def guarded() -> None:
        async with scope:
            entered.set()
            await asyncio.get_running_loop().create_future()

    task = asyncio.create_task(guarded())
    async with asyncio.timeout(PROMPT_S):
        await entered.wait()
    task.cancel()  # from outside, then the deadline in the same loop iteration
    scope._on_deadline()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert scope.expired()


async def test_nested_timeouts_each_answer_for_their_own_deadline() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    outer = timeout(FAR_S)
    inner = timeout(0.01)
    async with outer:
        with pytest.raises(TimeoutError):
            async with inner:
                await never
    assert inner.expired()
    assert not outer.expired()

    outer = timeout(0.01)
    inner = timeout(FAR_S)

    async def outer_expires() -> None:
        async with outer, inner:
            await asyncio.get_running_loop().create_future()

    with pytest.raises(TimeoutError):
        await outer_expires()
    assert outer.expired()
    assert not inner.expired()


async def test_a_timeout_is_entered_once() -> None:
    scope = timeout(FAR_S)
    async with scope:
        pass
    with pytest.raises(RuntimeError, match="already been entered"):
        async with scope:
            pytest.fail("the block must not run")


def test_the_module_names_what_it_exports() -> None:
    assert set(deadlines.__all__) == {
        "COMPACT_AFTER",
        "Deadline",
        "DeadlineWheel",
        "Timeout",
        "timeout",
        "wheel",
    }


def test_a_closed_loop_is_not_kept_alive_by_its_wheel() -> None:
    async def uses_deadlines() -> DeadlineWheel:
        async with timeout(FAR_S):  # leaves the wheel's loop timer armed 600 s out
            await asyncio.sleep(0)
        return wheel()

    loop = asyncio.new_event_loop()
    try:
        used = loop.run_until_complete(uses_deadlines())
    finally:
        loop.close()
    loop_ref = weakref.ref(loop)
    wheel_ref = weakref.ref(used)
    del loop, used
    gc.collect()
    assert loop_ref() is None
    assert wheel_ref() is None
