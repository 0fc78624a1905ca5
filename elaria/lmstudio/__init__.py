"""The LM Studio layer: one self-healing client per host, bounded rounds, failover.

* :mod:`elaria.lmstudio.rounds` — the pinned contract with the agent (``RoundRequest`` ->
  ``RoundResult``).
* :mod:`elaria.lmstudio.pool` — :class:`~elaria.lmstudio.pool.ClientPool`: one shared
  ``lmstudio.AsyncClient`` per host, liveness probes, eviction and reconnect with backoff,
  model-handle cache, idle close, ``stats()``.
* :mod:`elaria.lmstudio.predict` — one prediction round on one target, every await bounded,
  server-side ``cancel`` on abandonment, tool calls and malformed calls captured.
* :mod:`elaria.lmstudio.failover` — :class:`~elaria.lmstudio.failover.Failover`: targets in
  order, breakers, classification of failures, and the model questions the agent asks
  (context length, token counts, model listings).

Everything runs on one event loop; see each module for its cancellation contract.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["ClientPool", "Failover", "HostState", "Lease", "predict_round"]

# Lazy, so ``import elaria.lmstudio.rounds`` (the contract) stays free of the SDK import.
_HOMES = {
    "ClientPool": "elaria.lmstudio.pool",
    "HostState": "elaria.lmstudio.pool",
    "Lease": "elaria.lmstudio.pool",
    "Failover": "elaria.lmstudio.failover",
    "predict_round": "elaria.lmstudio.predict",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'elaria.lmstudio' has no attribute {name!r}")
