"""``Cache``: a bounded LRU + TTL cache on cachetools, with single-flight async loading.

Used for model handles, tool-result spill-over and the results of tools that declare themselves
cacheable. Bounds: ``max_entries`` (least recently used goes first) and a TTL per entry (the
cache's default, or ``ttl=`` on :meth:`Cache.set` / :meth:`Cache.get_or_load`).

Concurrency contract: **loop-confined**. cachetools is not thread-safe, not even for reads (a
read reorders the LRU list and expires entries), so one cache belongs to the thread (and event
loop, if one runs there) that first touches it. With assertions on (``__debug__``), a call from
another thread or loop raises ``RuntimeError`` instead of silently corrupting the cache. Work that
runs in a worker thread hands its result back to the loop and the loop stores it.

Single flight: ``await cache.get_or_load(key, loader)`` runs ``loader()`` once for any number of
concurrent callers of the same key. If it raises, every waiter gets that exception and nothing is
cached. Cancelling one waiter does not cancel the load for the others; the load runs on as its
own task (and its result is cached) even if every waiter is cancelled.

``stats()`` counts hits, misses, evictions (capacity) and expirations (TTL) since creation.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cachetools import TLRUCache

__all__ = ["Cache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class _Item(Generic[V]):
    value: V
    ttl: float


class _CountingTLRU(TLRUCache[Any, "_Item[Any]"]):
    """cachetools' TLRU with eviction and expiration counters (cachetools keeps none)."""

    def __init__(self, maxsize: int, timer: Callable[[], float]) -> None:
        super().__init__(maxsize, ttu=_time_to_use, timer=timer)
        self.evictions = 0
        self.expirations = 0

    def popitem(self) -> tuple[Any, _Item[Any]]:
        # Called by cachetools only to make room for a new entry: an eviction by capacity.
        item = super().popitem()
        self.evictions += 1
        return item

    def expire(self, time: float | None = None) -> list[tuple[Any, _Item[Any]]]:
        expired = list(super().expire(time))
        self.expirations += len(expired)
        return expired


def _time_to_use(_key: Any, item: _Item[Any], now: float) -> float:
    return now + item.ttl


class Cache(Generic[K, V]):
    """LRU with a size limit and a TTL per entry; see the module docstring for the contract."""

    def __init__(
        self,
        max_entries: int = 100,
        ttl: float = 300.0,
        *,
        name: str = "cache",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"cache {name!r}: max_entries must be >= 1, got {max_entries}")
        if ttl <= 0:
            raise ValueError(f"cache {name!r}: ttl must be > 0 seconds, got {ttl}")
        self.name = name
        self.max_entries = max_entries
        self.ttl = ttl
        self._data = _CountingTLRU(max_entries, timer=clock)
        self._inflight: dict[K, asyncio.Task[V]] = {}
        self._hits = 0
        self._misses = 0
        self._loads = 0
        self._load_failures = 0
        self._owner_thread: int | None = None
        self._owner_loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ plain access

    def get(self, key: K, default: V | None = None) -> V | None:
        self._check_owner()
        self._data.expire()
        item = self._data.get(key)
        if item is None:
            self._misses += 1
            return default
        self._hits += 1
        return item.value  # type: ignore[no-any-return]

    def set(self, key: K, value: V, *, ttl: float | None = None) -> None:
        """Store ``value``; ``ttl`` overrides the cache's default for this entry only."""
        self._check_owner()
        entry_ttl = self.ttl if ttl is None else ttl
        if entry_ttl <= 0:
            raise ValueError(f"cache {self.name!r}: ttl must be > 0 seconds, got {entry_ttl}")
        self._data[key] = _Item(value, entry_ttl)

    def delete(self, key: K) -> bool:
        """Remove ``key``; True if it was there."""
        self._check_owner()
        return self._data.pop(key, None) is not None

    def clear(self) -> int:
        """Remove every entry (in-flight loads go on); returns how many were removed."""
        self._check_owner()
        count = len(self._data)
        self._data.clear()
        return count

    def shed(self) -> int:
        """Memory pressure: drop everything. Same as :meth:`clear`."""
        return self.clear()

    def __contains__(self, key: object) -> bool:
        self._check_owner()
        return key in self._data

    def __len__(self) -> int:
        self._check_owner()
        self._data.expire()
        return len(self._data)

    def __repr__(self) -> str:
        return (
            f"<Cache {self.name} {len(self._data)}/{self.max_entries} ttl={self.ttl:g}s "
            f"hits={self._hits} misses={self._misses} inflight={len(self._inflight)}>"
        )

    # ------------------------------------------------------------------ single flight

    async def get_or_load(
        self, key: K, loader: Callable[[], Awaitable[V]], *, ttl: float | None = None
    ) -> V:
        """The cached value, or the result of one ``loader()`` shared by every concurrent caller."""
        self._check_owner()
        self._data.expire()
        item = self._data.get(key)
        if item is not None:
            self._hits += 1
            return item.value  # type: ignore[no-any-return]
        self._misses += 1
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._load(key, loader, ttl), name=f"cache-load:{self.name}:{key!r}"
            )
            task.add_done_callback(_retrieve_exception)
            self._inflight[key] = task
        # shield: a cancelled waiter leaves the shared load running for the others.
        return await asyncio.shield(task)

    async def _load(self, key: K, loader: Callable[[], Awaitable[V]], ttl: float | None) -> V:
        self._loads += 1
        try:
            value = await loader()
        except BaseException:
            self._load_failures += 1
            raise
        finally:
            self._inflight.pop(key, None)
        self.set(key, value, ttl=ttl)
        return value

    # ------------------------------------------------------------------ inspection

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "entries": len(self._data),
            "max_entries": self.max_entries,
            "ttl_s": self.ttl,
            "hits": self._hits,
            "misses": self._misses,
            "evictions": self._data.evictions,
            "expirations": self._data.expirations,
            "loads": self._loads,
            "load_failures": self._load_failures,
            "inflight": len(self._inflight),
        }

    def _check_owner(self) -> None:
        if not __debug__:
            return
        thread = threading.get_ident()
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self._owner_thread is None:
            self._owner_thread = thread
        elif thread != self._owner_thread:
            raise RuntimeError(
                f"cache {self.name!r} is loop-confined: used from thread {thread} but owned by "
                f"thread {self._owner_thread}; hand the value back to the owning loop instead"
            )
        if loop is not None:
            if self._owner_loop is None or self._owner_loop.is_closed():
                self._owner_loop = loop
            elif loop is not self._owner_loop:
                raise RuntimeError(
                    f"cache {self.name!r} is loop-confined: used from another event loop; "
                    "create one cache per loop"
                )


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    # Mark a failed load as seen even when every waiter was cancelled, so asyncio does not log
    # "exception was never retrieved"; the waiters that remain get it through the shield.
    if not task.cancelled():
        task.exception()
