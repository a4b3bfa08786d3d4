"""Circuit breaker: stop calling a dependency that keeps failing, probe it, recover.

:class:`CircuitBreaker` is the policy; its state lives in a pluggable
:class:`BreakerStore` (:class:`InMemoryBreakerStore` by default, a Redis
store for state shared across replicas). :func:`from_pybreaker` puts an
existing ``pybreaker.CircuitBreaker`` in a pipeline.
"""

from __future__ import annotations

from resilient.breaker.circuit import BreakerGuard, CircuitBreaker
from resilient.breaker.state import (
    BreakDuration,
    BreakerConfig,
    BreakerMetrics,
    BreakerSnapshot,
    CircuitState,
    StateChange,
)
from resilient.breaker.store import AsyncBreakerStore, BreakerStore, InMemoryBreakerStore

__all__ = [
    "AsyncBreakerStore",
    "BreakerGuard",
    "BreakDuration",
    "BreakerConfig",
    "BreakerMetrics",
    "BreakerSnapshot",
    "BreakerStore",
    "CircuitBreaker",
    "CircuitState",
    "InMemoryBreakerStore",
    "StateChange",
]
