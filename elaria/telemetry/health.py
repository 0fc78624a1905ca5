"""The health snapshot: one view of the whole runtime, as JSON and as Prometheus metrics.

Components report through a :class:`HealthRegistry`: ``register(name, stats_fn, assess=...)``.
``stats_fn`` (sync or async, bounded by :data:`STATS_TIMEOUT_S`) returns a JSON-able value — the
component's own ``stats()``; ``assess`` turns that value into a status and reasons. A snapshot is::

    {"status": "ok" | "degraded" | "unhealthy", "reasons": [...], "version", "uptime_s",
     "sections": {"memory": {...}, "hosts": [...], "caches": [...], ...}, "recent_errors": [...]}

The overall status is the worst section status. The built-in assessors:

* :func:`assess_memory` (a :class:`~elaria.memory.MemoryMonitor`'s stats): warning -> degraded,
  critical -> unhealthy;
* :func:`assess_hosts` (a list of ``{"host", "state" or "up", "breaker"?}``, or the same list
  under ``"hosts"``): a host down or a breaker open -> degraded, every host down -> unhealthy;
* :func:`assess_breakers` (a :class:`~elaria.resilience.breaker.BreakerRegistry`'s stats): a
  breaker open or half-open -> degraded;
* :func:`assess_nested` (``{"events": {"status": ...}, "ledger": {...}}``, as telemetry reports):
  the worst status found at the top or one level down, with the parts' reasons;
* the default, :func:`assess_generic`: a ``"status"`` key, or a ``"level"`` of warning/critical.

A section whose ``stats_fn`` raises or times out shows ``{"error": ...}`` and is degraded.

:class:`HealthServer` serves ``GET /health`` (JSON; 503 when unhealthy) and ``GET /metrics``
(Prometheus text from a :class:`prometheus_client.CollectorRegistry` of this registry's own,
never the global one); anything else is 404, another method 405. Loopback by default
(:class:`~elaria.config.HealthSettings`); one request per connection, ``Connection: close``.

Concurrency: the registry and the server are loop-confined; snapshots run the stats functions
one after another on the loop. Cancelling a snapshot cancels the stats call in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from elaria import __version__
from elaria.config import HealthSettings, Settings

if TYPE_CHECKING:
    from elaria.memory.monitor import MemoryMonitor

__all__ = [
    "DEFAULT_ASSESSORS",
    "HealthRegistry",
    "HealthServer",
    "Status",
    "assess_generic",
    "assess_hosts",
    "assess_memory",
    "exit_code",
    "machine_registry",
    "probe_host",
    "probe_hosts",
]

Status = Literal["ok", "degraded", "unhealthy"]
Assessment = tuple[Status, list[str]]
StatsFn = Callable[[], Any] | Callable[[], Awaitable[Any]]
Assessor = Callable[[Any], Assessment]

#: One component's stats must not stall the whole snapshot (a wedged host probe, say).
STATS_TIMEOUT_S = 3.0
#: The SDK itself gives the greeting 1 s; a busy laptop gets a little more from us.
PROBE_TIMEOUT_S = 2.0
#: Sections whose value lists LM Studio hosts (``elaria_host_up``).
_HOST_SECTIONS = {"hosts", "pool"}
#: How many recent errors the snapshot keeps.
RECENT_ERRORS = 20
#: A request line plus headers beyond this is not a health probe.
MAX_REQUEST_BYTES = 16_384
#: A client that does not finish its request in this time is dropped.
REQUEST_TIMEOUT_S = 5.0

_RANK: dict[Status, int] = {"ok": 0, "degraded": 1, "unhealthy": 2}
#: Host states (the pool's and the probe's) that mean "does not answer".
_DOWN_STATES = {"down", "closed", "unreachable", "failed", "error"}


def exit_code(status: str) -> int:
    """The ``elaria health`` exit code: 0 ok, 3 degraded, 1 unhealthy (2 is a config error)."""
    return {"ok": 0, "degraded": 3}.get(status, 1)


# --------------------------------------------------------------------------- assessors


def assess_generic(stats: Any) -> Assessment:
    if isinstance(stats, Mapping):
        status = stats.get("status")
        if status in _RANK:
            return status, [str(r) for r in stats.get("reasons", [])]
        return assess_memory(stats)
    return "ok", []


def assess_memory(stats: Any) -> Assessment:
    if not isinstance(stats, Mapping):
        return "ok", []
    level = stats.get("level")
    usage = stats.get("usage")
    pct = f" ({usage:.0%} of the limit)" if isinstance(usage, int | float) else ""
    reasons: list[str] = []
    if isinstance(stats.get("trend"), Mapping) and stats["trend"].get("leak_suspected"):
        reasons.append("memory climbs steadily: a leak is suspected")
    if level == "critical":
        return "unhealthy", [f"memory critical{pct}", *reasons]
    if level == "warning":
        return "degraded", [f"memory warning{pct}", *reasons]
    return ("degraded" if reasons else "ok"), reasons


def assess_hosts(stats: Any) -> Assessment:
    """Hosts as a list of ``{"host", "state"|"up"}``, the same under ``"hosts"``, or the pool's
    ``{url: {"state": ...}}``."""
    hosts = _host_list(stats)
    if not hosts:
        return "ok", []
    down = [h for h in hosts if not _host_up(h)]
    shaky = [h for h in hosts if _host_up(h) and _shaky(h)]
    reasons = [f"host {_name(h)} is down" for h in down]
    reasons += [f"host {_name(h)}: {_shaky(h)}" for h in shaky]
    if len(down) == len(hosts):
        return "unhealthy", reasons
    return ("degraded" if reasons else "ok"), reasons


def assess_breakers(stats: Any) -> Assessment:
    """``{"hosts": {name: {"state"}}, "models": {...}}``: any breaker not closed degrades."""
    reasons: list[str] = []
    groups = stats.values() if isinstance(stats, Mapping) else ()
    for group in groups:
        if not isinstance(group, Mapping):
            continue
        for name, breaker in group.items():
            state = breaker.get("state") if isinstance(breaker, Mapping) else breaker
            if str(state).lower() in {"open", "half-open", "half_open"}:
                reasons.append(f"breaker {name} is {state}")
    return ("degraded" if reasons else "ok"), reasons


def assess_nested(stats: Any) -> Assessment:
    """The worst of the value's own status and its parts' (one level down), with reasons named
    by part: a failing event log degrades telemetry even though telemetry has no status."""
    status, reasons = assess_generic(stats)
    if not isinstance(stats, Mapping):
        return status, reasons
    for key, part in stats.items():
        if not isinstance(part, Mapping):
            continue
        part_status, why = assess_generic(part)
        if _RANK[part_status] > _RANK[status]:
            status = part_status
        reasons += [f"{key}: {r}" for r in why]
        if part_status != "ok" and not why:
            reasons.append(f"{key} is {part_status}")
    return status, reasons


def _host_list(stats: Any) -> list[Any]:
    if isinstance(stats, Mapping) and isinstance(stats.get("hosts"), list):
        return list(stats["hosts"])
    if isinstance(stats, Mapping):  # the pool's shape: {url: {...}}
        return [{"host": url, **v} for url, v in stats.items() if isinstance(v, Mapping)]
    return list(stats) if isinstance(stats, list) else []


def _host_up(host: Any) -> bool:
    if not isinstance(host, Mapping):
        return False
    if "up" in host:
        return bool(host["up"])
    return str(host.get("state", "")).lower() not in _DOWN_STATES


def _shaky(host: Mapping[str, Any]) -> str:
    """Why an answering host is still a concern ("" if it is not)."""
    breaker = host.get("breaker")
    state = breaker.get("state") if isinstance(breaker, Mapping) else breaker
    if str(state).lower() in {"open", "half-open", "half_open"}:
        return "breaker open"
    if str(host.get("state", "")).lower() == "reconnecting":
        return "reconnecting"
    return ""


def _name(host: Any) -> str:
    return str(host.get("host", "?")) if isinstance(host, Mapping) else str(host)


# --------------------------------------------------------------------------- registry


@dataclass
class _Section:
    stats_fn: StatsFn
    assess: Assessor
    #: For ``register_sections``: the value's keys are sections, assessed by these.
    split: Mapping[str, Assessor] | None = None


#: How ``register_sections`` assesses the sections a runtime's ``stats()`` usually has.
DEFAULT_ASSESSORS: Mapping[str, Assessor] = {
    "memory": assess_memory,
    "pool": assess_hosts,
    "hosts": assess_hosts,
    "breakers": assess_breakers,
    "telemetry": assess_nested,
}


class HealthRegistry:
    """Components register a stats function; :meth:`snapshot` reads them all."""

    def __init__(self, *, version: str = __version__, clock: Callable[[], float] = time.monotonic):
        self.version = version
        self._clock = clock
        self._started = clock()
        self._sections: dict[str, _Section] = {}
        self._errors: deque[dict[str, Any]] = deque(maxlen=RECENT_ERRORS)
        self._last: dict[str, Any] | None = None
        self.metrics = CollectorRegistry(auto_describe=False)
        self.metrics.register(_SnapshotCollector(self))

    def register(self, name: str, stats_fn: StatsFn, *, assess: Assessor | None = None) -> None:
        """Add (or replace) section ``name``. See the module docstring for the assessors."""
        self._sections[name] = _Section(stats_fn, assess or assess_generic)

    def register_sections(
        self, name: str, stats_fn: StatsFn, *, assessors: Mapping[str, Assessor] | None = None
    ) -> None:
        """A stats function returning ``{section: stats}`` (``Runtime.stats()``): each key whose
        value is a mapping or list becomes its own section, assessed by ``assessors[key]``
        (:data:`DEFAULT_ASSESSORS`) or :func:`assess_generic`; plain values go under ``name``."""
        self._sections[name] = _Section(stats_fn, assess_generic, assessors or DEFAULT_ASSESSORS)

    def unregister(self, name: str) -> None:
        self._sections.pop(name, None)

    def record_error(self, error: BaseException | str, *, where: str | None = None) -> None:
        """Keep an error for the snapshot's ``recent_errors`` (the last :data:`RECENT_ERRORS`)."""
        kind = type(error).__name__ if isinstance(error, BaseException) else "error"
        self._errors.append(
            {
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
                "type": kind,
                "message": str(error),
                "where": where,
            }
        )

    def recent_errors(self) -> list[dict[str, Any]]:
        """The errors kept for the snapshot, oldest first (a copy)."""
        return list(self._errors)

    async def snapshot(self) -> dict[str, Any]:
        sections: dict[str, Any] = {}
        statuses: dict[str, Status] = {}
        reasons: list[str] = []
        for name, section in list(self._sections.items()):
            for part, value, status, why in await _read(name, section):
                sections[part] = value
                statuses[part] = status
                reasons += [f"{part}: {r}" for r in why]
        overall: Status = max(statuses.values(), key=_RANK.__getitem__, default="ok")
        snap = {
            "status": overall,
            "reasons": reasons,
            "version": self.version,
            "uptime_s": round(self._clock() - self._started, 1),
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "section_status": statuses,
            "sections": sections,
            "recent_errors": self.recent_errors(),
        }
        self._last = snap
        return snap

    async def metrics_text(self) -> bytes:
        """A fresh snapshot rendered in the Prometheus text format."""
        await self.snapshot()
        return generate_latest(self.metrics)


async def _read(name: str, section: _Section) -> list[tuple[str, Any, Status, list[str]]]:
    """(section name, value, status, reasons) for one registration."""
    try:
        value = await asyncio.wait_for(_call(section.stats_fn), STATS_TIMEOUT_S)
        if section.split is None or not isinstance(value, Mapping):
            return [(name, value, *section.assess(value))]
        parts: list[tuple[str, Any, Status, list[str]]] = []
        plain = {k: v for k, v in value.items() if not isinstance(v, Mapping | list)}
        if plain:
            parts.append((name, plain, *assess_generic(plain)))
        for key, item in value.items():
            if isinstance(item, Mapping | list):
                parts.append((key, item, *section.split.get(key, assess_generic)(item)))
        return parts
    except Exception as exc:  # one broken component must not hide the others
        error = {"error": f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)}
        return [(name, error, "degraded", [f"{name} stats unavailable"])]


async def _call(fn: StatsFn) -> Any:
    value = fn()
    if inspect.isawaitable(value):
        value = await value
    return json.loads(json.dumps(value, default=str))  # JSON-able, and a copy


class _SnapshotCollector(Collector):
    """Prometheus view of the last snapshot: named gauges plus every numeric stat."""

    def __init__(self, registry: HealthRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        snap = self._registry._last
        if snap is None:
            return
        status = GaugeMetricFamily(
            "elaria_health_status", "1 for the current overall status", labels=["status"]
        )
        for name in _RANK:
            status.add_metric([name], 1.0 if snap["status"] == name else 0.0)
        yield status
        yield GaugeMetricFamily(
            "elaria_uptime_seconds", "seconds since the runtime started", value=snap["uptime_s"]
        )
        info = GaugeMetricFamily("elaria_info", "version of the runtime", labels=["version"])
        info.add_metric([snap["version"]], 1.0)
        yield info
        hosts = GaugeMetricFamily("elaria_host_up", "1 when the host answers", labels=["host"])
        stats = GaugeMetricFamily(
            "elaria_component_stat", "every numeric stat by section and path",
            labels=["section", "stat"],
        )  # fmt: skip
        for section, value in snap["sections"].items():
            if section in _HOST_SECTIONS:
                for host in _host_list(value):
                    hosts.add_metric([_name(host)], 1.0 if _host_up(host) else 0.0)
            for path, number in _numbers(value, ""):
                stats.add_metric([section, path], number)
        yield hosts
        yield stats
        errors = GaugeMetricFamily("elaria_recent_errors", "errors kept in the snapshot")
        errors.add_metric([], float(len(snap["recent_errors"])))
        yield errors


def _numbers(value: Any, path: str) -> Iterator[tuple[str, float]]:
    if isinstance(value, bool):
        yield path, 1.0 if value else 0.0
    elif isinstance(value, int | float):
        if math.isfinite(value):
            yield path, float(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            label = item.get("host") or item.get("name") if isinstance(item, Mapping) else None
            yield from _numbers(item, f"{path}[{label or i}]")


# --------------------------------------------------------------------------- host probes


async def probe_host(url: str, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Is an LM Studio (or embedded) server at ``url``? The SDK's greeting probe, then the
    loaded models through the unmodified SDK; never raises, always within ~2 x ``timeout``."""
    api_host = _api_host(url)
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            is_lmstudio = await _greeting(api_host)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = "no answer in time" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
        return {"host": url, "state": "down", "error": reason}
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    if not is_lmstudio:
        return {"host": url, "state": "down", "error": "something answers, but not LM Studio"}
    result: dict[str, Any] = {"host": url, "state": "up", "latency_ms": latency_ms}
    try:
        import lmstudio

        async with asyncio.timeout(timeout), lmstudio.AsyncClient(api_host) as client:
            loaded = await client.llm.list_loaded()
            result["loaded_models"] = [m.identifier for m in loaded]
    except Exception as exc:  # the greeting answered: the host is up, only the listing failed
        result["loaded_models_error"] = f"{type(exc).__name__}: {exc}"
    return result


async def probe_hosts(urls: list[str], timeout: float = PROBE_TIMEOUT_S) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(probe_host(u, timeout) for u in urls)))


def _api_host(url: str) -> str:
    """``ws://h:p/...`` or ``h:p`` -> ``h:p`` (the SDK's ``api_host``)."""
    rest = url.split("://", 1)[1] if "://" in url else url
    return rest.split("/", 1)[0]


async def _greeting(api_host: str) -> bool:
    host, _, port = api_host.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{api_host!r} is not host:port")
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    try:
        writer.write(
            f"GET /lmstudio-greeting HTTP/1.1\r\nHost: {api_host}\r\n"
            "Connection: close\r\n\r\n".encode("ascii")
        )
        await writer.drain()
        raw = await reader.read(MAX_REQUEST_BYTES)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
        return False
    if b"chunked" in head.lower():
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0] if b"\r\n" in body else b""
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("lmstudio") is True


def machine_registry(settings: Settings, monitor: MemoryMonitor | None = None) -> HealthRegistry:
    """What this machine sees without a runtime: the configured LM Studio hosts (probed at each
    snapshot) and this process's memory. ``elaria health`` falls back to it; ``elaria
    serve-health`` serves it."""
    from elaria.memory.monitor import MemoryMonitor

    registry = HealthRegistry()
    memory = monitor or MemoryMonitor(settings.memory)
    hosts = list(settings.lmstudio.hosts)
    timeout = settings.lmstudio.probe_timeout_ms / 1000

    async def host_stats() -> list[dict[str, Any]]:
        return await probe_hosts(hosts, timeout)

    registry.register("hosts", host_stats, assess=assess_hosts)
    registry.register("memory", memory.check, assess=assess_memory)
    return registry


# --------------------------------------------------------------------------- HTTP


class HealthServer:
    """``GET /health`` and ``GET /metrics`` over a tiny asyncio HTTP/1.1 server."""

    def __init__(self, registry: HealthRegistry, settings: HealthSettings | None = None) -> None:
        self.registry = registry
        self.settings = settings or HealthSettings()
        self._server: asyncio.Server | None = None
        self.requests = 0

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the health server is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    async def start(self) -> tuple[str, int]:
        """Listen (port 0 picks a free one); returns the bound address."""
        self._server = await asyncio.start_server(
            self._handle, self.settings.host, self.settings.port
        )
        return self.address

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            status, content_type, body, extra = await self._respond(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            status, content_type, body, extra = 400, "text/plain", b"bad request\n", {}
        except ConnectionError:
            writer.close()
            return
        except Exception as exc:  # a bug of ours: answer 500 rather than drop the connection
            logger.exception("health request failed")
            status, content_type, body, extra = 500, "text/plain", f"{exc!r}\n".encode(), {}
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            "Connection": "close",
            "Cache-Control": "no-store",
            **extra,
        }
        lines = [f"HTTP/1.1 {status} {_REASONS[status]}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _respond(self, head: bytes) -> tuple[int, str, bytes, dict[str, str]]:
        if len(head) > MAX_REQUEST_BYTES:
            return 400, "text/plain", b"request too large\n", {}
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, "text/plain", b"bad request line\n", {}
        method, target = parts[0], parts[1].split("?", 1)[0]
        if target not in ("/health", "/metrics"):
            return 404, "text/plain", b"not found: try /health or /metrics\n", {}
        if method != "GET":
            return 405, "text/plain", b"method not allowed\n", {"Allow": "GET"}
        if target == "/metrics":
            return 200, _PROMETHEUS_TYPE, await self.registry.metrics_text(), {}
        snap = await self.registry.snapshot()
        body = json.dumps(snap, indent=2).encode() + b"\n"
        code = 503 if snap["status"] == "unhealthy" else 200
        return code, "application/json", body, {}


_PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
