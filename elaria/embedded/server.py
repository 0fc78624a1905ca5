"""The embedded LM Studio-compatible server: HTTP greeting, WebSocket namespaces, auth, envelope.

``EmbeddedServer(engine)`` listens on loopback; the unmodified ``lmstudio`` SDK connects to
``srv.api_host``. One WebSocket per namespace (``llm``, ``embedding``, ``system``, ``files``,
``repository``; ``diagnostics``, ``plugins`` and ``runtime`` are accepted and answer nothing).
The client speaks first (the auth packet); the server replies exactly once, then only ever
answers: every message carries the ``callId``/``channelId`` it answers, except
``communicationWarning`` and a ``keepAliveAck`` sent only for a received ``keepAlive``.

Unknown endpoints, invalid parameters, unknown or reused channel ids get a
``communicationWarning`` (at most :data:`MAX_WARNINGS` per connection) and no reply, as on the
real server: the SDK call hangs. ``strict=True`` answers them with ``rpcError``/``channelError``
instead, to catch drift quickly in tests.

Auth (``auth.py``): open mode, first come first served, or a token table. Refusals carry the
real server's *string* error (SDK 1.5.0 then raises ``ValueError``) and close the socket.

Models loaded with a TTL (the SDK sends ``loadTtlMs``, one hour by default) are unloaded once
idle that long, checked every ``ttl_sweep_s`` (``None`` turns it off); an instance that is
predicting or has requests queued is never idle.

Loop and threads: create, start and stop the server on one event loop; everything (engine calls
included) runs on it. Handlers run as tasks per call/channel, so one slow prediction never blocks
a socket. Closing a socket cancels its tasks; ``close()`` thaws faults and closes every socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from loguru import logger
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from elaria.embedded import envelope as env
from elaria.embedded.auth import AUTH_TIMEOUT_S, Credentials, parse_token, read_auth_packet
from elaria.embedded.connection import Channel, Connection
from elaria.embedded.endpoints import Backend, ChannelLike, RpcHandler
from elaria.embedded.engine import Engine
from elaria.embedded.envelope import BadParameter, ProtocolError
from elaria.embedded.faults import Faults
from elaria.embedded.predict import handle_predict

__all__ = ["NAMESPACES", "Connection", "EmbeddedServer", "parse_token"]

NAMESPACES = (
    "llm",
    "embedding",
    "system",
    "files",
    "repository",
    "diagnostics",
    "plugins",
    "runtime",
)
#: The real server stops warning after five communicationWarnings per connection.
MAX_WARNINGS = 5
#: Inbound frame limit: uploads and long histories arrive as single large frames (websockets'
#: 1 MiB default would cut them off), but a bound still protects the process.
MAX_FRAME_BYTES = 256 * 2**20
#: How often idle instances are checked against their TTL (``loadTtlMs``; SDK default 1 h).
TTL_SWEEP_S = 1.0
#: Bound on the close handshake, so stopping never waits long on a frozen or dead peer.
CLOSE_TIMEOUT_S = 2.0

ChannelHandler = Callable[[Channel, Any], Awaitable[None]]


class EmbeddedServer:
    """See the module docstring. ``async with EmbeddedServer(engine) as srv: srv.api_host``."""

    def __init__(
        self,
        engine: Engine,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: Sequence[str] = (),
        strict: bool = False,
        queue_per_model: bool = True,
        jit: bool = True,
        preload: Sequence[str] = (),
        faults: Faults | None = None,
        ttl_sweep_s: float | None = TTL_SWEEP_S,
    ) -> None:
        self.engine = engine
        self.ttl_sweep_s = ttl_sweep_s
        self._sweeper: asyncio.Future[None] | None = None
        self.host = host
        self.faults = faults or Faults()
        self.faults._connections = lambda: list(self._connections)
        self.strict = strict
        self.backend = Backend(engine, jit=jit, queue_per_model=queue_per_model)
        self.credentials = Credentials(tokens)
        self._preload = list(preload)
        self._requested_port = port
        self._server: Server | None = None
        self._connections: set[Connection] = set()
        self._rpcs, self._channels = self._routes()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.backend.preload(self._preload)
        self._server = await serve(
            self._handle,
            self.host,
            self._requested_port,
            process_request=self._process_request,
            max_size=MAX_FRAME_BYTES,
            # websockets' own flow control would resume reading behind a freeze; our reader
            # only dispatches, so the queue stays short anyway
            max_queue=None,
            ping_interval=None,  # the SDK pings us; a server ping would also outlive a freeze
            close_timeout=CLOSE_TIMEOUT_S,
            compression=None,
        )
        if self.ttl_sweep_s:
            self._sweeper = asyncio.ensure_future(self._sweep_ttl(self.ttl_sweep_s))

    async def _sweep_ttl(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.backend.unload_expired()
            except Exception as exc:  # a failing engine.unload must not stop the sweeps
                logger.opt(exception=exc).error("embedded server: TTL unload failed")

    async def close(self) -> None:
        self.faults.thaw()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S * 2):
                    await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    @property
    def api_host(self) -> str:
        """What ``lmstudio.AsyncClient(api_host)`` takes: ``host:port``, no scheme."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.api_host}"

    @property
    def connections(self) -> list[Connection]:
        return list(self._connections)

    def __repr__(self) -> str:
        where = self.api_host if self._server else "stopped"
        return (
            f"<EmbeddedServer {where} engine={self.engine.name} "
            f"connections={len(self._connections)} "
            f"loaded={list(self.backend.catalogue.loaded)}>"
        )

    # ------------------------------------------------------------------ HTTP

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        await self.faults.wait_thawed()
        path = request.path.split("?", 1)[0]
        if path == "/lmstudio-greeting":
            return await self._greeting(conn)
        if path.strip("/") not in NAMESPACES:
            return conn.respond(404, "Not Found\n")
        return None

    async def _greeting(self, conn: ServerConnection) -> Response:
        mode = self.faults.greeting
        if mode == "not_found":
            return conn.respond(404, "Not Found\n")
        if mode == "slow":
            await asyncio.sleep(self.faults.greeting_delay_s)
        body = "lmstudio: yes" if mode == "non_json" else json.dumps({"lmstudio": True})
        response = conn.respond(200, body)
        if mode != "non_json":
            response.headers["Content-Type"] = "application/json"
        return response

    # ------------------------------------------------------------------ WebSocket

    async def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path.split("?", 1)[0] if ws.request else ""
        conn = Connection(ws, path.strip("/"), self.faults)
        self._connections.add(conn)
        if self.faults.frozen:
            conn.pause_reading()
        try:
            if await self._authenticate(conn):
                await self._serve(conn)
        except ConnectionClosed:
            pass
        finally:
            self._connections.discard(conn)
            for task in list(conn.tasks):
                task.cancel()
            if conn.tasks:
                await asyncio.gather(*conn.tasks, return_exceptions=True)

    async def _authenticate(self, conn: Connection) -> bool:
        try:
            async with asyncio.timeout(AUTH_TIMEOUT_S):
                packet = await read_auth_packet(conn.ws)
        except TimeoutError:
            await self._refuse(conn, "Authentication timed out")
            return False
        conn.client_id = packet["clientIdentifier"]
        mode = self.faults.auth
        if mode == "hang":
            await conn.ws.wait_closed()
            return False
        if mode == "reject":
            await self._refuse(conn, self.faults.auth_error)
            return False
        error = self.credentials.check(packet["clientIdentifier"], packet["clientPasskey"])
        if error is not None:
            await self._refuse(conn, error)
            return False
        await conn.send({"success": True})
        if mode == "close":
            await conn.close_gracefully()
            return False
        return True

    async def _refuse(self, conn: Connection, error: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await conn.send({"success": False, "error": error})
            await conn.ws.close(1008, "authentication failed")

    async def _serve(self, conn: Connection) -> None:
        async for raw in conn.ws:
            if not isinstance(raw, str):
                continue
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if isinstance(msg, dict):
                await self._dispatch(conn, msg)

    async def _dispatch(self, conn: Connection, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "rpcCall" and isinstance(msg.get("callId"), int):
            endpoint = str(msg.get("endpoint"))
            handler = self._rpcs.get(conn.namespace, {}).get(endpoint)
            if handler is None:
                await self._unknown(conn, msg["callId"], endpoint, rpc=True)
            else:
                conn.spawn(self._run_rpc(conn, msg["callId"], handler, msg.get("parameter")))
        elif kind == "channelCreate" and isinstance(msg.get("channelId"), int):
            channel_id: int = msg["channelId"]
            endpoint = str(msg.get("endpoint"))
            chandler = self._channels.get(conn.namespace, {}).get(endpoint)
            if channel_id in conn.channels:
                await self._warn(
                    conn, f"Channel {channel_id} is already open", "channelAlreadyOpen"
                )
            elif chandler is None:
                await self._unknown(conn, channel_id, endpoint, rpc=False)
            else:
                channel = Channel(conn, channel_id)
                conn.channels[channel_id] = channel
                conn.spawn(self._run_channel(channel, chandler, msg.get("creationParameter")))
        elif kind == "channelSend":
            target = conn.channels.get(msg.get("channelId"))  # type: ignore[arg-type]
            if target is None:
                await self._warn(
                    conn,
                    f"Received a message for unknown channel {msg.get('channelId')}",
                    "channelUnknown",
                )
            elif isinstance(msg.get("message"), dict) and msg["message"].get("type") == "cancel":
                target.cancelled.set()
        elif kind == "keepAlive":
            await conn.send(env.keep_alive_ack())

    async def _unknown(self, conn: Connection, ident: int, endpoint: str, *, rpc: bool) -> None:
        what = "RPC" if rpc else "channel"
        text = f"Unknown {what} endpoint {endpoint!r} on namespace {conn.namespace!r}"
        if self.strict:
            error = ProtocolError(text)
            await conn.send(env.rpc_error(ident, error) if rpc else env.channel_error(ident, error))
        else:
            await self._warn(conn, text, "rpcEndpointUnknown" if rpc else "channelEndpointUnknown")

    async def _warn(self, conn: Connection, text: str, kind: str) -> None:
        if conn.warnings < MAX_WARNINGS:
            conn.warnings += 1
            await conn.send(env.communication_warning(text, kind))

    async def _run_rpc(
        self, conn: Connection, call_id: int, handler: RpcHandler, param: Any
    ) -> None:
        try:
            try:
                result = await handler(param)
            except ProtocolError as exc:
                await conn.send(env.rpc_error(call_id, exc))
                return
            except BadParameter as exc:
                if self.strict:
                    await conn.send(env.rpc_error(call_id, ProtocolError(str(exc))))
                else:
                    await self._warn(conn, str(exc), "invalidParameter")
                return
            except Exception as exc:
                logger.opt(exception=exc).error("embedded server: RPC handler failed")
                await conn.send(env.rpc_error(call_id, ProtocolError(f"Internal error: {exc}")))
                return
            await conn.send(env.rpc_result(call_id, result))
        except ConnectionClosed:
            pass

    async def _run_channel(self, channel: Channel, handler: ChannelHandler, param: Any) -> None:
        conn = channel.conn
        try:
            try:
                await handler(channel, param)
            except ProtocolError as exc:
                await conn.send(env.channel_error(channel.id, exc))
                return
            except BadParameter as exc:
                if self.strict:
                    await conn.send(env.channel_error(channel.id, ProtocolError(str(exc))))
                else:
                    await self._warn(conn, str(exc), "invalidCreationParameter")
                return
            except Exception as exc:
                logger.opt(exception=exc).error("embedded server: channel handler failed")
                err = ProtocolError(f"Internal error: {exc}")
                await conn.send(env.channel_error(channel.id, err))
                return
            await conn.send(env.channel_close(channel.id))
        except ConnectionClosed:
            pass
        finally:
            conn.channels.pop(channel.id, None)

    # ------------------------------------------------------------------ routing

    def _routes(
        self,
    ) -> tuple[dict[str, dict[str, RpcHandler]], dict[str, dict[str, ChannelHandler]]]:
        b = self.backend

        def predict(channel: Channel, param: Any) -> Awaitable[None]:
            return handle_predict(
                b, channel, param, on_fragment=lambda n: self._maybe_drop(channel.conn, n)
            )

        def load(
            fn: Callable[[Any, ChannelLike, Any], Awaitable[None]],
            domain: str,
        ) -> ChannelHandler:
            return lambda channel, param: fn(domain, channel, param)

        rpcs: dict[str, dict[str, RpcHandler]] = {
            "llm": b.rpc_handlers("llm"),
            "embedding": b.rpc_handlers("embedding"),
            "system": b.system_handlers(),
            "files": b.files_handlers(),
            "repository": b.repository_handlers(),
        }
        channels: dict[str, dict[str, ChannelHandler]] = {
            "llm": {
                "getOrLoad": load(b.get_or_load, "llm"),
                "loadModel": load(b.load_model, "llm"),
                "predict": predict,
            },
            "embedding": {
                "getOrLoad": load(b.get_or_load, "embedding"),
                "loadModel": load(b.load_model, "embedding"),
            },
        }
        return rpcs, channels

    def _maybe_drop(self, conn: Connection, fragments_sent: int) -> None:
        if not self.faults.should_drop(fragments_sent):
            return
        if self.faults.drop_graceful:
            conn.spawn(conn.close_gracefully())
        else:
            conn.abort()
