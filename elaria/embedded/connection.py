"""One namespace socket of the embedded server (:class:`Connection`) and its channels.

``Connection.send`` is the only way a message leaves the server: it serialises sends per socket
(so fault delays keep message order) and passes through the fault hooks (freeze, delay).
``abort()`` is a TCP reset; ``close_gracefully()`` a WebSocket close frame. Loop-confined.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import Awaitable
from typing import Any

from websockets.asyncio.server import ServerConnection

from elaria.embedded import envelope as env
from elaria.embedded.faults import Faults

__all__ = ["Channel", "Connection"]


class Channel:
    """One open channel of one connection; ``cancelled`` is set by a client ``cancel``."""

    def __init__(self, conn: Connection, channel_id: int) -> None:
        self.conn = conn
        self.id = channel_id
        self.cancelled = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        await self.conn.send(env.channel_send(self.id, message))


class Connection:
    """One authenticated (or authenticating) namespace socket."""

    def __init__(self, ws: ServerConnection, namespace: str, faults: Faults) -> None:
        self.ws = ws
        self.namespace = namespace
        self.client_id: str | None = None
        self.channels: dict[int, Channel] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.warnings = 0
        self._faults = faults
        self._send_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (
            f"<Connection /{self.namespace} client={self.client_id} "
            f"channels={len(self.channels)} tasks={len(self.tasks)}>"
        )

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self._faults.before_send()
            await self.ws.send(json.dumps(message))

    def abort(self) -> None:
        """TCP reset: SO_LINGER 0 makes close() send RST instead of FIN."""
        transport = self.ws.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    async def close_gracefully(self) -> None:
        await self.ws.close(1001, "server closing the connection")

    def pause_reading(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.transport.pause_reading()

    def resume_reading(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.transport.resume_reading()

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
