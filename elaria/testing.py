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

Subprocess (for SIGKILL / SIGSTOP): :class:`ServerProcess` runs ``elaria serve`` in a child,
waits for its ready line (bounded), and exposes ``pid``, ``api_host``, ``kill()``,
``freeze()``/``thaw()``, ``restart()`` (same port) and ``stop()``; it always cleans up on exit.

Wire level: ``raw_session(api_host, namespace)`` gives a :class:`RawSession` (authenticated
bare protocol client) for asserting on exact messages. Dead hosts: :func:`closed_api_host`
(connection refused) and :func:`silent_api_host` (listens, never answers).

Pytest fixtures (need pytest and pytest-asyncio): ``scripted_engine``, ``embedded_lmstudio`` (an
in-process server over ``scripted_engine``) and ``embedded_lmstudio_process`` (a started
:class:`ServerProcess`). Make them visible in your ``conftest.py``::

    from elaria.testing import embedded_lmstudio, embedded_lmstudio_process, scripted_engine
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import IO, Any

from websockets.asyncio.client import ClientConnection, connect

from elaria.embedded.engine import Engine
from elaria.embedded.faults import Faults
from elaria.embedded.scripted import ScriptedEngine
from elaria.embedded.server import TTL_SWEEP_S, EmbeddedServer

__all__ = [
    "RawSession",
    "ServerProcess",
    "closed_api_host",
    "embedded_server",
    "raw_session",
    "silent_api_host",
]

#: Bound on every wait of :class:`RawSession`: generous, for a busy CI machine.
RAW_TIMEOUT_S = 10.0
#: How long a child server may take to print its ready line (a cold Python start on a busy box).
READY_TIMEOUT_S = 30.0
#: Grace period for SIGTERM before SIGKILL when stopping a child server.
STOP_GRACE_S = 5.0
_READY = re.compile(r"elaria serve: ready api_host=(?P<host>\S+)")


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
    ttl_sweep_s: float | None = TTL_SWEEP_S,
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
        ttl_sweep_s=ttl_sweep_s,
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


class ServerProcess:
    """``elaria serve`` in a child process. ``args`` are extra ``elaria serve`` flags
    (``--engine scripted`` unless they name an engine; the port is always given, so a restart
    keeps it).

    Methods are synchronous and quick except :meth:`start`/:meth:`restart`, which block until
    the ready line (at most ``ready_timeout``); async tests call ``await asyncio.to_thread(
    proc.start)`` or use ``async with``. Stderr goes to a temporary file (:meth:`stderr_text`),
    so a chatty child can never block on a full pipe.
    """

    def __init__(self, *args: str, port: int = 0, ready_timeout: float = READY_TIMEOUT_S) -> None:
        self.args = list(args)
        self.port = port
        self.ready_timeout = ready_timeout
        self.api_host = ""
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self._stderr_saved = ""

    @property
    def pid(self) -> int:
        assert self._proc is not None, "start() first"
        return self._proc.pid

    @property
    def ws_url(self) -> str:
        return f"ws://{self.api_host}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> ServerProcess:
        engine = [] if "--engine" in self.args else ["--engine", "scripted"]
        cmd = [sys.executable, "-m", "elaria.cli", "serve", "--port", str(self.port), *engine]
        cmd += self.args
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._stderr_file(), text=True, bufsize=1
        )
        try:
            self.api_host = self._wait_ready()
        except BaseException:
            self.kill()
            self.stop()  # nothing is left behind: no child, no pipe, no temporary file
            raise
        self.port = int(self.api_host.rsplit(":", 1)[1])
        return self

    def _wait_ready(self) -> str:
        assert self._proc is not None
        assert self._proc.stdout is not None
        deadline = time.monotonic() + self.ready_timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self._proc.stdout], [], [], left)
            if not ready:
                break
            line = self._proc.stdout.readline()
            if not line:
                raise RuntimeError(
                    f"elaria serve exited ({self._proc.wait()}) before it was "
                    f"ready: {self.stderr_text()[-2000:]}"
                )
            match = _READY.search(line)
            if match:
                return match["host"]
        raise TimeoutError(
            f"elaria serve printed no ready line within {self.ready_timeout} s: "
            f"{self.stderr_text()[-2000:]}"
        )

    def kill(self) -> None:
        """SIGKILL (thawing first would let it run; a stopped process dies on SIGKILL too)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(STOP_GRACE_S)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def restart(self) -> ServerProcess:
        """Kill if alive, then start again on the same port."""
        self.kill()
        return self.start()

    def stop(self) -> int | None:
        """SIGTERM (after a SIGCONT, in case it is frozen), then SIGKILL after a grace period."""
        code: int | None = None
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGCONT)
            self._proc.terminate()
            try:
                code = self._proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.kill()
        elif self._proc is not None:
            code = self._proc.returncode
        self._close_pipe()
        if self._stderr is not None:
            self._stderr_saved = self.stderr_text()
            self._stderr.close()
            self._stderr = None
        return code

    def stderr_text(self) -> str:
        if self._stderr is None:
            return self._stderr_saved
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()

    def _stderr_file(self) -> IO[str]:
        if self._stderr is None:
            self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        return self._stderr

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> ServerProcess:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)


def closed_api_host() -> str:
    """``127.0.0.1:PORT`` with nothing listening (connection refused), for "host down" tests.
    The port was free a moment ago; another process could take it, which is harmless here."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@contextmanager
def silent_api_host() -> Iterator[str]:
    """``127.0.0.1:PORT`` of a socket that listens and never accepts: the kernel completes
    TCP handshakes, nobody answers (the SDK's greeting probe raises ``httpx.ReadTimeout``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


# ---------------------------------------------------------------------- pytest fixtures

try:
    import pytest
    import pytest_asyncio
except ImportError:  # pragma: no cover - pytest is a dev dependency
    pass
else:

    @pytest.fixture
    def scripted_engine() -> ScriptedEngine:
        """A fresh :class:`ScriptedEngine` (script it before or after the server starts)."""
        return ScriptedEngine()

    @pytest_asyncio.fixture
    async def embedded_lmstudio(scripted_engine: ScriptedEngine) -> AsyncIterator[EmbeddedServer]:
        """An in-process server over ``scripted_engine``, whole catalogue loaded."""
        async with embedded_server(engine=scripted_engine) as server:
            yield server

    @pytest.fixture
    def embedded_lmstudio_process() -> Iterator[ServerProcess]:
        """A started ``elaria serve --engine scripted`` child; always stopped afterwards."""
        with ServerProcess("--engine", "scripted") as proc:
            yield proc
