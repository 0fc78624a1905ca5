"""Resource guards: bounded conversation history, bounded caches, the memory monitor.

* :class:`ConversationHistory` — messages and tokens bounded, tool calls kept with their results.
* :class:`Cache` — LRU + TTL on cachetools, loop-confined, single-flight async loading.
* :class:`MemoryMonitor` — process RSS against the real (cgroup-aware) limit; sheds and refuses.
"""

from __future__ import annotations

from elaria.memory.cache import Cache
from elaria.memory.history import ConversationHistory, TokenCounter, spill_reader_tool
from elaria.memory.monitor import MemoryMonitor, MemoryStatus, Shedder, read_cgroup_limit

__all__ = [
    "Cache",
    "ConversationHistory",
    "MemoryMonitor",
    "MemoryStatus",
    "Shedder",
    "TokenCounter",
    "read_cgroup_limit",
    "spill_reader_tool",
]
