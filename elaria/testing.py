"""Public test helpers over the embedded LM Studio-compatible server.

In-process (share the test's event loop)::

    from elaria.testing import embedded_server
    from elaria.embedded import ScriptedEngine, reply

    async with embedded_server(engine=ScriptedEngine()) as srv:
        srv.engine.script(reply("hello"))
        async with lmstudio.AsyncClient(srv.api_host) as client: ...

``srv`` is the :class:`~elaria.embedded.server.EmbeddedServer`: ``api_host`` (``"127.0.0.1:PORT"``,
what ``lmstudio.AsyncClient`` takes), ``ws_url``, ``engine``, ``faults``, ``backend``.
By default every model of the engine's catalogue is preloaded.

Loop contract: the in-process server runs on the loop that entered the context; sync SDK
clients (which run their own thread) may talk to it as long as that loop keeps running, e.g.
with ``await asyncio.to_thread(sync_code)``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from elaria.embedded.engine import Engine
from elaria.embedded.faults import Faults
from elaria.embedded.scripted import ScriptedEngine
from elaria.embedded.server import EmbeddedServer

__all__ = ["RawSession", "embedded_server", "raw_session"]

#: Bound on every wait of :class:`RawSession`: generous, for a busy CI machine.
RAW_TIMEOUT_S = 10.0


@asynccontextmanager
async def embedded_server(
    engine: Engine | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tokens: Sequence[str] = (),
    strict: bool = False,
    queue_per_model: bool = True,
    jit: bool = True,
    preload: Sequence[str] | None = None,
    faults: Faults | None = None,
) -> AsyncIterator[EmbeddedServer]:
    """Start a server on a free loopback port; always stopped on exit (faults thawed first).
    ``preload=None`` loads the whole catalogue; pass ``()`` to start with nothing loaded."""
    engine = engine if engine is not None else ScriptedEngine()
    keys = [s.model_key for s in engine.catalogue()] if preload is None else list(preload)
    server = EmbeddedServer(
        engine,
        host=host,
        port=port,
        tokens=tokens,
        strict=strict,
        queue_per_model=queue_per_model,
        jit=jit,
        preload=keys,
        faults=faults,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.close()


class RawSession:
    """A bare protocol client for tests that assert on wire messages (one namespace socket).

    ``rpc()`` and ``channel()`` number calls and channels like the SDK (from 1) and return the
    raw replies; every wait is bounded by ``timeout`` (``TimeoutError``).
    """

    def __init__(self, ws: ClientConnection, timeout: float = RAW_TIMEOUT_S) -> None:
        self.ws = ws
        self.timeout = timeout
        self._call_ids = itertools.count(1)
        self._channel_ids = itertools.count(1)
        self.auth_reply: dict[str, Any] | None = None

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self) -> dict[str, Any]:
        async with asyncio.timeout(self.timeout):
            raw = await self.ws.recv()
        message: dict[str, Any] = json.loads(raw)
        return message

    async def rpc(self, endpoint: str, parameter: Any = None) -> dict[str, Any]:
        """Send an ``rpcCall`` and return the first message answering it."""
        call_id = next(self._call_ids)
        msg: dict[str, Any] = {"type": "rpcCall", "endpoint": endpoint, "callId": call_id}
        if parameter is not None:
            msg["parameter"] = parameter
        await self.send(msg)
        while True:
            reply = await self.recv()
            if reply.get("callId") == call_id or reply.get("type") == "communicationWarning":
                return reply

    async def open_channel(self, endpoint: str, creation_parameter: Any) -> int:
        channel_id = next(self._channel_ids)
        await self.send(
            {
                "type": "channelCreate",
                "endpoint": endpoint,
                "channelId": channel_id,
                "creationParameter": creation_parameter,
            }
        )
        return channel_id

    async def channel(self, endpoint: str, creation_parameter: Any) -> list[dict[str, Any]]:
        """Open a channel and collect its messages up to ``channelClose``/``channelError``."""
        channel_id = await self.open_channel(endpoint, creation_parameter)
        out: list[dict[str, Any]] = []
        while True:
            msg = await self.recv()
            if msg.get("channelId") != channel_id and msg.get("type") != "communicationWarning":
                continue
            out.append(msg)
            if msg.get("type") in ("channelClose", "channelError", "communicationWarning"):
                return out


@asynccontextmanager
async def raw_session(
    api_host: str,
    namespace: str,
    *,
    client_id: str | None = None,
    passkey: str | None = None,
    authenticate: bool = True,
    timeout: float = RAW_TIMEOUT_S,
) -> AsyncIterator[RawSession]:
    """Connect to ``ws://api_host/namespace`` and (by default) authenticate like the SDK;
    ``session.auth_reply`` holds the server's answer."""
    async with asyncio.timeout(timeout):
        ws = await connect(f"ws://{api_host}/{namespace}", max_size=None)
    session = RawSession(ws, timeout)
    try:
        if authenticate:
            await session.send(
                {
                    "authVersion": 1,
                    "clientIdentifier": client_id or str(uuid.uuid4()),
                    "clientPasskey": passkey or str(uuid.uuid4()),
                }
            )
            session.auth_reply = await session.recv()
        yield session
    finally:
        await ws.close()
