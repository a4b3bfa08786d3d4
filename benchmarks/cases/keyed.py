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
    # Build every key's breaker before timing; each key's closure around the
    # timed function is built during the first timed round, which the
    # best-of-rounds timing leaves out.
    table = keyed._table
    for _ in range(_LIVE_KEYS):
        table.release(table.acquire((), {}))  # the key function cycles through the keys
    assert len(keyed) == _LIVE_KEYS
    return keyed(sync_target if sync else target)


def _by_hand(sync: bool = False) -> Callable[[], Any]:
    """What users write without Keyed: a dict of wrapped breakers (never evicted) behind a wrapper."""
    names = [f"subscriber-{i}" for i in range(_LIVE_KEYS)]
    table = {name: CircuitBreaker(consecutive_failures=5)(sync_target if sync else target) for name in names}
    keys = itertools.cycle(names)

    def call_sync() -> Any:
        return table[next(keys)]()

    async def call() -> Any:
        return await table[next(keys)]()

    return call_sync if sync else call


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
    Case("dict of 10,000 CircuitBreaker by hand (reference)", "keyed", _by_hand, ours=True),
    Case(
        "dict of 10,000 CircuitBreaker by hand (sync, reference)",
        "keyed",
        lambda: _by_hand(sync=True),
        kind="sync",
        ours=True,
    ),
    Case(
        "CircuitBreaker(consecutive_failures=5) closed (reference)",
        "keyed",
        lambda: CircuitBreaker(consecutive_failures=5)(target),
        ours=True,
    ),
    Case(
        "CircuitBreaker(consecutive_failures=5) closed (sync, reference)",
        "keyed",
        lambda: CircuitBreaker(consecutive_failures=5)(sync_target),
        kind="sync",
        ours=True,
    ),
]
