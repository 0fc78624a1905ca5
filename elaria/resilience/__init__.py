"""Resilience primitives, sans-I/O: backoff, retry, breakers, rate limits, batches, classify.

Every object here is fed plain values and an injected clock; none opens a socket. The LM Studio
pool (:mod:`elaria.lmstudio.pool`) and failover (:mod:`elaria.lmstudio.failover`) wire them to
the network. The exception is :mod:`elaria.resilience.deadlines` (not re-exported here): the
per-round deadlines of the agent path on one timer of the running event loop.
"""

from __future__ import annotations

from elaria.resilience.backoff import ReconnectBackoff, delays
from elaria.resilience.batch import BatchExecutor, Outcome
from elaria.resilience.breaker import BreakerRegistry, BreakerState, CircuitBreaker, Permit
from elaria.resilience.classify import ACTIONS, Action, FailureClass, classify, to_backend_error
from elaria.resilience.clock import ManualClock
from elaria.resilience.ratelimit import SlidingWindowLimiter, TokenBucket
from elaria.resilience.retry import retry, with_timeout, with_timeout_and_retry

__all__ = [
    "ACTIONS",
    "Action",
    "BatchExecutor",
    "BreakerRegistry",
    "BreakerState",
    "CircuitBreaker",
    "FailureClass",
    "ManualClock",
    "Outcome",
    "Permit",
    "ReconnectBackoff",
    "SlidingWindowLimiter",
    "TokenBucket",
    "classify",
    "delays",
    "retry",
    "to_backend_error",
    "with_timeout",
    "with_timeout_and_retry",
]
