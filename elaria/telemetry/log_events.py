"""Helpers for the events the runtime logs, each a loguru record bound with ``kind`` and fields.

``log_api_call``, ``log_model_load`` (name, success, duration), ``log_tool_execution``,
``log_websocket_event``, ``log_memory_usage``, ``log_security_event`` (severity low | medium |
high | critical; high and above reach the error log) and the performance ``timer``::

    with timer("inference", model=model) as t:
        ...
        t.meta["tokens"] = n        # known only at the end
    t.elapsed                        # seconds

Every helper reports the caller's location (function, line), not its own. They only log: the
sinks (and redaction) are :mod:`elaria.telemetry.logging`'s. Any thread, any task.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal

from loguru import logger

__all__ = [
    "Severity",
    "Timer",
    "log_api_call",
    "log_memory_usage",
    "log_model_load",
    "log_security_event",
    "log_tool_execution",
    "log_websocket_event",
    "timer",
]

Severity = Literal["low", "medium", "high", "critical"]


def log_api_call(
    method: str,
    target: str,
    *,
    status: int | str | None = None,
    duration_s: float | None = None,
    success: bool = True,
    **meta: Any,
) -> None:
    """An outbound call (HTTP, LM Studio RPC). ``target`` is redacted like everything else."""
    logger.opt(depth=1).bind(
        kind="api_call",
        method=method,
        target=target,
        status=status,
        duration_ms=_ms(duration_s),
        success=success,
        **meta,
    ).log("INFO" if success else "WARNING", f"api call {method} {target} -> {status}")


def log_model_load(
    model: str,
    *,
    success: bool,
    duration_s: float,
    host: str | None = None,
    error: str | None = None,
    **meta: Any,
) -> None:
    outcome = "loaded" if success else f"failed to load ({error or 'unknown error'})"
    logger.opt(depth=1).bind(
        kind="model_load",
        model=model,
        host=host,
        success=success,
        duration_ms=_ms(duration_s),
        error=error,
        **meta,
    ).log("INFO" if success else "ERROR", f"model {model} {outcome} in {duration_s:.3f} s")


def log_tool_execution(
    tool: str,
    *,
    outcome: str,
    duration_s: float,
    **meta: Any,
) -> None:
    """``outcome``: ``ok``, ``error``, ``refused``, ``timeout``, ``denied`` …"""
    logger.opt(depth=1).bind(
        kind="tool", tool=tool, outcome=outcome, duration_ms=_ms(duration_s), **meta
    ).log("INFO" if outcome == "ok" else "WARNING", f"tool {tool} {outcome} in {duration_s:.3f} s")


def log_websocket_event(event: str, *, host: str, **meta: Any) -> None:
    """Connect, disconnect, reconnect, probe failures on an LM Studio socket."""
    logger.opt(depth=1).bind(kind="websocket", event=event, host=host, **meta).info(
        f"websocket {event} {host}"
    )


def log_memory_usage(
    rss_bytes: int,
    *,
    fraction: float | None = None,
    level: Literal["ok", "warning", "critical"] = "ok",
    **meta: Any,
) -> None:
    """A memory sample; ``fraction`` of the effective limit, ``level`` from the monitor."""
    log_level = {"ok": "DEBUG", "warning": "WARNING", "critical": "ERROR"}[level]
    shown = f" ({fraction:.0%} of limit)" if fraction is not None else ""
    logger.opt(depth=1).bind(
        kind="memory", rss_bytes=rss_bytes, fraction=fraction, memory_level=level, **meta
    ).log(log_level, f"memory {rss_bytes / 1_048_576:.1f} MiB{shown}: {level}")


_SEVERITY_LEVEL: Final[dict[str, str]] = {
    "low": "INFO",
    "medium": "WARNING",
    "high": "ERROR",
    "critical": "CRITICAL",
}


def log_security_event(event: str, *, severity: Severity, **meta: Any) -> None:
    """A security-relevant event; high and critical ones also reach the error log."""
    logger.opt(depth=1).bind(kind="security", event=event, severity=severity, **meta).log(
        _SEVERITY_LEVEL[severity], f"security [{severity}] {event}"
    )


@dataclass
class Timer:
    """What ``with timer(...) as t`` yields: ``t.elapsed`` (live inside, final after)."""

    name: str
    meta: dict[str, Any]
    clock: Callable[[], float]
    started: float = 0.0
    stopped: float | None = None

    @property
    def elapsed(self) -> float:
        end = self.stopped if self.stopped is not None else self.clock()
        return end - self.started


@contextmanager
def timer(
    name: str,
    *,
    level: str = "INFO",
    clock: Callable[[], float] = time.perf_counter,
    **meta: Any,
) -> Iterator[Timer]:
    """Time a block and log ``kind="timer"`` with its duration, success and ``meta``.

    Add to ``t.meta`` inside the block to log values known only at the end (tokens, host).
    """
    t = Timer(name=name, meta=dict(meta), clock=clock, started=clock())
    success = False
    try:
        yield t
        success = True
    finally:
        t.stopped = clock()
        logger.opt(depth=2).bind(
            kind="timer", timer=name, duration_ms=_ms(t.elapsed), success=success, **t.meta
        ).log(level, f"{name} took {t.elapsed * 1000:.1f} ms")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
