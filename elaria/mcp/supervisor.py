"""One supervised MCP server: start, watch, restart with backoff, fail fast while down.

A :class:`ServerSupervisor` owns one background task per server. That task holds the SDK
``Client`` (anyio requires the task that entered it to leave it) and loops:

1. connect — spawn the child in its own process group (:mod:`elaria.mcp.transport`) or open the
   streamable HTTP endpoint; handshake and list tools within the start timeout. The *first*
   start gets the long timeout (``npx`` may be downloading the package: that first start is the
   pre-warm); restarts get :data:`RESTART_TIMEOUT_S`.
2. watch — wake on child exit, on :meth:`aclose`, or every ``health_interval``: ping (bounded by
   :data:`PING_TIMEOUT_S` or the interval, whichever is shorter) and compare the group's RSS with
   the cap. Any of these ends the
   connection with a reason that becomes ``last_error``.
3. tear down — close the session, then kill the whole process group (always, even after a clean
   exit: a grandchild may outlive ``npx``).
4. restart — after a delay from :class:`~elaria.resilience.backoff.ReconnectBackoff`. A child is
   restarted while the restart budget lasts, then it is ``failed`` for good; an HTTP endpoint is
   reconnected for as long as the bridge lives (``restarts`` counts the attempts).

A server that fails its *first* start makes :meth:`start` raise :class:`~elaria.errors.McpError`
with the reason. Then, by default, it is ``failed`` at once (a one-shot check such as
``elaria mcp check`` reports it as it is). With ``retry_first_start=True`` (what a long-running
bridge asks for: a server may fail only because the machine just woke up) it is retried in the
background like a crash: same backoff, same restart budget, each attempt logged, and
:meth:`stats` shows ``attempts``, ``last_error`` and ``next_attempt_at``. Retries before the
first success keep the long first-start timeout (``npx`` may still be downloading).

Every (re)start lists the tools again. After the first, the new list is handed to ``on_tools``
(called on the supervisor's task, so on the loop that called :meth:`start`; it must not block).

:meth:`call` never waits for a server that is down: it raises :class:`McpError` at once, and a
call in flight when the child dies fails as soon as its pipes close (the group is killed on the
child's exit). A call that outlives its timeout raises :class:`ToolTimeoutError`; cancelling a
call cancels only that request. All methods run on the loop that called :meth:`start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import mcp_types as types
from loguru import logger
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from elaria.config import McpSettings
from elaria.errors import McpError, ToolExecutionError, ToolTimeoutError
from elaria.mcp.config import HttpServerConfig, ServerConfig, StdioServerConfig
from elaria.mcp.transport import ChildProcess, child_streams, install_exit_cleanup
from elaria.resilience.backoff import ReconnectBackoff

ToolsListener = Callable[[str, list[types.Tool]], None]

__all__ = [
    "RESTART_TIMEOUT_S",
    "ServerState",
    "ServerSupervisor",
    "SupervisorStats",
    "ToolsListener",
]

ServerState = Literal["starting", "ready", "restarting", "failed", "closed"]

#: Start timeout after the first successful start: packages are cached, a restart is quick.
RESTART_TIMEOUT_S = 20.0
#: A ping is answered by the transport layer at once; longer means the server is wedged.
PING_TIMEOUT_S = 10.0
#: First restart delay: long enough not to spin on a server that crashes at start.
RESTART_INITIAL_DELAY_S = 0.2
#: Longest delay between restarts.
RESTART_MAX_DELAY_S = 30.0
#: A connection that stayed up this long resets the restart delays.
STABLE_AFTER_S = 30.0
#: Bound on tearing a server down in :meth:`ServerSupervisor.aclose`.
CLOSE_TIMEOUT_S = 5.0
#: How long a failed call waits for the child's exit status to quote it (the pipes close first).
EXIT_STATUS_WAIT_S = 0.5
#: Cap on ``tools/list`` pages (a paginator that never ends must not hang the start).
MAX_TOOL_PAGES = 50

_CONNECTION_CLOSED = -32000


@dataclass(frozen=True)
class SupervisorStats:
    """What the health snapshot shows for one server."""

    server: str
    transport: Literal["stdio", "http"]
    state: ServerState
    pid: int | None
    rss_mb: float | None
    restarts: int
    last_error: str | None
    tools: int
    #: Connection attempts so far (the first start included).
    attempts: int = 0
    #: When the next attempt is due (UTC, ISO 8601), while ``restarting``.
    next_attempt_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "transport": self.transport,
            "state": self.state,
            "pid": self.pid,
            "rss_mb": self.rss_mb,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "tools": self.tools,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
        }


class ServerSupervisor:
    """Keeps one MCP server connected; see the module docstring for the lifecycle."""

    def __init__(
        self,
        name: str,
        config: ServerConfig,
        settings: McpSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        restart_initial_delay_s: float = RESTART_INITIAL_DELAY_S,
        retry_first_start: bool = False,
        on_tools: ToolsListener | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._settings = settings
        self.state: ServerState = "starting"
        self.restarts = 0
        self.last_error: str | None = None
        self.tools: list[types.Tool] = []
        self.attempts = 0
        self.retry_first_start = retry_first_start
        self.on_tools = on_tools
        self._clock = clock
        self._next_attempt: tuple[float, float] | None = None  # (clock value, wall time)
        self._ever_ready = False
        self._client: Client | None = None
        self._child: ChildProcess | None = None
        self._closing = False
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[list[types.Tool]] | None = None
        self._backoff = ReconnectBackoff(
            initial=restart_initial_delay_s,
            cap=max(RESTART_MAX_DELAY_S, restart_initial_delay_s),
            stable_after_s=STABLE_AFTER_S,
            clock=clock,
        )

    # ------------------------------------------------------------------ public

    @property
    def call_timeout_s(self) -> float:
        return self.config.timeout.call or self._settings.call_timeout_ms / 1000

    @property
    def first_start_timeout_s(self) -> float:
        return self.config.timeout.init or self._settings.init_timeout_ms / 1000

    @property
    def restart_timeout_s(self) -> float:
        return min(self.first_start_timeout_s, RESTART_TIMEOUT_S)

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.pid if child is not None and child.returncode is None else None

    async def start(self) -> list[types.Tool]:
        """Connect for the first time; the server's tools, or :class:`McpError` with the reason."""
        if self._task is not None:
            raise RuntimeError(f"supervisor for {self.name} already started")
        if isinstance(self.config, StdioServerConfig):
            install_exit_cleanup()
        self._first = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name=f"mcp-supervisor-{self.name}")
        return await asyncio.shield(self._first)

    async def wait_ready(self) -> None:
        """Until the server is ``ready`` (callers bound this with their own timeout)."""
        await self._ready.wait()

    async def call(
        self, tool: str, arguments: dict[str, Any], timeout: float | None = None
    ) -> types.CallToolResult:
        """Call ``tool`` now, or fail at once if the server is down."""
        client = self._client
        if client is None or self.state != "ready":
            raise McpError(self._down_message(), server=self.name, hint=self._down_hint())
        bound = timeout or self.call_timeout_s
        try:
            with anyio.fail_after(bound):
                return await client.call_tool(tool, arguments)
        except TimeoutError:
            raise ToolTimeoutError(
                f"MCP tool {tool!r} on server {self.name!r} did not answer within {bound:g} s",
                tool=tool,
                hint="Try a smaller request, or raise this server's timeout.call in mcp.json.",
            ) from None
        except MCPError as exc:
            if exc.error.code == _CONNECTION_CLOSED or self.state != "ready":
                why = await self._death_reason()
                raise McpError(
                    f"the server stopped during the call ({why})",
                    server=self.name,
                    hint=self._down_hint(),
                ) from exc
            raise ToolExecutionError(
                f"MCP server {self.name!r} rejected the call: {exc.error.message}", tool=tool
            ) from exc

    def stats(self) -> SupervisorStats:
        child = self._child
        rss = child.rss_bytes() if child is not None and child.returncode is None else None
        return SupervisorStats(
            server=self.name,
            transport="stdio" if isinstance(self.config, StdioServerConfig) else "http",
            state=self.state,
            pid=self.pid,
            rss_mb=round(rss / 2**20, 1) if rss else None,
            restarts=self.restarts,
            last_error=self.last_error,
            tools=len(self.tools),
            attempts=self.attempts,
            next_attempt_at=self._next_attempt_text(),
        )

    async def aclose(self) -> None:
        """Stop the server and kill its process group; idempotent, bounded by CLOSE_TIMEOUT_S."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._child is not None:
            self._child.kill_group()
        self.state = "closed"
        self._ready.clear()

    def __repr__(self) -> str:
        return (
            f"<ServerSupervisor {self.name} {self.state} pid={self.pid} "
            f"restarts={self.restarts}/{self._settings.restart_budget}>"
        )

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        assert self._first is not None
        timeout = self.first_start_timeout_s
        while True:
            try:
                reason = await self._serve_once(timeout)
            except Exception as exc:
                reason = _describe(exc, self._child)
            timeout = self.restart_timeout_s
            self._ready.clear()
            self._client = None
            if self._is_closing():
                if not self._first.done():
                    closed = McpError("closed before it started", server=self.name)
                    self._first.set_exception(closed)
                return
            self.last_error = reason
            if not self._first.done():
                hint = self._start_hint()
                failed = McpError(f"failed to start: {reason}", server=self.name, hint=hint)
                if not self.retry_first_start:
                    self.state = "failed"
                    self._first.set_exception(failed)
                    return
                # Set before resolving start(), so its caller already sees "restarting".
                self.state = "restarting"
                self._first.set_exception(failed)
            if not self._ever_ready:
                timeout = self.first_start_timeout_s
            # The budget bounds processes we spawn; a remote endpoint is retried with backoff.
            is_child = isinstance(self.config, StdioServerConfig)
            if is_child and self.restarts >= self._settings.restart_budget:
                self.state = "failed"
                logger.bind(kind="mcp", server=self.name).warning(
                    "MCP server {} is down for good after {} attempts: {}",
                    self.name,
                    self.attempts,
                    reason,
                )
                return
            self.state = "restarting"
            delay = self._backoff.next_delay()
            self._next_attempt = (self._clock() + delay, time.time() + delay)
            logger.bind(kind="mcp", server=self.name).warning(
                "MCP server {} is down ({}); attempt {} in {:.2f} s",
                self.name,
                reason,
                self.attempts + 1,
                delay,
            )
            # The child's exit set it; only aclose() may cut the delay short (it sets the flag
            # before waking us, so clearing here cannot lose a close).
            self._wake.clear()
            if self._is_closing():
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._next_attempt = None
            if self._is_closing():
                return
            self.restarts += 1

    async def _serve_once(self, start_timeout: float) -> str:
        """One connection from spawn to teardown; returns why it ended."""
        self._wake.clear()
        self.attempts += 1
        with anyio.CancelScope(deadline=anyio.current_time() + start_timeout) as scope:
            async with contextlib.AsyncExitStack() as stack:
                transport: Any
                if isinstance(self.config, StdioServerConfig):
                    child = await ChildProcess.spawn(
                        self.name,
                        self.config.command,
                        self.config.args,
                        env=self.config.env,
                        cwd=self.config.cwd,
                        on_exit=self._wake.set,
                    )
                    self._child = child
                    stack.push_async_callback(child.terminate)
                    transport = child_streams(child)
                else:
                    http = create_mcp_http_client(headers=dict(self.config.headers))
                    stack.push_async_callback(http.aclose)
                    transport = streamable_http_client(self.config.url, http_client=http)
                client = Client(transport, mode="legacy", cache=None)
                await stack.enter_async_context(client)
                tools = await _list_all_tools(client)
                scope.deadline = math.inf
                self.tools = tools
                self._client = client
                self.state = "ready"
                self._ready.set()
                self._backoff.connected()
                if not self._first_done():
                    assert self._first is not None
                    self._first.set_result(tools)
                elif self.on_tools is not None:
                    self._announce(tools)
                self._ever_ready = True
                try:
                    reason = await self._watch(client)
                finally:
                    self._client = None
                    self._ready.clear()
                    self._backoff.disconnected()
                if not self._is_closing():
                    # Before teardown, so calls failing right now can quote it.
                    self.last_error = reason
                    self.state = "restarting"
                return reason
        if scope.cancelled_caught:
            raise TimeoutError(f"no answer to the MCP handshake within {start_timeout:g} s")
        raise AssertionError("unreachable")  # pragma: no cover - the scope either returns or raises

    async def _watch(self, client: Client) -> str:
        interval = self._settings.health_interval_ms / 1000
        cap_bytes = self._settings.rss_cap_mb * 2**20
        child = self._child if isinstance(self.config, StdioServerConfig) else None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            if self._is_closing():
                return "closed"
            if child is not None and child.exited.is_set():
                return _exit_reason(child)
            self._wake.clear()
            try:
                with anyio.fail_after(min(PING_TIMEOUT_S, interval)):
                    # The session-level ping: legacy mode, and no deprecation warning.
                    await client.session.send_ping()
            except Exception as exc:
                return f"health ping failed: {_describe(exc, child)}"
            if child is not None:
                rss = child.rss_bytes()
                if rss > cap_bytes:
                    return (
                        f"RSS {rss / 2**20:.0f} MB over the cap of "
                        f"{self._settings.rss_cap_mb} MB; restarted"
                    )
            self._backoff.still_up()

    # ------------------------------------------------------------------ helpers

    async def _death_reason(self) -> str:
        """Why the connection closed under a call; waits briefly for the child's exit status."""
        child = self._child
        if child is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(EXIT_STATUS_WAIT_S):
                    await child.exited.wait()
            if child.returncode is not None:
                return _exit_reason(child)
        return self.last_error or "connection closed"

    def _is_closing(self) -> bool:
        # A method, not the attribute: aclose() flips it while we await.
        return self._closing

    def _first_done(self) -> bool:
        return self._first is not None and self._first.done()

    def _announce(self, tools: list[types.Tool]) -> None:
        assert self.on_tools is not None
        try:
            self.on_tools(self.name, tools)
        except Exception as exc:  # a listener's bug must not take the server down
            logger.opt(exception=exc).bind(kind="mcp", server=self.name).error(
                "the tool list listener of MCP server {} failed", self.name
            )

    def _next_attempt_text(self) -> str | None:
        if self._next_attempt is None or self.state != "restarting":
            return None
        wall = datetime.fromtimestamp(self._next_attempt[1], UTC)
        return wall.isoformat(timespec="milliseconds")

    def _retry_note(self) -> str:
        """When the next attempt is due, e.g. ``retrying in 0.4 s (attempt 3 of 6)``."""
        budget = self._settings.restart_budget + 1
        of = f" of {budget}" if isinstance(self.config, StdioServerConfig) else ""
        if self._next_attempt is None:
            return f"retrying now (attempt {self.attempts}{of})"
        wait = max(0.0, self._next_attempt[0] - self._clock())
        return f"retrying in {wait:.1f} s (attempt {self.attempts + 1}{of})"

    def down_message(self) -> str:
        """Why calls fail right now (the server is not ``ready``): the reason and the next try."""
        return self._down_message()

    def _down_message(self) -> str:
        if self.state == "failed":
            return f"is down for good: {self.last_error}"
        if self.state == "restarting" and not self._ever_ready:
            return f"has not started yet ({self.last_error}); {self._retry_note()}"
        if self.state == "restarting":
            return f"is restarting after: {self.last_error}; {self._retry_note()}"
        if self.state == "closed":
            return "is closed"
        return "is still starting"

    def _down_hint(self) -> str:
        if self.state == "failed":
            return "Its restart budget is spent; use other tools, or ask the operator to fix it."
        return "Try this tool again in a few seconds."

    def _start_hint(self) -> str:
        if isinstance(self.config, HttpServerConfig):
            return f"Check that {self.config.url} is up and speaks MCP streamable HTTP."
        if self.config.uses_npx:
            return (
                "npx may still be downloading the package: run the same npx command once in a "
                "shell, or raise timeout.init for this server in mcp.json."
            )
        return (
            f"Check that {self.config.command!r} runs by itself in a shell, or raise "
            "timeout.init for this server in mcp.json."
        )


async def _list_all_tools(client: Client) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _exit_reason(child: ChildProcess) -> str:
    code = child.returncode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with {code}"
    tail = child.stderr_text()
    return f"process {child.pid} {how}" + (f"; stderr: {tail}" if tail else "")


def _describe(exc: BaseException, child: ChildProcess | None) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e, child) for e in exc.exceptions)
    if isinstance(exc, MCPError):
        text = f"MCP error {exc.error.code}: {exc.error.message}"
    elif isinstance(exc, FileNotFoundError):
        text = f"command not found: {exc.filename}"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if child is not None and child.returncode is not None:
        text = f"{text}; {_exit_reason(child)}"
    elif child is not None and child.stderr_tail:
        text = f"{text}; stderr: {child.stderr_text()}"
    return text
