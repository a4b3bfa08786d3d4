"""Circuit breaker: stop calling a dependency that keeps failing, probe it, recover.

:class:`CircuitBreaker` is the policy; its state lives in a pluggable
:class:`BreakerStore` (:class:`InMemoryBreakerStore` by default, a Redis
store for state shared across replicas). :func:`from_pybreaker` puts an
existing ``pybreaker.CircuitBreaker`` in a pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resilient.breaker.circuit import BreakerGuard, CircuitBreaker
from resilient.breaker.state import (
    BreakDuration,
    BreakerConfig,
    BreakerMetrics,
    BreakerSnapshot,
    CircuitState,
    GrowingBreak,
    StateChange,
)
from resilient.breaker.store import AsyncBreakerStore, BreakerStore, InMemoryBreakerStore

if TYPE_CHECKING:
    from resilient.breaker.pybreaker_adapter import PyBreakerPolicy

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
    "GrowingBreak",
    "InMemoryBreakerStore",
    "StateChange",
    "from_pybreaker",
]


def from_pybreaker(cb: Any, *, name: str | None = None) -> PyBreakerPolicy:
    """Use an existing ``pybreaker.CircuitBreaker`` as a policy, async functions included.

    Its listeners, storage and settings keep working; the awaited outcome is
    what is recorded. See :mod:`resilient.breaker.pybreaker_adapter`.

    Raises:
        TypeError: ``cb`` is not a ``pybreaker.CircuitBreaker``.
    """
    # Imported here so that pybreaker is loaded only by those who use it.
    from resilient.breaker.pybreaker_adapter import from_pybreaker as _from_pybreaker

    return _from_pybreaker(cb, name=name)
