"""Many coarse deadlines on one loop timer: the per-round bounds of the agent path.

Every agent round arms a stream deadline (:class:`~elaria.lmstudio.connection.StreamGuard`) and
a timeout per tool call, and nearly all of them are disarmed milliseconds later, far from
expiry. With ``loop.call_at`` each one is a timer handle pushed on the loop's heap, cancelled,
and swept out again: several hundred bytecodes per deadline, on the path the agent benchmark
compares with the bare SDK (which bounds nothing). Here they share one loop timer:

* :class:`DeadlineWheel` (one per event loop, :func:`wheel`): ``at(when, callback)`` files an
  entry in a heap of plain tuples and touches the loop's timer only when the new deadline is the
  earliest. ``entry.cancel()`` only marks the entry; marked entries leave the heap when they reach
  its top or, past half the heap, all at once. Due callbacks run in the loop timer's callback,
  in deadline order; an error in one goes to the loop's exception handler, as a timer
  callback's would, and the others still run.
* :func:`timeout` (``async with timeout(seconds):``): :func:`asyncio.timeout` on the wheel, with
  the same contract — the enclosing task is cancelled at the deadline and the block raises
  ``TimeoutError`` (from the ``CancelledError``), unless another cancel of the task is pending,
  which then wins.

Loop-confined: a wheel belongs to the loop it was made for and is used from that loop's thread.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Final

__all__ = ["COMPACT_AFTER", "Deadline", "DeadlineWheel", "Timeout", "timeout", "wheel"]

#: Marked entries are swept out at once when there are this many and they are the heap's
#: majority: a busy loop arms hundreds of deadlines a second, each living seconds or minutes.
COMPACT_AFTER: Final = 256


class Deadline:
    """One filed deadline; :meth:`cancel` withdraws it (idempotent, never raises)."""

    __slots__ = ("callback", "cancelled", "wheel", "when")

    def __init__(self, wheel: DeadlineWheel, when: float, callback: Callable[[], object]) -> None:
        self.wheel = wheel
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            wheel = self.wheel
            wheel._marked += 1
            if wheel._marked >= COMPACT_AFTER:
                wheel._compact()


class DeadlineWheel:
    """The deadlines of one event loop, behind the single loop timer they need at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: The loop's clock, which deadlines are given in.
        self.time: Callable[[], float] = loop.time
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()  # ties break by filing order, never by entry
        self._marked = 0
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")

    def __repr__(self) -> str:
        return (
            f"<DeadlineWheel filed={len(self._heap)} withdrawn={self._marked} "
            f"armed_at={self._armed_at}>"
        )

    def __len__(self) -> int:
        """Deadlines filed and not withdrawn."""
        return len(self._heap) - self._marked

    def at(self, when: float, callback: Callable[[], object]) -> Deadline:
        """Call ``callback()`` once the loop's time reaches ``when``, unless the returned entry
        is cancelled first."""
        entry = Deadline(self, when, callback)
        heapq.heappush(self._heap, (when, next(self._order), entry))
        if when < self._armed_at:
            self._arm(when)
        return entry

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _compact(self) -> None:
        if self._marked * 2 > len(self._heap):
            self._heap = [item for item in self._heap if not item[2].cancelled]
            heapq.heapify(self._heap)
            self._marked = 0

    def _on_timer(self) -> None:
        # The loop runs a timer a clock tick early at most: what it was armed for is due.
        now = max(self._loop.time(), self._armed_at)
        self._timer = None
        self._armed_at = float("inf")
        # self._heap is read afresh each time: a callback may file or withdraw (and so compact).
        while self._heap and (self._heap[0][2].cancelled or self._heap[0][0] <= now):
            entry = heapq.heappop(self._heap)[2]
            if entry.cancelled:
                self._marked -= 1
                continue
            entry.cancelled = True  # fired: a later cancel() is a no-op
            try:
                entry.callback()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # as the loop treats a timer callback's error
                self._loop.call_exception_handler(
                    {"message": "Exception in a deadline callback", "exception": exc}
                )
        if self._heap and self._heap[0][0] < self._armed_at:
            self._arm(self._heap[0][0])


#: Weak both ways: a wheel never keeps a closed loop alive (the wheel refers to its loop), and
#: lives while anything holds it — while a deadline is filed, its armed loop timer does.
_wheels: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.ReferenceType[DeadlineWheel]
] = weakref.WeakKeyDictionary()


def wheel() -> DeadlineWheel:
    """The running loop's wheel (a new one when none is alive: then none has a deadline filed)."""
    loop = asyncio.get_running_loop()
    ref = _wheels.get(loop)
    found = None if ref is None else ref()
    if found is None:
        found = DeadlineWheel(loop)
        _wheels[loop] = weakref.ref(found)
    return found


def timeout(seconds: float) -> Timeout:
    """``async with timeout(seconds):`` — :func:`asyncio.timeout` on the running loop's wheel."""
    return Timeout(seconds)


class Timeout:
    """The context manager :func:`timeout` returns (enter it once)."""

    __slots__ = ("_cancelling", "_entry", "_expired", "_seconds", "_task")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._expired = False
        self._entry: Deadline | None = None

    def expired(self) -> bool:
        """Did the deadline pass while the block ran?"""
        return self._expired

    async def __aenter__(self) -> Timeout:
        if self._entry is not None:
            raise RuntimeError("this timeout has already been entered")
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - every coroutine of ours runs in a task
            raise RuntimeError("timeout() must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        clock = wheel()
        self._entry = clock.at(clock.time() + self._seconds, self._on_deadline)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._entry is not None  # __aenter__ filed it
        self._entry.cancel()
        if (
            self._expired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def _on_deadline(self) -> None:
        self._task.cancel()
        self._expired = True
