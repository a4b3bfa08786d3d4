"""Keyed policies: one breaker per key, 10,000 keys live, against the breaker alone.

The keyed cases cycle through every live key, so each call finds its own
key's entry (no call builds a policy); the difference with the plain
``CircuitBreaker(consecutive_failures=5) closed`` case beside them is what
``Keyed`` adds: the key function, the lookup, the reference count.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from benchmarks.cases import Case, sync_target, target
from resilient import CircuitBreaker, Keyed

_LIVE_KEYS = 10_000


def _keyed(idle_ttl: float | None = None, sync: bool = False) -> Callable[[], Any]:
    keys = itertools.cycle([f"subscriber-{i}" for i in range(_LIVE_KEYS)])
    keyed = Keyed(
        lambda _key: CircuitBreaker(consecutive_failures=5),
        key=lambda: next(keys),
        max_keys=2 * _LIVE_KEYS,
        idle_ttl=idle_ttl,
    )
    # Build every key's breaker before timing (the policies are shared by
    # every function the Keyed wraps; the async closures are built during the
    # first timed round, which the best-of-rounds timing leaves out).
    fill = keyed(sync_target)
    for _ in range(_LIVE_KEYS):
        fill()
    assert len(keyed) == _LIVE_KEYS
    return keyed(sync_target if sync else target)


CASES: list[Case] = [
    Case("Keyed(CircuitBreaker), 10,000 live keys", "keyed", _keyed, ours=True),
    Case("Keyed(CircuitBreaker, idle_ttl=60), 10,000 live keys", "keyed", lambda: _keyed(60.0), ours=True),
    Case(
        "Keyed(CircuitBreaker), 10,000 live keys (sync)",
        "keyed",
        lambda: _keyed(sync=True),
        kind="sync",
        ours=True,
    ),
    Case(
        "CircuitBreaker(consecutive_failures=5) closed",
        "keyed",
        lambda: CircuitBreaker(consecutive_failures=5)(target),
        ours=True,
    ),
    Case(
        "CircuitBreaker(consecutive_failures=5) closed (sync)",
        "keyed",
        lambda: CircuitBreaker(consecutive_failures=5)(sync_target),
        kind="sync",
        ours=True,
    ),
]
