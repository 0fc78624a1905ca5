"""Which model server a Runtime talks to: LM Studio if reachable, else the embedded one.

:func:`open_backend` is an async context manager that yields a :class:`Backend`:

* ``lmstudio`` — probe ``lmstudio.hosts`` (settings), then the SDK's default local ports, then
  ``localhost:1234``, all at once, each under :data:`PROBE_TIMEOUT_S`; the reachable ones become
  the failover hosts. None reachable: :class:`~elaria.errors.HostDown` with one readable
  paragraph (what, where, what to do), well under 5 seconds.
* ``embedded`` — start the embedded LM Studio-compatible server on loopback with the given
  engine, else the one ``embedded.engine`` names: the real tiny model
  (:class:`~elaria.embedded.llama.LlamaCppEngine`, Gemma 3 270M; the default) or the
  deterministic ``ScriptedEngine`` (echoes; for trying the plumbing and for tests). Passing an
  ``engine`` means "embedded with this engine": LM Studio is not probed then.
* ``auto`` — ``lmstudio`` when anything answers, else ``embedded`` (and :meth:`Backend.banner`
  says so, naming the model and how to point at LM Studio).

Probing is the SDK's own greeting check (``GET /lmstudio-greeting`` answering
``{"lmstudio": true}``, as ``AsyncClient.is_valid_api_host`` does) on a bare socket, so
"reachable" means what the SDK will accept, and the check needs no heavy import.
Loop-confined; on exit the embedded server and its engine are stopped (llama.cpp's worker
thread included).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger

from elaria.config import Settings
from elaria.errors import ConfigError, HostDown

if TYPE_CHECKING:
    from elaria.lmstudio.failover import Failover
    from elaria.lmstudio.pool import ClientPool

__all__ = [
    "FALLBACK_HOST",
    "PROBE_TIMEOUT_S",
    "SDK_DEFAULT_PORTS",
    "TINY_MODEL_SYSTEM_PROMPT",
    "TINY_MODEL_TEMPERATURE",
    "TINY_MODEL_TOOLS",
    "Backend",
    "BackendChoice",
    "ModelInfo",
    "discover_lmstudio",
    "no_lmstudio_error",
    "open_backend",
    "require_lmstudio",
]

BackendChoice = Literal["auto", "lmstudio", "embedded"]

#: The lmstudio SDK's own discovery ports (``lmstudio._api_server_ports``), probed in order.
SDK_DEFAULT_PORTS = (41343, 52993, 16141, 39414, 22931)
#: LM Studio's user-visible server port, where most users enable the API.
FALLBACK_HOST = "localhost:1234"
#: A local LM Studio answers its greeting in milliseconds; the SDK itself allows 1 s.
PROBE_TIMEOUT_S = 1.5
#: The greeting is a tiny JSON object; anything longer is not LM Studio.
MAX_GREETING_BYTES = 64 * 1024
#: How long a model's context length is trusted before it is asked again (a reload may change it).
MODEL_INFO_TTL_S = 60.0

#: Built-in tools offered to the tiny embedded model when the operator chose none: a 270M model
#: picks well among two tools and poorly among twelve (and each tool grows its grammar).
TINY_MODEL_TOOLS = ("list_dir", "read_file")
#: Greedy decoding for the tiny model unless lmstudio.temperature is set explicitly.
TINY_MODEL_TEMPERATURE = 0.0
#: The tiny model's default system prompt. A 270M base model imitates far better than it follows
#: rules, so the prompt is one worked example of the whole list -> read -> answer sequence in the
#: exact format the engine renders (calls as JSON, results as ``tool:`` lines), each step numbered
#: so the model sees where it is; the example's files are not the sample workspace's.
TINY_MODEL_SYSTEM_PROMPT = (
    "You are a helpful assistant working in a folder called the workspace. You can call tools, "
    "one per step, and answer from what they return.\n\n"
    "Example:\n"
    "Task: List the files in the workspace, then read report.txt and tell me what it says.\n"
    'Step 1: {"tool": "list_dir", "arguments": {}}\n'
    'tool: {"path": ".", "entries": [{"name": "photos", "type": "directory"}, '
    '{"name": "report.txt", "type": "file", "size": 61}], "total": 2}\n'
    'Step 2: {"tool": "read_file", "arguments": {"path": "report.txt"}}\n'
    'tool: {"path": "report.txt", "content": "# Bike shop\\n\\nSales of bicycles rose in spring '
    'because of the new shop.\\n", "lines": 3}\n'
    'Step 3: {"answer": "The file is about a bike shop: bicycle sales rose in spring."}\n\n'
    "Now your task:"
)

_HOW_TO_POINT = (
    "To use LM Studio instead, start it, enable its server (Developer tab, or `lms server "
    "start`), and run with --backend lmstudio, or set lmstudio.hosts in elaria.toml "
    "(ELARIA_LMSTUDIO__HOSTS='[\"ws://localhost:1234\"]')."
)


@dataclass(frozen=True)
class ModelInfo:
    context_length: int | None
    count_tokens: Callable[[str], Awaitable[int]] | None


@dataclass
class Backend:
    """A resolved backend; ``settings.lmstudio.hosts`` point at it."""

    kind: Literal["lmstudio", "embedded"]
    settings: Settings
    hosts: tuple[str, ...]
    engine_name: str | None = None
    model_name: str | None = None
    fell_back: bool = False
    #: The LM Studio hosts probed before falling back (api hosts), for the banner.
    tried: tuple[str, ...] = ()
    server: Any = None
    _failover: Failover | None = field(default=None, repr=False)
    _info: ModelInfo | None = field(default=None, repr=False)
    _info_at: float = field(default=0.0, repr=False)

    def predictor(self, pool: ClientPool) -> Failover:
        from elaria.lmstudio.failover import Failover

        self._failover = Failover(pool, self.settings)
        return self._failover

    async def model_info(self, pool: ClientPool) -> ModelInfo:
        """The loaded model's context length and tokenizer (None when it cannot be asked).

        Cached for :data:`MODEL_INFO_TTL_S`: every run asks, the answer rarely changes.
        """
        now = time.monotonic()
        if self._info is not None and now - self._info_at < MODEL_INFO_TTL_S:
            return self._info
        failover = self._failover or self.predictor(pool)
        try:
            length = await failover.context_length()
        except Exception as exc:  # a history without the real budget still works
            logger.bind(kind="runtime").warning("cannot read the model's context length: {}", exc)
            return ModelInfo(None, None)

        async def count(text: str) -> int:
            return await failover.count_tokens(text)

        self._info, self._info_at = ModelInfo(length if length > 0 else None, count), now
        return self._info

    @property
    def tiny_model(self) -> bool:
        """The embedded llama.cpp model: small, so it gets a focused prompt and toolset."""
        return self.kind == "embedded" and self.engine_name == "llama"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "hosts": list(self.hosts),
            "engine": self.engine_name,
            "model": self.model_name or self.settings.lmstudio.model,
            "fell_back": self.fell_back,
        }

    def banner(self) -> str | None:
        """What to tell a user whose ``auto`` run fell back to the embedded model."""
        if not self.fell_back:
            return None
        if self.engine_name == "llama":
            what = (
                f"the embedded {self.model_name or 'model'} on llama.cpp, a tiny model for "
                "trying Elaria out, not for real work (it gets only the list_dir and read_file "
                "tools unless agent.tools says otherwise)"
            )
        else:
            what = f"the embedded server's {self.engine_name} engine (canned answers, no model)"
        tried = ", ".join(self.tried) or "nothing"
        return f"No LM Studio found (tried {tried}); using {what}. {_HOW_TO_POINT}"


def api_host_of(url: str) -> str:
    """``ws://host:port`` -> ``host:port`` (the pool validates URLs properly later)."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return url
    if not parts.hostname or port is None:
        return url
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


def _ws(api_host: str) -> str:
    return f"ws://{api_host}"


def candidate_hosts(settings: Settings) -> list[str]:
    """Settings hosts, then the SDK's default local ports, then ``localhost:1234`` (api hosts)."""
    seen: list[str] = []
    for item in [
        *(api_host_of(h) for h in settings.lmstudio.hosts),
        *(f"localhost:{p}" for p in SDK_DEFAULT_PORTS),
        FALLBACK_HOST,
    ]:
        if item not in seen:
            seen.append(item)
    return seen


async def _reachable(api_host: str, timeout: float) -> bool:
    """The SDK's greeting check (``GET /lmstudio-greeting`` answers ``{"lmstudio": true}``),
    done with a bare socket: this runs before anything heavy is imported, so that a CLI run
    with no LM Studio fails fast even on a busy machine."""
    host, _, port = api_host.rpartition(":")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(
                f"GET /lmstudio-greeting HTTP/1.1\r\nHost: {api_host}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            response = await reader.read(MAX_GREETING_BYTES)
    except (OSError, ValueError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or head.split(b" ", 2)[1:2] != [b"200"]:
        return False
    try:
        greeting = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        return False
    return isinstance(greeting, dict) and greeting.get("lmstudio") is True


async def discover_lmstudio(
    settings: Settings, *, timeout: float = PROBE_TIMEOUT_S, include_defaults: bool = True
) -> list[str]:
    """Reachable LM Studio hosts as ``ws://`` URLs, in preference order (probed concurrently)."""
    candidates = (
        candidate_hosts(settings)
        if include_defaults
        else [api_host_of(h) for h in settings.lmstudio.hosts]
    )
    answers = await asyncio.gather(*(_reachable(c, timeout) for c in candidates))
    return [_ws(c) for c, ok in zip(candidates, answers, strict=True) if ok]


def _with_hosts(settings: Settings, hosts: list[str], model: str | None = None) -> Settings:
    update: dict[str, Any] = {"hosts": hosts}
    if model is not None:
        update["model"] = model
    lm = settings.lmstudio.model_copy(update=update)
    return settings.model_copy(update={"lmstudio": lm})


def no_lmstudio_error(settings: Settings) -> HostDown:
    """The one paragraph a user reads when ``--backend lmstudio`` finds nothing."""
    probed = ", ".join(candidate_hosts(settings))
    return HostDown(
        f"No LM Studio server answered (tried {probed})",
        hint="Start LM Studio and enable its server (Developer tab, or `lms server "
        "start`); if it runs elsewhere, set lmstudio.hosts in elaria.toml or "
        "ELARIA_LMSTUDIO__HOSTS='[\"ws://HOST:PORT\"]'. To try Elaria without LM "
        "Studio, use --backend embedded",
    )


async def require_lmstudio(settings: Settings) -> list[str]:
    """The reachable LM Studio hosts, or :func:`no_lmstudio_error` (cheap: no SDK import)."""
    found = await discover_lmstudio(settings)
    if not found:
        raise no_lmstudio_error(settings)
    return found


@contextlib.asynccontextmanager
async def open_backend(
    settings: Settings, choice: BackendChoice, *, engine: Any = None
) -> AsyncIterator[Backend]:
    if choice not in ("auto", "lmstudio", "embedded"):
        raise ConfigError(
            f"unknown backend {choice!r}",
            where="--backend",
            hint="Use auto, lmstudio or embedded.",
        )
    if choice != "embedded" and engine is None:
        found = await discover_lmstudio(settings)
        if found:
            yield Backend("lmstudio", _with_hosts(settings, found), tuple(found))
            return
        if choice == "lmstudio":
            raise no_lmstudio_error(settings)
    fell_back = choice == "auto"
    tried = tuple(candidate_hosts(settings)) if fell_back else ()
    async with _embedded(settings, engine, fell_back=fell_back, tried=tried) as backend:
        yield backend


@contextlib.asynccontextmanager
async def _embedded(
    settings: Settings, engine: Any, *, fell_back: bool, tried: tuple[str, ...]
) -> AsyncIterator[Backend]:
    from elaria.embedded.server import EmbeddedServer

    own_engine = engine is None
    if engine is None and settings.embedded.engine == "scripted":
        from elaria.embedded.scripted import ScriptedEngine

        engine = ScriptedEngine()
    elif engine is None:
        from elaria.embedded.llama import LlamaCppEngine

        engine = LlamaCppEngine(settings=settings.embedded)
    try:
        specs = [s for s in engine.catalogue() if s.type == "llm"]
        if not specs:
            raise ConfigError(
                f"the embedded engine {engine.name!r} offers no LLM",
                where="embedded.engine",
                hint="Use the llama or scripted engine.",
            )
        spec = specs[0]
        model = settings.lmstudio.model or spec.model_key
        server = EmbeddedServer(
            engine,
            host=settings.embedded.host,
            port=settings.embedded.port,
            preload=[spec.model_key],
        )
        await server.start()
        try:
            hosts = [server.ws_url]
            yield Backend(
                "embedded",
                _with_hosts(settings, hosts, model),
                tuple(hosts),
                engine_name=engine.name,
                model_name=spec.display_name,
                fell_back=fell_back,
                tried=tried,
                server=server,
            )
        finally:
            await server.close()
    finally:
        if own_engine:
            close = getattr(engine, "close", None)
            if close is not None:
                close()
