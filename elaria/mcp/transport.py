"""Stdio children we own: spawn in a new process group, pipe JSON-RPC, kill the whole group.

The SDK's ``stdio_client`` hides the process, so it cannot report a pid, watch RSS, or notice that
``npx`` died while the ``node`` it started still holds the pipes. Here :class:`ChildProcess`
spawns the server itself (``start_new_session=True``: the child leads its own process group, so
one ``killpg`` reaches ``npx``, its shell and its ``node``), and :func:`child_streams` connects the
SDK's session to the pipes with the same ``SessionMessage`` stream contract the SDK uses.

Every live group is also recorded process-wide; :func:`install_exit_cleanup` kills them all at
interpreter exit and on SIGTERM (then lets the previous SIGTERM behaviour run), so a bridge that
never reached ``aclose`` orphans nothing.

Loop confinement: a :class:`ChildProcess` belongs to the event loop that spawned it.
:meth:`ChildProcess.kill_group` is also safe from a signal handler (plain ``os.killpg``).
Cancelling :meth:`ChildProcess.terminate` still kills the group (the kill runs first).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import mcp_types as types
import psutil
from mcp.client._transport import TransportStreams
from mcp.shared.message import SessionMessage

__all__ = ["ChildProcess", "child_streams", "install_exit_cleanup", "live_groups"]

#: Longest JSON-RPC line we accept from a child (a file read can be large); bounded, not infinite.
MAX_LINE_BYTES = 32 * 1024 * 1024
#: Grace for a child to exit by itself after its stdin closes (the MCP shutdown sequence).
STDIN_CLOSE_GRACE_S = 1.0
#: Grace between SIGTERM and SIGKILL to the group.
SIGTERM_GRACE_S = 1.0
#: After SIGKILL, how long to wait for the exit to be recorded: asyncio still counts a child
#: whose exit it has not seen as running, and its transport then warns when collected.
KILL_REAP_GRACE_S = 2.0
#: Poll interval for the exit status where pidfd is unavailable (and for the reaper's lag).
EXIT_POLL_S = 0.01
#: How many stderr lines we keep for error messages.
STDERR_TAIL_LINES = 20
#: Environment a child inherits by default (secrets in other variables stay with us).
INHERITED_ENV = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "TMPDIR", "NODE_PATH")

_LIVE_GROUPS: set[int] = set()
_cleanup_installed = False


def live_groups() -> frozenset[int]:
    """Process groups spawned here and not yet killed (for tests and the health view)."""
    return frozenset(_LIVE_GROUPS)


class ChildProcess:
    """One spawned server process and its process group."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        name: str,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self._proc = proc
        self.name = name
        self._on_exit = on_exit
        self.pid = proc.pid
        self.exited = asyncio.Event()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._tasks = [
            asyncio.create_task(self._wait(), name=f"mcp-{name}-wait"),
            asyncio.create_task(self._drain_stderr(), name=f"mcp-{name}-stderr"),
        ]
        _LIVE_GROUPS.add(self.pid)

    @classmethod
    async def spawn(
        cls,
        name: str,
        command: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> ChildProcess:
        """Start ``command`` in a new session; raises ``OSError`` if it cannot be executed."""
        full_env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        full_env.update(env or {})
        proc = await asyncio.create_subprocess_exec(
            command,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
            limit=MAX_LINE_BYTES,
        )
        return cls(proc, name, on_exit)

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def rss_bytes(self) -> int:
        """Resident memory of the child and all its descendants (0 once gone)."""
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def stderr_text(self) -> str:
        return " | ".join(self.stderr_tail)

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal every process of the group; a group already gone is fine."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        if sig == signal.SIGKILL:
            _LIVE_GROUPS.discard(self.pid)

    async def terminate(self) -> None:
        """MCP shutdown: close stdin, wait a little, SIGTERM the group, then SIGKILL it.

        Shielded from the caller's cancel scope (the supervisor tears a child down inside its
        expired start deadline): cut short, the teardown would skip the grace periods and leave
        the child unreaped. It is bounded by the graces, a few seconds at most."""
        with anyio.CancelScope(shield=True):
            await self._terminate()

    async def _terminate(self) -> None:
        try:
            if self._proc.stdin is not None and not self._proc.stdin.is_closing():
                self._proc.stdin.close()
            if not self.exited.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STDIN_CLOSE_GRACE_S):
                        await self.exited.wait()
            if not self.exited.is_set():
                self.kill_group(signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SIGTERM_GRACE_S):
                        await self.exited.wait()
        finally:
            # Always, even after a clean exit: a grandchild may outlive its parent.
            self.kill_group(signal.SIGKILL)
            if not self.exited.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(KILL_REAP_GRACE_S):
                        await self.exited.wait()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _wait(self) -> None:
        # Not ``Process.wait()``: it also waits for the pipes to close, and a grandchild (the
        # ``node`` that ``npx`` started) keeps them open after the child itself died.
        try:
            pidfd: int | None = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3, or already reaped
            pidfd = None
        if pidfd is not None:
            readable = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_reader(pidfd, readable.set)
            try:
                await readable.wait()
            finally:
                loop.remove_reader(pidfd)
                os.close(pidfd)
        # The child watcher reaps and records the status moments after the exit itself.
        while self._proc.returncode is None:
            await asyncio.sleep(EXIT_POLL_S)
        self.exited.set()
        if self._on_exit is not None:
            self._on_exit()

    async def _drain_stderr(self) -> None:
        stream = self._proc.stderr
        assert stream is not None
        with contextlib.suppress(ValueError, ConnectionError):
            while line := await stream.readline():
                text = line.decode("utf-8", "replace").rstrip()
                if text:
                    self.stderr_tail.append(text[:500])

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self._proc.stdout is not None
        return self._proc.stdout

    @property
    def stdin(self) -> asyncio.StreamWriter:
        assert self._proc.stdin is not None
        return self._proc.stdin


@contextlib.asynccontextmanager
async def child_streams(child: ChildProcess) -> AsyncIterator[TransportStreams]:
    """The SDK transport contract over ``child``'s pipes. The read side ends when stdout does."""
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)

    async def reader() -> None:
        async with read_writer:
            while True:
                try:
                    line = await child.stdout.readline()
                except (ValueError, ConnectionError) as exc:  # over-long line, broken pipe
                    with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                        await read_writer.send(exc)
                    return
                if not line:
                    return
                try:
                    message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                except ValueError:
                    # A server logging to stdout breaks the protocol: skip the line, keep going.
                    child.stderr_tail.append(f"(stdout, not JSON-RPC) {line[:200]!r}")
                    continue
                try:
                    await read_writer.send(SessionMessage(message))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return

    async def writer() -> None:
        async with write_reader:
            async for item in write_reader:
                data = item.message.model_dump_json(by_alias=True, exclude_unset=True)
                try:
                    child.stdin.write(data.encode() + b"\n")
                    await child.stdin.drain()
                except (ConnectionError, RuntimeError):
                    await read_writer.aclose()
                    return

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        tg.start_soon(writer)
        try:
            yield read_stream, write_stream
        finally:
            tg.cancel_scope.cancel()
            await read_stream.aclose()
            await write_stream.aclose()


# ------------------------------------------------------------------ process-wide cleanup


def _kill_all_groups() -> None:
    for pgid in list(_LIVE_GROUPS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        _LIVE_GROUPS.discard(pgid)


def install_exit_cleanup() -> None:
    """Kill every live child group at exit and on SIGTERM (chaining the previous handler).

    Idempotent. From a non-main thread only the ``atexit`` part can be installed.
    """
    global _cleanup_installed
    if _cleanup_installed:
        return
    _cleanup_installed = True
    atexit.register(_kill_all_groups)
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> Any:
        _kill_all_groups()
        if callable(previous):
            return previous(signum, frame)
        if previous == signal.SIG_IGN:
            return None
        # Default disposition: die by SIGTERM, as if we had never looked.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return None

    signal.signal(signal.SIGTERM, on_sigterm)
