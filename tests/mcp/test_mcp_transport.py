"""A child that will not stop on request is killed, and its exit is seen before terminate returns.

asyncio counts a child whose exit it has not recorded as running: its transport then warns
(``ResourceWarning: subprocess N is still running``) whenever it is collected, possibly in some
later, unrelated test. ``terminate`` waits for the record after the SIGKILL.
"""

from __future__ import annotations

import sys

import anyio

from elaria.mcp.transport import ChildProcess

#: A child that ignores stdin closing and SIGTERM, and says when it is ready to be stopped.
STUBBORN = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


async def test_a_child_ignoring_sigterm_is_killed_and_reaped() -> None:
    child = await ChildProcess.spawn("stubborn", sys.executable, ["-c", STUBBORN])
    assert await child.stdout.readline() == b"ready\n"  # SIGTERM is ignored from here on
    await child.terminate()
    assert child.exited.is_set()
    assert child.returncode is not None
    assert child.returncode < 0  # killed by a signal, not exited by itself


async def test_a_child_torn_down_inside_an_expired_cancel_scope_is_still_reaped() -> None:
    # The supervisor's start deadline is an anyio scope: when it expires, every await of the
    # teardown inside it is cancelled at once, terminate's own waits included.
    child = await ChildProcess.spawn("stubborn", sys.executable, ["-c", STUBBORN])
    assert await child.stdout.readline() == b"ready\n"
    with anyio.CancelScope() as scope:
        scope.cancel()
        await child.terminate()
    assert child.exited.is_set()
    assert child.returncode is not None
    assert child.returncode < 0
