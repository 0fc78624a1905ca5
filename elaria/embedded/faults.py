"""Fault injection for the embedded server, driven from tests or ``elaria serve`` flags.

:class:`Faults` is the one control object (``srv.faults``). Modes are plain attributes read by
the server at the moment they matter; actions (``kill``, ``close``, ``freeze``) act on the live
connections at once. What the SDK sees for each mode is in the protocol spec, §5:

* ``kill(client=, namespace=)``: TCP reset (RST) of matching sockets (``client`` is the
  SDK's ``clientIdentifier``, shared by all sockets of one SDK client: read it from
  ``srv.connections``) -> ``LMStudioWebsocketError``
  on every pending and later call of that client/namespace, within milliseconds.
* ``await close(...)``: a graceful WebSocket close frame, same effect for the SDK.
* ``freeze()`` / ``thaw()``: stop reading every socket (so pings go unanswered, like a sleeping
  laptop), hold every outgoing message and every new handshake or greeting until ``thaw()``.
* ``delay_s`` / ``jitter_s``: latency added before each outgoing message (order is kept).
* ``drop_after_fragments = N``: the connection streaming the N-th fragment of a prediction is
  killed (RST, or a graceful close with ``drop_graceful``); once per setting (``drop_times``).
* ``auth``: ``"ok"``; ``"reject"`` (string error, the real server's format: SDK 1.5.0 raises
  ``ValueError``); ``"hang"`` (never answer: the SDK hangs); ``"close"`` (succeed, then close).
* ``greeting``: ``"ok"``; ``"slow"`` (answers after ``greeting_delay_s``: ``httpx.ReadTimeout``
  in the SDK's 1 s probe); ``"non_json"`` (``json.JSONDecodeError``); ``"not_found"`` (404:
  ``LMStudioClientError`` "not reachable").

Loop-confined: call from the server's event loop (tests share it with the in-process server).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = ["AuthMode", "Faults", "GreetingMode"]

AuthMode = Literal["ok", "reject", "hang", "close"]
GreetingMode = Literal["ok", "slow", "non_json", "not_found"]
#: Longer than the SDK's 1 s greeting timeout, so "slow" trips it.
SLOW_GREETING_S = 2.0


class Killable(Protocol):
    client_id: str | None
    namespace: str

    def abort(self) -> None: ...

    async def close_gracefully(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


@dataclass
class Faults:
    auth: AuthMode = "ok"
    auth_error: str = "Authentication rejected by fault injection"
    greeting: GreetingMode = "ok"
    greeting_delay_s: float = SLOW_GREETING_S
    delay_s: float = 0.0
    jitter_s: float = 0.0
    drop_after_fragments: int | None = None
    drop_graceful: bool = False
    drop_times: int = 1
    _connections: Callable[[], Iterable[Killable]] = field(default=lambda: (), repr=False)
    _thawed: asyncio.Event | None = field(default=None, repr=False)
    _drops: int = field(default=0, repr=False)
    _rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)

    # ------------------------------------------------------------------ actions

    def _matching(self, client: str | None, namespace: str | None) -> list[Killable]:
        return [
            c
            for c in self._connections()
            if client in (None, c.client_id) and namespace in (None, c.namespace)
        ]

    def kill(self, client: str | None = None, namespace: str | None = None) -> int:
        """RST every matching socket (all when both are ``None``); returns how many."""
        targets = self._matching(client, namespace)
        for conn in targets:
            conn.abort()
        return len(targets)

    async def close(self, client: str | None = None, namespace: str | None = None) -> int:
        """Close matching sockets with a WebSocket close frame; returns how many."""
        targets = self._matching(client, namespace)
        await asyncio.gather(*(c.close_gracefully() for c in targets), return_exceptions=True)
        return len(targets)

    def freeze(self) -> None:
        if self._thawed is None or self._thawed.is_set():
            self._thawed = asyncio.Event()
        for conn in self._connections():
            conn.pause_reading()

    def thaw(self) -> None:
        if self._thawed is not None:
            self._thawed.set()
        for conn in self._connections():
            conn.resume_reading()

    @property
    def frozen(self) -> bool:
        return self._thawed is not None and not self._thawed.is_set()

    def reset(self) -> None:
        """Back to a healthy server (thaws too)."""
        self.thaw()
        self.auth, self.greeting = "ok", "ok"
        self.delay_s = self.jitter_s = 0.0
        self.drop_after_fragments, self.drop_graceful, self.drop_times = None, False, 1
        self._drops = 0

    # ------------------------------------------------------------------ hooks for the server

    async def before_send(self) -> None:
        """Awaited (under the connection's send lock) before each outgoing message."""
        if self._thawed is not None and not self._thawed.is_set():
            await self._thawed.wait()
        if self.delay_s or self.jitter_s:
            await asyncio.sleep(self.delay_s + self._rng.uniform(0, self.jitter_s))

    async def wait_thawed(self) -> None:
        if self._thawed is not None:
            await self._thawed.wait()

    def should_drop(self, fragments_sent: int) -> bool:
        n = self.drop_after_fragments
        if n is None or fragments_sent != n or self._drops >= self.drop_times:
            return False
        self._drops += 1
        return True
