"""FaultProxy: a small asyncio TCP proxy with faults, to put between any client and server.

::

    async with FaultProxy("127.0.0.1", server_port) as proxy:
        client = lmstudio.AsyncClient(proxy.api_host)
        proxy.latency_s = 0.05     # each chunk, each direction, order kept
        proxy.blackhole()          # hold every byte both ways (a partition); new connections
                                   # are accepted and never answered
        proxy.restore()            # deliver what was held, as TCP would after a partition heals
        proxy.reset()              # RST every open connection, both sides
        proxy.refuse = True        # new connections are reset at once (the SDK's greeting
                                   # probe then raises a raw httpx.TransportError)

It knows nothing about WebSocket or LM Studio, so it works for any TCP protocol (the greeting
probe included). Loop-confined: create, drive and close it on one event loop. Closing it resets
every connection it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time

__all__ = ["FaultProxy"]

#: Read size per chunk: large enough for WebSocket frames, small enough to keep latency exact.
CHUNK = 65_536


def _rst(writer: asyncio.StreamWriter) -> None:
    """SO_LINGER 0, then abort: the peer sees a TCP reset, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection: two pumps, client->upstream and upstream->client."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in (self.client, self.upstream):
            if writer is not None:
                _rst(writer)


class FaultProxy:
    """See the module docstring."""

    def __init__(
        self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.latency_s = 0.0
        self.refuse = False
        self.connections_seen = 0
        self._requested_port = port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._open = asyncio.Event()
        self._open.set()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self._requested_port)
        return self

    async def close(self) -> None:
        self.restore()
        for link in list(self._links):
            link.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def api_host(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def reset(self) -> int:
        """RST every open connection on both sides; returns how many."""
        links = list(self._links)
        for link in links:
            link.reset()
        return len(links)

    def blackhole(self) -> None:
        self._open.clear()

    def restore(self) -> None:
        self._open.set()

    @property
    def blackholed(self) -> bool:
        return not self._open.is_set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_seen += 1
        if self.refuse:
            _rst(writer)
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._open.wait()  # a blackholed proxy accepts but never connects upstream
            up_reader, link.upstream = await asyncio.open_connection(*self.target)
            link.tasks = [
                asyncio.ensure_future(self._pump(reader, link.upstream)),
                asyncio.ensure_future(self._pump(up_reader, writer)),
            ]
            # either side ending ends the link (a FIN is passed on as a close)
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        except OSError:
            pass
        finally:
            for task in link.tasks:
                task.cancel()
            for w in (writer, link.upstream):
                if w is not None and not w.transport.is_closing():
                    w.close()
            self._links.discard(link)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read chunks and deliver each ``latency_s`` after it arrived, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                await self._open.wait()
                writer.write(data)
                await writer.drain()

        delivery = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(CHUNK):
                queue.put_nowait((time.monotonic() + self.latency_s, data))
            queue.put_nowait((time.monotonic() + self.latency_s, b""))
            await delivery
        except (OSError, ConnectionError):
            pass
        finally:
            delivery.cancel()
