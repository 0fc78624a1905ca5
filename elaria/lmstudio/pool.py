"""One shared, self-healing ``lmstudio.AsyncClient`` per LM Studio host.

Public API::

    pool = ClientPool.from_settings(settings)       # honours security.allowed_remote_hosts
    async with pool:                                  # close() leaves no socket, task or thread
        async with pool.lease("ws://localhost:1234") as lease:
            llm = await pool.model_handle(lease, "qwen2.5-7b-instruct")   # cached, TTL
            models = await lease.run(lease.client.llm.list_loaded(), 2.0, "list loaded")
        pool.stats(); repr(pool)

Hosts are checked before any I/O (:func:`~elaria.lmstudio.connection.check_host`: loopback, or
in ``security.allowed_remote_hosts``; plaintext remote only with ``allow_plaintext_remote``;
``wss://`` is refused because lmstudio 1.5 has no TLS). ``lmstudio.api_token`` cannot be sent
by lmstudio 1.5 (the SDK gains ``api_token`` in 1.6): the pool logs a warning when it is set.

``on_event(kind, host)`` (optional) is called on the loop for ``connect_attempt``,
``connect_failed``, ``connected`` and ``evicted``: telemetry and tests hook in there.

Why a pool: ``lmstudio`` 1.5 never reconnects (a client whose socket died fails forever), its
async API has no timeouts, and ``session.connected`` stays true on a dead socket. So:

* **One client per host**, shared by every session, created on first use by a per-host
  *supervisor* task: connect (greeting + 5 sockets + auth) and a first ``list_loaded`` probe under
  ``connect_timeout``, then a ``list_loaded`` probe every ``probe_interval`` and at once after any
  call error. A dead or frozen client is **evicted and replaced, never retried**.
* **Reconnect delays** come from :class:`~elaria.resilience.backoff.ReconnectBackoff` (full
  jitter; reset only after a connection stayed up ``stable_after``), so a server that accepts and
  drops at once cannot cause a hot loop. A plainly refused connect waits at most
  :data:`REFUSED_RETRY_CAP_S`, so a restarted LM Studio is found again within seconds. After
  ``max_attempts`` failures in a row the supervisor rests until the next caller asks.
* **Callers never wait long for a dead host**: :meth:`ClientPool.lease` waits (at most
  ``connect_timeout``) for an attempt that is under way or due within
  :data:`WAIT_FOR_DUE_ATTEMPT_S`; otherwise it fails at once with
  :class:`~elaria.errors.HostDown` saying when the next attempt is due, so failover can move on.
* **In-flight calls on a dying client** fail with ``HostDown`` as soon as it is evicted:
  :meth:`Lease.run` races each await against the eviction and its own deadline.
* **Model handles** are cached per (host, model) with a TTL, resolved single-flight, and dropped
  whenever the host's client is replaced (a handle is bound to its client's session).
* **Idle clients** are closed after ``idle_close_s`` by a cleanup task every
  ``cleanup_interval_s``.

Concurrency: one event loop. Every decision (which connection, start a supervisor, evict) is a
synchronous section with no ``await`` in it: on one loop that *is* the lock; all network I/O
happens outside those sections. A caller's cancellation never cancels shared work (connects are
awaited through ``asyncio.shield``) and is never counted as a failure.
Each ``AsyncClient`` is opened and closed by its own small owner task, so a connect that hangs
(e.g. a server that never answers the auth frame) can be abandoned cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import lmstudio
from cachetools import TTLCache
from loguru import logger

from elaria.config import LMStudioSettings, ReconnectSettings, SecuritySettings, Settings
from elaria.errors import BackendError, ElariaTimeoutError, HostDown
from elaria.lmstudio.connection import (
    CLOSE_TIMEOUT_S,
    Connection,
    HostState,
    Lease,
    api_host_of,
    check_host,
    close_client_quietly,
    is_refusal,
)
from elaria.resilience.backoff import ReconnectBackoff
from elaria.resilience.classify import FailureClass, classify, from_backend, to_backend_error
from elaria.resilience.retry import with_timeout

# HostState, Lease, api_host_of and check_host live in ``connection``; re-exported here.
__all__ = ["ClientPool", "HostState", "Lease", "api_host_of", "check_host"]

#: Model handles kept per host: a few models per host is the norm, a bound is still needed.
HANDLE_CACHE_SIZE = 64
#: A refused connect costs a server nothing, so a host that is off is polled at least this often
#: (an LM Studio restart is noticed within seconds); anything that got further (accepted, then
#: dropped or stalled) follows the full exponential backoff.
REFUSED_RETRY_CAP_S = 2.0
#: A reconnect attempt due this soon is worth waiting for; a later one means "fail now" so that
#: failover can move on to the next target instead of holding the caller.
WAIT_FOR_DUE_ATTEMPT_S = 0.5


@dataclass(eq=False)
class _Host:
    url: str
    api_host: str
    backoff: ReconnectBackoff
    handles: TTLCache[str, Any]
    state: HostState = HostState.IDLE
    conn: Connection | None = None
    supervisor: asyncio.Task[None] | None = None
    next_attempt: asyncio.Future[Connection] | None = None
    next_attempt_at: float = 0.0
    failures_in_a_row: int = 0
    stopping: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    generation: int = 0
    connections: int = 0
    attempts: int = 0
    reconnects: int = 0
    in_flight: int = 0
    last_used: float = 0.0
    last_error: str | None = None
    last_error_at: str | None = None
    resolving: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    #: The handle last stored or found in ``handles``: (model key, generation, handle, expiry),
    #: so a round reads one tuple instead of the TTL cache (see ``ClientPool.cached_handle``).
    recent: tuple[str, int, Any, float] | None = None


class ClientPool:
    """Clients per host; see the module docstring for the contract."""

    def __init__(
        self,
        settings: LMStudioSettings | None = None,
        reconnect: ReconnectSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        on_event: Callable[[str, str], None] | None = None,
        security: SecuritySettings | None = None,
    ) -> None:
        self._on_event = on_event
        self._security = security
        self.settings = settings or LMStudioSettings()
        self.reconnect = reconnect or ReconnectSettings()
        if self.settings.api_token is not None:
            # lmstudio 1.5.0 has no api_token parameter (it arrives in 1.6); say so once.
            logger.bind(kind="pool").warning(
                "lmstudio.api_token is set but lmstudio 1.5 cannot send it; "
                "turn off 'Require Authentication' in LM Studio or upgrade the SDK"
            )
        self._clock = clock
        self._rng = rng
        self._hosts: dict[str, _Host] = {}
        self._cleanup: asyncio.Task[None] | None = None
        self._owners: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> ClientPool:
        """The pool for the whole :class:`~elaria.config.Settings` (hosts checked on use)."""
        return cls(settings.lmstudio, settings.reconnect, security=settings.security, **kwargs)

    # ------------------------------------------------------------------ public

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def lease(self, host: str) -> AsyncIterator[Lease]:
        """Borrow ``host``'s client. Errors raised inside are observed (a host-down error evicts
        the client; a transient one triggers a probe) and re-raised as our typed errors
        (:func:`~elaria.resilience.classify.to_backend_error`, the SDK's error as ``__cause__``);
        cancellations pass through untouched."""
        h = self._host(host)
        conn = await self._connection(h)
        h.in_flight += 1
        h.last_used = self._clock()
        try:
            yield Lease(host, conn)
        except Exception as exc:
            self._observe_error(h, conn, exc)
            if not from_backend(exc) or classify(exc) is FailureClass.TOOL_CALL_MALFORMED:
                raise  # ours already, or the caller's own bug: never disguised as a backend error
            raise to_backend_error(exc, host=host) from exc
        finally:
            h.in_flight -= 1
            h.last_used = self._clock()

    async def model_handle(self, lease: Lease, model: str | None) -> Any:
        """The ``AsyncLLM`` handle for ``model`` (None: the first loaded model), loading it
        just in time if needed, cached per (host, model) for ``handle_ttl_s``."""
        h = self._host(lease.host)
        key = model or ""
        cached = h.handles.get(key)
        if cached is not None and cached[0] == lease.generation:
            h.recent = (key, cached[0], cached[1], cached[2])
            return cached[1]
        pending = h.resolving.get(key)
        if pending is None:
            llm = lease.client.llm
            call = llm.model(model) if model else llm.model()
            pending = asyncio.ensure_future(
                lease.run(call, self.settings.load_timeout_ms / 1000, f"load model {model or '*'}")
            )
            h.resolving[key] = pending
            pending.add_done_callback(lambda f: self._resolved(h, key, lease.generation, f))
        return await asyncio.shield(pending)

    def cached_handle(self, lease: Lease, model: str | None) -> Any | None:
        """What :meth:`model_handle` would return when it needs no await (the handle it found
        last, same model, same client, not expired), else None. No await, no cache walk: every
        round asks."""
        h = self._hosts.get(lease.host)
        recent = None if h is None else h.recent
        if (
            recent is not None
            and recent[0] == (model or "")
            and recent[1] == lease.generation
            and self._clock() < recent[3]
        ):
            return recent[2]
        return None

    def forget_handle(self, host: str, model: str | None) -> None:
        """Drop a cached handle (the model was unloaded server-side); the next use re-resolves."""
        h = self._hosts.get(host)
        if h is not None:
            h.handles.pop(model or "", None)
            h.recent = None

    async def close_idle(self) -> int:
        """Stop the clients unused for ``idle_close_s``; returns how many. The cleanup task calls
        this every ``cleanup_interval_s``; tests call it directly."""
        now = self._clock()
        idle = [
            h
            for h in self._hosts.values()
            if h.supervisor is not None
            and h.in_flight == 0
            and now - h.last_used >= self.settings.idle_close_s
        ]
        for h in idle:
            h.stopping = True
            h.wake.set()
        tasks = [h.supervisor for h in idle if h.supervisor is not None]
        if tasks:
            await asyncio.wait(tasks)
        return len(idle)

    async def close(self) -> None:
        """Close every client and stop every task of the pool. Idempotent."""
        self._closed = True
        tasks: list[asyncio.Task[Any]] = []
        if self._cleanup is not None:
            self._cleanup.cancel()
            tasks.append(self._cleanup)
        for h in self._hosts.values():
            h.stopping = True
            if h.supervisor is not None:
                h.supervisor.cancel()
                tasks.append(h.supervisor)
        if tasks:
            await asyncio.wait(tasks)
        if self._owners:
            await asyncio.wait(list(self._owners))
        for h in self._hosts.values():
            h.state = HostState.CLOSED

    def stats(self) -> dict[str, Any]:
        now = self._clock()
        return {
            url: {
                "state": h.state.value,
                "generation": h.generation,
                "reconnects": h.reconnects,
                "connect_attempts": h.attempts,
                "in_flight": h.in_flight,
                "cached_handles": sorted(k or "*" for k in h.handles),
                "last_error": h.last_error,
                "last_error_at": h.last_error_at,
                "next_attempt_in_s": round(max(0.0, h.next_attempt_at - now), 3)
                if h.state is HostState.DOWN
                else 0.0,
            }
            for url, h in self._hosts.items()
        }

    def __repr__(self) -> str:
        parts = [
            f"{url}={h.state.value}(in_flight={h.in_flight}, reconnects={h.reconnects}, "
            f"handles={len(h.handles)})"
            for url, h in self._hosts.items()
        ]
        return f"<ClientPool {' '.join(parts) or 'empty'}{' closed' if self._closed else ''}>"

    def state(self, host: str) -> HostState:
        h = self._hosts.get(host)
        return HostState.IDLE if h is None else h.state

    # ------------------------------------------------------------------ decisions (no await)

    def _host(self, url: str) -> _Host:
        if self._closed:
            raise BackendError("the client pool is closed", host=url)
        h = self._hosts.get(url)
        if h is None:
            r = self.reconnect
            h = _Host(
                url=url,
                api_host=check_host(url, self.settings, self._security),
                backoff=ReconnectBackoff(
                    initial=r.initial_delay_ms / 1000,
                    cap=r.max_delay_ms / 1000,
                    stable_after_s=r.stable_after_ms / 1000,
                    clock=self._clock,
                    rng=self._rng,
                ),
                handles=TTLCache(HANDLE_CACHE_SIZE, self.settings.handle_ttl_s, timer=self._clock),
            )
            self._hosts[url] = h
        if self._cleanup is None:
            self._cleanup = asyncio.create_task(self._cleanup_loop(), name="elaria-pool-cleanup")
        return h

    def _ensure_supervisor(self, h: _Host) -> None:
        if h.supervisor is None:
            h.stopping = False
            h.wake.clear()
            h.next_attempt = asyncio.get_running_loop().create_future()
            h.supervisor = asyncio.create_task(self._supervise(h), name=f"elaria-pool {h.url}")

    def _observe_error(self, h: _Host, conn: Connection, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            return
        kind = classify(exc)
        if kind is FailureClass.HOST_DOWN:
            self._note_error(h, exc)
            self._evict(h, conn, f"call failed: {type(exc).__name__}")
        elif kind is FailureClass.TRANSIENT:
            h.wake.set()  # probe now instead of at the next interval

    def _evict(self, h: _Host, conn: Connection, reason: str) -> None:
        if conn.lost.is_set():
            return
        conn.mark_lost()
        conn.stop.set()
        if h.conn is conn:
            h.conn = None
            h.handles.clear()
            h.recent = None
            h.state = HostState.RECONNECTING
        h.wake.set()
        # Closing on shutdown or idleness is routine; anything else is worth a warning.
        level = "DEBUG" if reason in ("pool closing", "idle", "stopping") else "WARNING"
        logger.bind(kind="pool", host=h.url).log(level, "closed client of {}: {}", h.url, reason)
        self._emit("evicted", h)

    def _emit(self, kind: str, h: _Host) -> None:
        if self._on_event is not None:
            try:
                self._on_event(kind, h.url)
            except Exception:
                logger.opt(exception=True).bind(kind="pool").warning("pool event callback failed")

    def _note_error(self, h: _Host, exc: BaseException) -> None:
        h.last_error = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        h.last_error_at = datetime.now(UTC).isoformat(timespec="seconds")

    def _resolved(self, h: _Host, key: str, generation: int, fut: asyncio.Future[Any]) -> None:
        h.resolving.pop(key, None)
        if not fut.cancelled() and fut.exception() is None and generation == h.generation:
            # The expiry rides along: the TTL cache's own is not readable.
            expires = self._clock() + self.settings.handle_ttl_s
            h.handles[key] = (generation, fut.result(), expires)
            h.recent = (key, generation, fut.result(), expires)

    # ------------------------------------------------------------------ I/O

    async def _connection(self, h: _Host) -> Connection:
        h.last_used = self._clock()
        if h.conn is not None and not h.conn.lost.is_set():
            return h.conn
        self._ensure_supervisor(h)
        budget = self.settings.connect_timeout_ms / 1000
        due_in = max(0.0, h.next_attempt_at - self._clock())
        attempt = h.next_attempt
        if attempt is None or due_in > WAIT_FOR_DUE_ATTEMPT_S:
            raise HostDown(
                f"not connected; next reconnect attempt in {due_in:.1f} s"
                + (f" (last error: {h.last_error})" if h.last_error else ""),
                host=h.url,
                hint="Check that LM Studio is running and its server is enabled.",
            )
        try:
            conn = await with_timeout(
                asyncio.shield(attempt), due_in + budget + 1.0, "connect", where=h.url
            )
        except ElariaTimeoutError as exc:
            raise HostDown(str(exc), host=h.url) from exc
        if conn.lost.is_set():
            raise HostDown("the connection was lost as it opened", host=h.url)
        return conn

    async def _supervise(self, h: _Host) -> None:
        try:
            while not h.stopping:
                if await self._rest_until_due(h):
                    break
                if not await self._attempt(h):
                    h.failures_in_a_row += 1
                    if h.failures_in_a_row >= self.reconnect.max_attempts:
                        break  # rest until a caller asks again
                    continue
                h.failures_in_a_row = 0
                await self._watch(h)
        finally:
            conn = h.conn
            if conn is not None:
                self._evict(h, conn, "pool closing" if self._closed else "idle")
                # Its owner closes the client; wait so "closed" means the sockets are gone.
                await asyncio.wait({conn.owner}, timeout=CLOSE_TIMEOUT_S)
            if h.next_attempt is not None and not h.next_attempt.done():
                h.next_attempt.set_exception(HostDown("not connected", host=h.url))
                h.next_attempt.exception()
            h.next_attempt = None
            h.supervisor = None
            if h.state is not HostState.DOWN or self._closed:
                h.state = HostState.CLOSED if self._closed else HostState.IDLE

    async def _rest_until_due(self, h: _Host) -> bool:
        """Wait for the next attempt's time (wake-ups do not shorten a backoff); True if
        stopping."""
        while (delay := h.next_attempt_at - self._clock()) > 0:
            if await self._rest(h, delay):
                return True
        return h.stopping

    async def _rest(self, h: _Host, seconds: float) -> bool:
        """Sleep up to ``seconds``; a wake-up (stop, eviction, "probe now") ends it early.
        True if stopping."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await h.wake.wait()
        h.wake.clear()
        return h.stopping

    async def _attempt(self, h: _Host) -> bool:
        fut = h.next_attempt
        if fut is None or fut.done():
            fut = h.next_attempt = asyncio.get_running_loop().create_future()
        h.state = HostState.CONNECTING if h.connections == 0 else HostState.RECONNECTING
        h.attempts += 1
        self._emit("connect_attempt", h)
        try:
            conn = await self._open(h)
        except Exception as exc:
            error = to_backend_error(exc, host=h.url)
            self._note_error(h, error)
            delay = h.backoff.next_delay()
            if is_refusal(exc):
                delay = min(delay, REFUSED_RETRY_CAP_S)
            h.next_attempt_at = self._clock() + delay
            h.state = HostState.DOWN
            h.next_attempt = asyncio.get_running_loop().create_future()
            fut.set_exception(error)
            fut.exception()
            logger.bind(kind="pool", host=h.url).info("connect to {} failed: {}", h.url, error)
            self._emit("connect_failed", h)
            return False
        h.conn = conn
        h.handles.clear()
        h.recent = None
        if h.connections:
            h.reconnects += 1
        h.connections += 1
        h.backoff.connected()
        h.state = HostState.CONNECTED
        # Callers arriving after this client dies wait for the *next* attempt.
        h.next_attempt = asyncio.get_running_loop().create_future()
        fut.set_result(conn)
        logger.bind(kind="pool", host=h.url).info("connected to {} (#{})", h.url, h.connections)
        self._emit("connected", h)
        return True

    async def _open(self, h: _Host) -> Connection:
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[lmstudio.AsyncClient] = loop.create_future()
        stop = asyncio.Event()
        owner = asyncio.create_task(self._own_client(h.api_host, opened, stop))
        self._owners.add(owner)
        owner.add_done_callback(self._owners.discard)
        connect_s = self.settings.connect_timeout_ms / 1000
        try:
            client = await with_timeout(asyncio.shield(opened), connect_s, "connect", where=h.url)
            await with_timeout(
                client.llm.list_loaded(),
                self.settings.probe_timeout_ms / 1000,
                "probe",
                where=h.url,
            )
        except BaseException:
            stop.set()
            owner.cancel()
            await asyncio.wait({owner})
            raise
        h.generation += 1
        return Connection(client, h.generation, owner, stop)

    async def _own_client(
        self, api_host: str, opened: asyncio.Future[lmstudio.AsyncClient], stop: asyncio.Event
    ) -> None:
        """Open a client, hand it over, close it when told to (in this same task)."""
        client = lmstudio.AsyncClient(api_host)
        try:
            await client.__aenter__()
        except BaseException as exc:
            await close_client_quietly(client)
            if not opened.done():
                if isinstance(exc, asyncio.CancelledError):
                    opened.cancel()
                else:
                    opened.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        opened.set_result(client)
        try:
            await stop.wait()
        finally:
            await close_client_quietly(client)

    async def _watch(self, h: _Host) -> None:
        """Probe on a schedule (and at once when woken) until the client dies or we stop."""
        conn = h.conn
        assert conn is not None
        interval = self.settings.probe_interval_ms / 1000
        probe_s = self.settings.probe_timeout_ms / 1000
        reason = "stopping"
        while not h.stopping and not conn.lost.is_set():
            await self._rest(h, interval)
            if h.stopping or conn.lost.is_set():
                reason = "evicted"
                break
            try:
                await with_timeout(conn.client.llm.list_loaded(), probe_s, "probe", where=h.url)
            except Exception as exc:
                self._note_error(h, to_backend_error(exc, host=h.url))
                reason = f"probe failed: {h.last_error}"
                break
            h.backoff.still_up()
        self._evict(h, conn, reason)
        if h.stopping:
            # Closing an idle client is no failure: the next caller connects at once.
            await asyncio.wait({conn.owner}, timeout=CLOSE_TIMEOUT_S)
            h.next_attempt_at = 0.0
            return
        h.backoff.disconnected()
        h.next_attempt_at = self._clock() + h.backoff.next_delay()
        h.state = HostState.RECONNECTING

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.cleanup_interval_s)
            await self.close_idle()
