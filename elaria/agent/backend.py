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

Probing uses the SDK's own greeting check (``AsyncClient.is_valid_api_host``), so "reachable"
means exactly what the SDK will accept. Loop-confined; on exit the embedded server and its
engine are stopped (llama.cpp's worker thread included).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from loguru import logger

from elaria.config import Settings
from elaria.errors import ConfigError, HostDown
from elaria.lmstudio.failover import Failover
from elaria.lmstudio.pool import ClientPool, api_host_of

__all__ = [
    "FALLBACK_HOST",
    "PROBE_TIMEOUT_S",
    "SDK_DEFAULT_PORTS",
    "Backend",
    "BackendChoice",
    "ModelInfo",
    "discover_lmstudio",
    "open_backend",
]

BackendChoice = Literal["auto", "lmstudio", "embedded"]

#: The lmstudio SDK's own discovery ports (``lmstudio._api_server_ports``), probed in order.
SDK_DEFAULT_PORTS = (41343, 52993, 16141, 39414, 22931)
#: LM Studio's user-visible server port, where most users enable the API.
FALLBACK_HOST = "localhost:1234"
#: A local LM Studio answers its greeting in milliseconds; the SDK itself allows 1 s.
PROBE_TIMEOUT_S = 1.5
#: How long a model's context length is trusted before it is asked again (a reload may change it).
MODEL_INFO_TTL_S = 60.0

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
                "trying Elaria out, not for real work"
            )
        else:
            what = f"the embedded server's {self.engine_name} engine (canned answers, no model)"
        tried = ", ".join(self.tried) or "nothing"
        return f"No LM Studio found (tried {tried}); using {what}. {_HOW_TO_POINT}"


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
    import lmstudio

    try:
        async with asyncio.timeout(timeout):
            return bool(await lmstudio.AsyncClient.is_valid_api_host(api_host))
    except Exception:  # refused, timed out, not LM Studio: all mean "not here"
        return False


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
            probed = ", ".join(candidate_hosts(settings))
            raise HostDown(
                f"No LM Studio server answered (tried {probed})",
                hint="Start LM Studio and enable its server (Developer tab, or `lms server "
                "start`); if it runs elsewhere, set lmstudio.hosts in elaria.toml or "
                "ELARIA_LMSTUDIO__HOSTS='[\"ws://HOST:PORT\"]'. To try Elaria without LM "
                "Studio, use --backend embedded",
            )
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
