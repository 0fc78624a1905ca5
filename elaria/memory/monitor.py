"""``MemoryMonitor``: the process's resident memory against the limit that really applies.

The limit is the cgroup's when one is set (v2 ``memory.max``, v1 ``memory.limit_in_bytes``,
whichever is lowest along the process's cgroup path), else the machine's total memory: psutil's
``virtual_memory()`` is host-wide and would let a container be OOM-killed at "40 %".

Each :meth:`MemoryMonitor.check` takes one RSS sample (cheap: one ``/proc`` read through
psutil), keeps a short history, and compares usage with the warning and critical thresholds
(:class:`~elaria.config.MemorySettings`, 80 % / 90 %):

* entering **warning** or **critical** fires the level's callbacks once; every check at or above
  warning asks each registered holder (anything with ``shed() -> int``: caches, histories) to
  shed;
* while **critical**, :meth:`check_admission` raises :class:`~elaria.errors.ResourceExhausted`,
  so the runtime refuses new runs until usage falls below the critical threshold minus
  :data:`RECOVERY_MARGIN` (the margin stops admission from flapping at the boundary);
* a least-squares slope over the sample history flags a suspected **leak** when memory climbs
  steadily faster than ``leak_slope_bytes_per_s``.

Concurrency: loop-confined. :meth:`start` runs ``check`` every ``check_interval_ms`` as a task on
the calling loop; :meth:`stop` cancels it and waits. Callbacks run on the loop, synchronously,
inside ``check``; one that raises is logged and does not stop the others or the monitor.
The sampler, limit source, cgroup root and clock are injectable for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import psutil
from loguru import logger

from elaria.config import MemorySettings
from elaria.errors import ResourceExhausted

__all__ = [
    "CGROUP_ROOT",
    "Level",
    "MemoryMonitor",
    "MemoryStatus",
    "Shedder",
    "read_cgroup_limit",
]

Level = Literal["ok", "warning", "critical"]

#: Where the kernel mounts cgroups.
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
#: cgroup v1 writes "unlimited" as PAGE_COUNTER_MAX pages; anything this large means no limit.
CGROUP_V1_UNLIMITED = 1 << 60
#: Leave critical only this far below the threshold, so admission does not flap at the edge.
RECOVERY_MARGIN = 0.02
#: A steady climb of 1 MiB a minute over the sample window is a leak, not a working set.
LEAK_SLOPE_BYTES_PER_S = (1 << 20) / 60
#: The slope means nothing over a handful of samples.
LEAK_MIN_SAMPLES = 10
#: How straight the climb must be (Pearson r) before it counts as a leak rather than noise.
LEAK_MIN_CORRELATION = 0.9


class Shedder(Protocol):
    """Something that can give memory back: returns how many items it dropped."""

    def shed(self) -> int: ...


@dataclass(frozen=True)
class MemoryStatus:
    """One check: what the process holds, against what limit, at which level."""

    rss: int
    limit: int
    limit_source: str
    usage: float
    level: Level
    at: float

    def describe(self) -> str:
        return (
            f"resident memory {_mib(self.rss)} of {_mib(self.limit)} "
            f"({self.usage:.0%}, limit from {self.limit_source})"
        )


Callback = Callable[[MemoryStatus], None]


def read_cgroup_limit(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
) -> tuple[int, str] | None:
    """The lowest memory limit along this process's cgroup path, v2 or v1, and where it was
    read; ``None`` when no limit is set (or no cgroup is mounted)."""
    v2_path, v1_path = _own_cgroup_paths(proc_cgroup)
    found: list[tuple[int, str]] = []
    for v2_base in (root, root / "unified"):  # "unified": v2 beside v1 on hybrid hosts
        for directory in _ancestry(v2_base, v2_path):
            _read_limit(directory / "memory.max", found, unlimited={"max"})
    for directory in _ancestry(root / "memory", v1_path):
        _read_limit(directory / "memory.limit_in_bytes", found, unlimited=set())
    limits = [(value, where) for value, where in found if value < CGROUP_V1_UNLIMITED]
    return min(limits) if limits else None


class MemoryMonitor:
    """Samples RSS, compares it with the real limit, sheds and refuses. See the module docs."""

    def __init__(
        self,
        settings: MemorySettings | None = None,
        *,
        sampler: Callable[[], int] | None = None,
        limit: int | None = None,
        cgroup_root: Path = CGROUP_ROOT,
        proc_cgroup: Path = PROC_SELF_CGROUP,
        clock: Callable[[], float] = time.monotonic,
        leak_slope_bytes_per_s: float = LEAK_SLOPE_BYTES_PER_S,
    ) -> None:
        self.settings = settings or MemorySettings()
        self._sampler = sampler or _process_rss
        self._clock = clock
        self._leak_slope = leak_slope_bytes_per_s
        if limit is not None:
            self.limit, self.limit_source = limit, "explicit"
        else:
            self.limit, self.limit_source = _real_limit(cgroup_root, proc_cgroup)
        self._samples: deque[tuple[float, int]] = deque(maxlen=self.settings.history_samples)
        self._callbacks: dict[str, list[Callback]] = {
            "warning": [],
            "critical": [],
            "recovered": [],
            "leak": [],
        }
        # Weak: registering a history with the monitor must not keep it alive after its run.
        self._holders: weakref.WeakSet[Any] = weakref.WeakSet()
        self._level: Level = "ok"
        self._last: MemoryStatus | None = None
        self._leak = False
        self._sheds = 0
        self._shed_items = 0
        self._refused = 0
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ wiring

    def on_warning(self, callback: Callback) -> None:
        self._callbacks["warning"].append(callback)

    def on_critical(self, callback: Callback) -> None:
        self._callbacks["critical"].append(callback)

    def on_recovered(self, callback: Callback) -> None:
        """Called when usage falls back to ok from warning or critical."""
        self._callbacks["recovered"].append(callback)

    def on_leak(self, callback: Callback) -> None:
        self._callbacks["leak"].append(callback)

    def register(self, holder: Shedder) -> None:
        """Ask ``holder.shed()`` to give memory back whenever usage is at warning or above.
        Held weakly: a holder nobody else references drops out on its own."""
        self._holders.add(holder)

    def unregister(self, holder: Shedder) -> None:
        self._holders.discard(holder)

    # ------------------------------------------------------------------ checking

    def check(self) -> dict[str, Any]:
        """Take one sample, update the level, fire callbacks, shed; returns :meth:`stats`."""
        rss = self._sampler()
        now = self._clock()
        self._samples.append((now, rss))
        usage = rss / self.limit
        level = self._next_level(usage)
        status = MemoryStatus(rss, self.limit, self.limit_source, usage, level, now)
        previous, self._level, self._last = self._level, level, status
        if level != previous:
            if level == "ok":
                self._fire("recovered", status)
            elif _rank(level) > _rank(previous):
                self._fire(level, status)
        if level != "ok":
            self._shed()
        leak = self._leak_suspected()
        if leak and not self._leak:
            self._fire("leak", status)
        self._leak = leak
        return self.stats()

    def check_admission(self) -> None:
        """Raise :class:`ResourceExhausted` while memory is critical; cheap (no new sample)."""
        if self._level != "critical" or self._last is None:
            return
        self._refused += 1
        back_under = self.settings.critical_threshold - RECOVERY_MARGIN
        raise ResourceExhausted(
            f"Memory is critical: {self._last.describe()}, at or above the critical "
            f"threshold of {self.settings.critical_threshold:.0%}; new runs are refused until "
            f"it falls below {back_under:.0%}",
            where="MemoryMonitor",
            hint="Wait for running agents to finish, lower history.max_tokens or "
            "cache.max_entries, or raise the memory limit.",
        )

    def force_gc(self) -> dict[str, Any]:
        """Run a full garbage collection and re-check; returns collected objects and RSS."""
        before = self._sampler()
        collected = gc.collect()
        stats = self.check()
        return {"collected": collected, "rss_before": before, "rss_after": stats["rss"]}

    @property
    def level(self) -> Level:
        return self._level

    def stats(self) -> dict[str, Any]:
        slope = self._slope()
        last = self._last
        return {
            "rss": last.rss if last else None,
            "limit": self.limit,
            "limit_source": self.limit_source,
            "usage": round(last.usage, 4) if last else None,
            "level": self._level,
            "warning_threshold": self.settings.warning_threshold,
            "critical_threshold": self.settings.critical_threshold,
            "samples": len(self._samples),
            "trend": {
                "slope_bytes_per_s": None if slope is None else round(slope[0], 1),
                "correlation": None if slope is None else round(slope[1], 3),
                "leak_suspected": self._leak,
            },
            "sheds": self._sheds,
            "shed_items": self._shed_items,
            "refused_runs": self._refused,
            "holders": len(self._holders),
        }

    # ------------------------------------------------------------------ background sampling

    async def start(self) -> None:
        """Check now, then every ``check_interval_ms`` on this loop until :meth:`stop`."""
        if self._task is not None and not self._task.done():
            return
        self.check()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="memory-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        interval = self.settings.check_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception:  # a failed sample must not end the monitoring
                logger.exception("memory check failed")

    # ------------------------------------------------------------------ internals

    def _next_level(self, usage: float) -> Level:
        critical = self.settings.critical_threshold
        if usage >= critical:
            return "critical"
        if self._level == "critical" and usage >= critical - RECOVERY_MARGIN:
            return "critical"
        if usage >= self.settings.warning_threshold:
            return "warning"
        return "ok"

    def _fire(self, kind: str, status: MemoryStatus) -> None:
        for callback in list(self._callbacks[kind]):
            try:
                callback(status)
            except Exception:
                logger.exception("memory {} callback {!r} failed", kind, callback)

    def _shed(self) -> None:
        self._sheds += 1
        for holder in list(self._holders):
            try:
                self._shed_items += holder.shed()
            except Exception:
                logger.exception("shed() of {!r} failed", holder)

    def _slope(self) -> tuple[float, float] | None:
        """Least-squares slope (bytes/s) and Pearson r over the sample history."""
        n = len(self._samples)
        if n < 3:
            return None
        xs = [t for t, _ in self._samples]
        ys = [float(v) for _, v in self._samples]
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        syy = sum((y - my) ** 2 for y in ys)
        sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
        if sxx == 0:
            return None
        r = sxy / (sxx * syy) ** 0.5 if syy > 0 else 0.0
        return sxy / sxx, r

    def _leak_suspected(self) -> bool:
        slope = self._slope()
        if slope is None or len(self._samples) < LEAK_MIN_SAMPLES:
            return False
        return slope[0] > self._leak_slope and slope[1] >= LEAK_MIN_CORRELATION


def _rank(level: Level) -> int:
    return {"ok": 0, "warning": 1, "critical": 2}[level]


def _process_rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _real_limit(root: Path, proc_cgroup: Path) -> tuple[int, str]:
    total = int(psutil.virtual_memory().total)
    cgroup = read_cgroup_limit(root, proc_cgroup)
    if cgroup is not None and cgroup[0] < total:
        return cgroup
    return total, "total memory"


def _own_cgroup_paths(proc_cgroup: Path) -> tuple[str, str]:
    """This process's cgroup path in the v2 hierarchy and in v1's memory controller."""
    v2 = v1 = "/"
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return v2, v1
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path or "/"
        elif "memory" in controllers.split(","):
            v1 = path or "/"
    return v2, v1


def _ancestry(base: Path, cgroup_path: str) -> list[Path]:
    """``base/a/b``, ``base/a``, ``base``: a limit anywhere above the process applies to it."""
    parts = [p for p in cgroup_path.split("/") if p and p != ".."]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _read_limit(path: Path, found: list[tuple[int, str]], *, unlimited: set[str]) -> None:
    try:
        raw = path.read_text().strip()
    except OSError:
        return
    if raw in unlimited:
        return
    try:
        value = int(raw)
    except ValueError:
        return
    if value > 0:
        found.append((value, f"cgroup {path.name}"))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"
