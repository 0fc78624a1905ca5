"""The stream guard: every deadline of a prediction, eviction, and outside cancellation.

Through the real SDK and the embedded server where a prediction is the subject; the guard's own
race rules with plain futures (it never touches the client).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from elaria.config import LMStudioSettings
from elaria.embedded import EmbeddedServer, ScriptedEngine, reply
from elaria.errors import ElariaTimeoutError, HostDown
from elaria.lmstudio.connection import Connection, StreamGuard
from elaria.lmstudio.pool import ClientPool
from elaria.lmstudio.predict import predict_round
from elaria.lmstudio.rounds import RoundRequest

#: Bound for waits on things that happen promptly; generous for a busy machine.
PROMPT_S = 5.0


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


async def wait_for_server_stop(engine: ScriptedEngine) -> None:
    async with asyncio.timeout(PROMPT_S):
        while ("stopped", 1) not in engine.log:
            await asyncio.sleep(0.01)


async def test_a_stalled_stream_times_out_on_the_gap_and_is_cancelled_on_the_server(
    server: EmbeddedServer, engine: ScriptedEngine
) -> None:
    gate = asyncio.Event()
    engine.script(reply("one two three", gate=gate, gate_after=1))
    settings = LMStudioSettings(
        hosts=[server.ws_url], first_token_timeout_ms=30_000, fragment_gap_timeout_ms=300
    )
    fragments: list[str] = []
    async with ClientPool(settings) as pool, pool.lease(server.ws_url) as lease:
        handle = await pool.model_handle(lease, "scripted-llm")
        with pytest.raises(ElariaTimeoutError) as info:
            await predict_round(
                lease, handle.identifier, RoundRequest([user("x")]), settings, fragments.append
            )
        assert info.value.operation == "gap between fragments"
        assert info.value.seconds == 0.3
        await wait_for_server_stop(engine)
    assert fragments == ["one"]


async def test_a_stream_that_keeps_going_hits_the_whole_prediction_deadline(
    server: EmbeddedServer, engine: ScriptedEngine
) -> None:
    # Ten fragments a second never break the 3 s gap, but 100 of them outlast the 1 s deadline.
    engine.script(reply(" ".join(["word"] * 100), tokens_per_second=10))
    settings = LMStudioSettings(
        hosts=[server.ws_url],
        timeout_ms=1_000,
        first_token_timeout_ms=3_000,
        fragment_gap_timeout_ms=3_000,
    )
    fragments: list[str] = []
    async with ClientPool(settings) as pool, pool.lease(server.ws_url) as lease:
        handle = await pool.model_handle(lease, "scripted-llm")
        with pytest.raises(ElariaTimeoutError) as info:
            await predict_round(
                lease, handle.identifier, RoundRequest([user("x")]), settings, fragments.append
            )
        # Reported with the whole budget, not the remainder that was left for the last await.
        assert info.value.operation == "prediction"
        assert info.value.seconds == 1.0
        await wait_for_server_stop(engine)
    assert 0 < len(fragments) < 100


def detached_connection() -> Connection:
    """A connection whose client is never used: the guard only watches ``lost``."""
    return Connection(cast(Any, None), 1, cast(Any, None), asyncio.Event())


async def test_eviction_interrupts_the_await_and_raises_host_down() -> None:
    conn = detached_connection()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def evicted_while_waiting() -> None:
        async with StreamGuard("ws://h:1", conn) as guard:
            guard.expect("first token", 60)
            asyncio.get_running_loop().call_soon(conn.mark_lost)
            await never

    with pytest.raises(HostDown, match="connection lost during first token"):
        await evicted_while_waiting()
    assert never.cancelled()
    assert cast(asyncio.Task[Any], asyncio.current_task()).cancelling() == 0


async def test_an_already_lost_connection_is_refused_before_any_await() -> None:
    conn = detached_connection()
    conn.mark_lost()
    with pytest.raises(HostDown, match="replaced"):
        async with StreamGuard("ws://h:1", conn):
            pytest.fail("the block must not run")


async def test_an_earlier_deadline_rearms_the_timer() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def shortened() -> None:
        async with asyncio.timeout(PROMPT_S), StreamGuard("ws://h:1", detached_connection()) as g:
            g.expect("first token", 600)
            g.expect("gap between fragments", 0.01)
            await never

    with pytest.raises(ElariaTimeoutError) as info:
        await shortened()
    assert info.value.operation == "gap between fragments"
    assert never.cancelled()


async def test_a_deadline_moved_later_does_not_fire_early() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str] = loop.create_future()
    async with StreamGuard("ws://h:1", detached_connection()) as guard:
        guard.expect("first token", 0.01)
        guard.expect("gap between fragments", 600)  # the 0.01 s timer is still armed
        loop.call_later(0.1, done.set_result, "arrived")
        assert await done == "arrived"


async def test_an_outside_cancellation_wins_over_a_deadline_that_fires_with_it() -> None:
    conn = detached_connection()
    entered = asyncio.Event()
    guard_ref: list[StreamGuard] = []

    async def stream() -> None:
        async with StreamGuard("ws://h:1", conn) as guard:
            guard_ref.append(guard)
            guard.expect("first token", 600)
            entered.set()
            await asyncio.get_running_loop().create_future()

    task = asyncio.create_task(stream())
    await asyncio.wait_for(entered.wait(), PROMPT_S)
    task.cancel()  # from outside, then our eviction in the same loop iteration
    conn.mark_lost()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert guard_ref[0]._fired is not None  # ours fired too, and gave way


async def test_a_block_that_ends_in_time_leaves_no_timer_and_no_subscription() -> None:
    conn = detached_connection()
    async with StreamGuard("ws://h:1", conn) as guard:
        guard.expect("first token", 0.01)
    conn.mark_lost()  # after the block: must not cancel this task
    await asyncio.sleep(0.05)  # past the deadline: the disarmed timer must not cancel either
    assert guard._timer is None
    assert cast(asyncio.Task[Any], asyncio.current_task()).cancelling() == 0


async def test_an_eviction_by_the_guarded_task_itself_fails_the_next_step() -> None:
    conn = detached_connection()

    async def evicts_itself() -> None:
        async with StreamGuard("ws://h:1", conn) as guard:
            guard.expect("first token", 600)
            conn.mark_lost()  # synchronously, from this very task
            guard.expect("gap between fragments", 600)

    with pytest.raises(HostDown, match="connection lost during first token"):
        await evicts_itself()
    await asyncio.sleep(0)  # no stray cancel left behind for the next await
    assert cast(asyncio.Task[Any], asyncio.current_task()).cancelling() == 0
