"""Cache: LRU + TTL bounds with counters, loop confinement, single-flight loading."""

from __future__ import annotations

import asyncio
import threading

import pytest

from elaria.memory.cache import Cache

WAIT = 5.0  # bound on every wait for a task we started


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_lru_evicts_the_least_recently_used_and_counts_it() -> None:
    cache: Cache[str, int] = Cache(max_entries=2, ttl=60)
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.set("c", 3)
    assert "b" not in cache
    assert cache.get("a") == 1
    assert cache.get("b") is None
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["evictions"]) == (2, 1, 1)
    assert stats["entries"] == 2


def test_ttl_and_per_entry_override_expire_on_the_injected_clock() -> None:
    clock = Clock()
    cache: Cache[str, str] = Cache(max_entries=10, ttl=300, clock=clock)
    cache.set("default", "d")
    cache.set("short", "s", ttl=5)
    clock.now += 6
    assert cache.get("short") is None
    assert cache.get("default") == "d"
    clock.now += 300
    assert cache.get("default", "gone") == "gone"
    stats = cache.stats()
    assert stats["expirations"] == 2
    assert stats["evictions"] == 0


def test_delete_clear_and_bad_arguments() -> None:
    cache: Cache[str, int] = Cache()
    cache.set("a", 1)
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    cache.set("b", 2)
    assert cache.clear() == 1
    assert len(cache) == 0
    with pytest.raises(ValueError, match="ttl must be > 0"):
        cache.set("c", 3, ttl=0)
    with pytest.raises(ValueError, match="max_entries must be >= 1"):
        Cache(max_entries=0)
    assert "entries" not in repr(cache)  # repr is a summary line, not a dict dump
    assert "Cache cache 0/100" in repr(cache)


def test_use_from_another_thread_is_refused() -> None:
    cache: Cache[str, int] = Cache(name="handles")
    cache.set("a", 1)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            cache.get("a")
        except RuntimeError as exc:
            errors.append(exc)

    worker = threading.Thread(target=other)
    worker.start()
    worker.join(WAIT)
    assert len(errors) == 1
    assert "loop-confined" in str(errors[0])
    assert "'handles'" in str(errors[0])


async def test_thundering_herd_makes_one_call() -> None:
    cache: Cache[str, str] = Cache()
    release = asyncio.Event()
    calls = 0

    async def loader() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "model-handle"

    waiters = [asyncio.create_task(cache.get_or_load("m", loader)) for _ in range(50)]
    await asyncio.sleep(0)  # let every waiter reach the shared load
    assert cache.stats()["inflight"] == 1
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*waiters), WAIT)
    assert results == ["model-handle"] * 50
    assert calls == 1
    assert await cache.get_or_load("m", loader) == "model-handle"  # now a plain hit
    assert calls == 1


async def test_failing_loader_fails_every_waiter_and_caches_nothing() -> None:
    cache: Cache[str, str] = Cache()
    release = asyncio.Event()

    async def loader() -> str:
        await release.wait()
        raise OSError("host down")

    waiters = [asyncio.create_task(cache.get_or_load("m", loader)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), WAIT)
    assert all(isinstance(o, OSError) for o in outcomes)
    assert "m" not in cache
    assert cache.stats()["load_failures"] == 1
    assert cache.stats()["inflight"] == 0

    async def good() -> str:
        return "ok"

    assert await cache.get_or_load("m", good) == "ok"  # the failure was not remembered


async def test_cancelling_one_waiter_does_not_cancel_the_load() -> None:
    cache: Cache[str, str] = Cache()
    started = asyncio.Event()
    release = asyncio.Event()

    async def loader() -> str:
        started.set()
        await release.wait()
        return "v"

    first = asyncio.create_task(cache.get_or_load("k", loader))
    second = asyncio.create_task(cache.get_or_load("k", loader))
    await asyncio.wait_for(started.wait(), WAIT)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first, WAIT)
    release.set()
    assert await asyncio.wait_for(second, WAIT) == "v"
    assert cache.get("k") == "v"
    assert cache.stats()["loads"] == 1


async def test_load_finishes_and_caches_even_if_every_waiter_is_cancelled() -> None:
    cache: Cache[str, str] = Cache()
    started = asyncio.Event()
    release = asyncio.Event()
    done = asyncio.Event()

    async def loader() -> str:
        started.set()
        await release.wait()
        done.set()
        return "v"

    only = asyncio.create_task(cache.get_or_load("k", loader))
    await asyncio.wait_for(started.wait(), WAIT)
    only.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(only, WAIT)
    release.set()
    await asyncio.wait_for(done.wait(), WAIT)  # the load stores the value in that same step
    assert cache.get("k") == "v"
