"""Memory of 100,000 small cache entries: StaleCache against a plain cachetools.LRUCache.

Usage::

    .venv/bin/python -m benchmarks.cache_memory [--entries 100000]

Each variant is filled with the same pre-built ints (arguments and values
exist before measuring), so the figures are what the container, its keys
and its per-entry bookkeeping cost. tracemalloc counts Python allocations
(it does not see allocator slack), which is what differs between the
variants here.

* ``LRUCache[int]``: the floor, keyed by the int itself.
* ``LRUCache[hashkey]`` : what ``cachetools.cached`` stores (a hashed tuple key).
* ``StaleCache key=int``: our entries (value + stored_at) under the same int keys.
* ``StaleCache default key``: the default key, ``(qualname, *args)``, as a decorator user gets it.
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc
from collections.abc import Callable

import cachetools
import cachetools.keys

from resilient.cache import StaleCache


def _measure(fill: Callable[[], object]) -> int:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    keep = fill()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del keep
    return after - before


def main() -> None:
    """Print bytes per entry for each variant and the ratio to the plain LRUCache."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    n = parser.parse_args().entries
    args = list(range(1_000_000, 1_000_000 + n))  # not small-int singletons: real objects, made before measuring
    values = {a: a + 1 for a in args}

    def lru_int() -> object:
        c: cachetools.LRUCache[int, int] = cachetools.LRUCache(n)
        for a in args:
            c[a] = values[a]
        return c

    def lru_hashkey() -> object:
        c: cachetools.LRUCache[object, int] = cachetools.LRUCache(n)
        for a in args:
            c[cachetools.keys.hashkey(a)] = values[a]
        return c

    def stale(key: Callable[[int], object] | None) -> Callable[[], object]:
        def fill() -> object:
            cache = StaleCache(60, stale_ttl=600, max_entries=n, key=key)

            @cache
            def load(a: int) -> int:
                return values[a]

            for a in args:
                load(a)
            return cache

        return fill

    rows = [
        ("cachetools.LRUCache, int keys", _measure(lru_int)),
        ("cachetools.LRUCache, hashkey keys (cached)", _measure(lru_hashkey)),
        ("StaleCache, key=int", _measure(stale(lambda a: a))),
        ("StaleCache, default key", _measure(stale(None))),
    ]
    floor = rows[0][1]
    print(f"{n:,} entries (tracemalloc, bytes allocated by the filled container)")
    print(f"{'variant':<45} {'MiB':>8} {'B/entry':>8} {'x LRU':>6}")
    for label, size in rows:
        print(f"{label:<45} {size / 2**20:>8.2f} {size / n:>8.1f} {size / floor:>6.2f}")


if __name__ == "__main__":
    main()
