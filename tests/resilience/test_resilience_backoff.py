from __future__ import annotations

import itertools

import pytest

from elaria.resilience import ManualClock, ReconnectBackoff, delays
from elaria.resilience.backoff import ceiling


def test_ceiling_doubles_from_initial_to_cap() -> None:
    bounds = [ceiling(n, initial=1.0, cap=30.0) for n in range(8)]
    assert bounds == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert ceiling(10_000, initial=1.0, cap=30.0) == 30.0


def test_delays_are_full_jitter_below_the_ceiling() -> None:
    top = list(itertools.islice(delays(1.0, 30.0, rng=lambda: 1.0), 7))
    bottom = list(itertools.islice(delays(1.0, 30.0, rng=lambda: 0.0), 7))
    assert top == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert bottom == [0.0] * 7


def test_jitter_is_kept_at_the_cap() -> None:
    values = iter([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.75])
    schedule = list(itertools.islice(delays(1.0, 30.0, rng=lambda: next(values)), 8))
    assert schedule[-2:] == [7.5, 22.5]  # at the cap, still spread over [0, 30]


def test_invalid_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="initial"):
        next(delays(0.0, 1.0))
    with pytest.raises(ValueError, match="initial"):
        ReconnectBackoff(initial=5.0, cap=1.0, clock=ManualClock())
    with pytest.raises(ValueError, match="attempt"):
        ceiling(-1, initial=1.0, cap=2.0)


def test_backoff_grows_while_connections_drop_at_once() -> None:
    clock = ManualClock()
    backoff = ReconnectBackoff(
        initial=1.0, cap=8.0, stable_after_s=10.0, clock=clock, rng=lambda: 1
    )
    seen = []
    for _ in range(6):
        delay = backoff.next_delay()
        seen.append(delay)
        clock.advance(delay)
        backoff.connected()  # accept...
        clock.advance(0.01)
        backoff.disconnected()  # ...then drop: must not reset the schedule
    assert seen == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_resets_after_a_stable_connection() -> None:
    clock = ManualClock()
    backoff = ReconnectBackoff(
        initial=1.0, cap=8.0, stable_after_s=10.0, clock=clock, rng=lambda: 1
    )
    for _ in range(3):
        backoff.next_delay()
    backoff.connected()
    clock.advance(9.9)
    backoff.still_up()
    assert backoff.attempt == 3
    clock.advance(0.2)
    backoff.still_up()
    assert backoff.attempt == 0
    assert backoff.next_delay() == 1.0


def test_stability_is_also_judged_at_disconnect() -> None:
    clock = ManualClock()
    backoff = ReconnectBackoff(initial=1.0, cap=8.0, stable_after_s=5.0, clock=clock, rng=lambda: 1)
    backoff.next_delay()
    backoff.next_delay()
    backoff.connected()
    clock.advance(6.0)
    backoff.disconnected()
    assert backoff.next_delay() == 1.0
