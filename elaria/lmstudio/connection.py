"""One ``lmstudio.AsyncClient`` and the leases that borrow it: the pool's building blocks.

* :func:`check_host` / :func:`api_host_of`: a settings URL (``ws://host:port``) is checked
  (:func:`~elaria.security.urls.validate_ws_url`) and turned into the SDK's ``host:port``.
* :class:`Connection`: one live client; ``lost`` is set the moment the pool evicts it.
* :class:`Lease`: what a caller holds inside ``async with pool.lease(host)``;
  :meth:`Lease.run` bounds one await and aborts it when the client is evicted.
* :class:`StreamGuard` (``async with lease.guard()``): the same two bounds for a sequence of
  awaits in the calling task (a prediction stream), with one deadline and no task per await.

Loop-confined (one event loop); nothing here starts a task of its own except the step task of
:meth:`Lease.run`, which never outlives the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import urllib.parse
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

import httpx
import lmstudio

from elaria.config import LMStudioSettings, SecuritySettings
from elaria.errors import ConfigError, ElariaTimeoutError, HostDown, SecurityViolation
from elaria.resilience.deadlines import Deadline, wheel
from elaria.security.urls import validate_ws_url

__all__ = [
    "CANCEL_SEND_TIMEOUT_S",
    "CLOSE_TIMEOUT_S",
    "Connection",
    "HostState",
    "Lease",
    "StreamGuard",
    "api_host_of",
    "check_host",
    "close_client_quietly",
    "is_refusal",
]

T = TypeVar("T")

#: Closing a client on a dead server returns at once; this only bounds a sick one.
CLOSE_TIMEOUT_S = 5.0
#: A cancel message is one small frame; do not let a sick socket hold the caller longer.
CANCEL_SEND_TIMEOUT_S = 1.0


class HostState(enum.StrEnum):
    IDLE = "idle"  # no client and nobody asking
    CONNECTING = "connecting"  # first connection attempt under way
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"  # lost a client; the next attempt is under way or due
    DOWN = "down"  # the last attempt failed; waiting for the backoff delay
    CLOSED = "closed"


def check_host(
    url: str, settings: LMStudioSettings, security: SecuritySettings | None = None
) -> str:
    """Refuse a host Elaria may not connect to (:func:`~elaria.security.urls.validate_ws_url`:
    loopback, or listed in ``security.allowed_remote_hosts``, plaintext remote only with
    ``lmstudio.allow_plaintext_remote``); return the SDK's ``host:port`` for it."""
    try:
        validate_ws_url(
            url,
            allowed_remote_hosts=(security or SecuritySettings()).allowed_remote_hosts,
            allow_plaintext_remote=settings.allow_plaintext_remote,
        )
    except SecurityViolation as exc:
        # A refused host is a settings problem the operator fixes in lmstudio.hosts.
        raise ConfigError(exc.message, where="lmstudio.hosts") from exc
    return api_host_of(url)


def api_host_of(url: str) -> str:
    """``ws://host:port`` (as in settings) -> ``host:port`` (what the SDK wants)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "wss":
        raise ConfigError(
            f"{url}: lmstudio 1.5 cannot speak TLS (wss://)",
            where="lmstudio.hosts",
            hint="Use ws:// through an SSH tunnel or a TLS-terminating proxy next to LM Studio.",
        )
    if parts.scheme != "ws" or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(
            f"{url!r} is not a ws://host:port URL",
            where="lmstudio.hosts",
            hint="Write it like ws://localhost:1234 (no path).",
        )
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        raise ConfigError(
            f"{url!r} has no valid port",
            where="lmstudio.hosts",
            hint="LM Studio's server listens on 1234 by default: ws://localhost:1234.",
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


class Connection:
    """One live client. ``lost`` is set the moment it is evicted."""

    def __init__(
        self,
        client: lmstudio.AsyncClient,
        generation: int,
        owner: asyncio.Task[None],
        stop: asyncio.Event,
    ) -> None:
        self.client = client
        self.generation = generation
        self.owner = owner
        self.stop = stop
        self.lost = asyncio.Event()
        self._lost_callbacks: set[Callable[[], None]] = set()

    def mark_lost(self) -> None:
        """Evicted: set ``lost`` and tell every :class:`StreamGuard` watching this client."""
        self.lost.set()
        for callback in list(self._lost_callbacks):
            callback()
        self._lost_callbacks.clear()

    def on_lost(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (on the loop) when the client is evicted; returns the unsubscriber."""
        self._lost_callbacks.add(callback)
        return lambda: self._lost_callbacks.discard(callback)


class Lease:
    """A borrowed connection to one host. Use it only inside ``async with pool.lease(host)``."""

    def __init__(self, host: str, conn: Connection) -> None:
        self.host = host
        self._conn = conn

    @property
    def client(self) -> lmstudio.AsyncClient:
        return self._conn.client

    @property
    def generation(self) -> int:
        """Which client of this host (increases on every reconnect)."""
        return self._conn.generation

    @property
    def lost(self) -> bool:
        return self._conn.lost.is_set()

    async def run(self, awaitable: Awaitable[T], timeout: float, operation: str) -> T:
        """Await ``awaitable`` with a deadline, failing with ``HostDown`` if the client is evicted
        meanwhile (a frozen server would otherwise hold the caller until the SDK's ~40 s ping
        timeout). On deadline: :class:`~elaria.errors.ElariaTimeoutError`. The abandoned await is
        cancelled before this returns."""
        step = asyncio.ensure_future(awaitable)
        if self._conn.lost.is_set():
            step.cancel()
            await asyncio.wait({step})
            raise HostDown("the connection was replaced", host=self.host)
        lost = asyncio.ensure_future(self._conn.lost.wait())
        try:
            done, _ = await asyncio.wait(
                {step, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
            if not step.done():
                step.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait({step})
            if step.done() and not step.cancelled():
                step.exception()  # retrieved: the result is read below or the error dropped
        if step in done:
            return step.result()
        if lost in done:
            raise HostDown(f"connection lost during {operation}", host=self.host)
        raise ElariaTimeoutError(operation, timeout, where=self.host)

    def guard(self) -> StreamGuard:
        """Bounds for a sequence of awaits made by the calling task; see :class:`StreamGuard`."""
        return StreamGuard(self.host, self._conn)


class StreamGuard:
    """One deadline and one eviction watch over the awaits of an ``async with`` block.

    A prediction stream awaits once per fragment; :meth:`Lease.run` would cost a task, a watcher
    and an ``asyncio.wait`` each time. Here the awaits run in the calling task itself and
    :meth:`expect` (called before each await) moves a single deadline. When the deadline passes or
    the client is evicted, the calling task is cancelled, which cancels the await in progress, and
    the block ends with :class:`~elaria.errors.ElariaTimeoutError` (naming the operation last
    expected) or :class:`~elaria.errors.HostDown`. A cancellation from outside passes through as
    ``CancelledError``, even when it races one of ours.

    The cancel can only land inside the block: the timer and the eviction callback act only while
    the block is active, and the task is then suspended at one of the block's awaits. The timer is
    re-armed lazily: a deadline that moves later (the usual case, one more fragment) is noticed
    when the old one fires, so a fast stream files one deadline per block, not per fragment; and
    it is filed on the loop's shared :func:`~elaria.resilience.deadlines.wheel`, not as a loop
    timer of its own.
    """

    def __init__(self, host: str, conn: Connection) -> None:
        self.host = host
        self._conn = conn
        self._operation = ""
        self._limit_s = 0.0
        self._deadline = 0.0
        self._timer: Deadline | None = None
        self._fired: ElariaTimeoutError | HostDown | None = None
        self._cancel_requested = False
        self._active = False

    def expect(self, operation: str, within_s: float, *, reported_s: float | None = None) -> None:
        """The next await must finish within ``within_s`` seconds from now; on expiry the block
        fails with ``ElariaTimeoutError(operation, reported_s or within_s)``. Inside the block
        only."""
        if self._fired is not None and not self._cancel_requested:
            raise self._fired
        self._operation = operation
        self._limit_s = within_s if reported_s is None else reported_s
        self._deadline = self._clock.time() + max(0.0, within_s)
        if self._timer is None or self._deadline < self._timer.when:
            self._arm()

    async def __aenter__(self) -> StreamGuard:
        if self._conn.lost.is_set():
            raise HostDown("the connection was replaced", host=self.host)
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always called from a task
            raise RuntimeError("StreamGuard needs a running task")
        self._task = task
        self._clock = wheel()
        self._unsubscribe = self._conn.on_lost(self._on_lost)
        self._active = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._active = False
        self._unsubscribe()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        fired = self._fired
        if fired is None or not self._cancel_requested:
            return
        # Our cancel was requested: withdraw it; if another one remains, that one wins.
        if self._task.uncancel() > 0 or exc_type is None:
            return
        if isinstance(exc, asyncio.CancelledError):
            raise fired from None  # the cancel was only our means of interrupting the await
        raise fired from exc

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._clock.at(self._deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._active or self._fired is not None:
            return
        if self._clock.time() < self._deadline:  # moved later since this timer was armed
            self._arm()
            return
        self._fire(ElariaTimeoutError(self._operation, self._limit_s, where=self.host))

    def _on_lost(self) -> None:
        if self._active and self._fired is None:
            self._fire(HostDown(f"connection lost during {self._operation}", host=self.host))

    def _fire(self, error: ElariaTimeoutError | HostDown) -> None:
        self._fired = error
        if asyncio.current_task() is self._task:
            # Evicted by the guarded task itself (not suspended at an await): a cancel would
            # land at its next await, perhaps after the block; the next expect() raises instead.
            return
        self._cancel_requested = True
        self._task.cancel()


def is_refusal(exc: BaseException) -> bool:
    """Nothing accepted the connection (or the greeting): the host is simply not there."""
    if isinstance(exc, ConnectionRefusedError | httpx.ConnectError):
        return True
    return isinstance(exc, lmstudio.LMStudioClientError) and "not reachable" in str(exc)


async def close_client_quietly(client: lmstudio.AsyncClient) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await client.aclose()
