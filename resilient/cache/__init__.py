"""Stale-cache fallback: :class:`StaleCache` and its stores.

``StaleCache(ttl=30, stale_ttl=600)`` answers from a cache while an entry is
fresh, answers at once from a stale entry while it refreshes it in the
background, answers from the newest stale entry when the call fails (or an
inner breaker, bulkhead, limiter or timeout refuses it), and lets only one
call per key reach the dependency at a time.

* :class:`StaleCache` - the policy.
* :func:`last_lookup` - whether the answer the caller just got was fresh,
  stale or a miss, and how old it was.
* :class:`CacheStore`, :class:`AsyncCacheStore`, :class:`MemoryStore`,
  :class:`CacheEntry` - where entries live.
"""

from __future__ import annotations

from resilient.cache.lookup import FRESH, MISS, STALE, CacheLookup, last_lookup
from resilient.cache.stale import CACHE_REFRESH_FAILED, StaleCache
from resilient.cache.store import AsyncCacheStore, CacheEntry, CacheStore, MemoryStore, SharedCacheStore, store_kind

__all__ = [
    "CACHE_REFRESH_FAILED",
    "FRESH",
    "MISS",
    "STALE",
    "AsyncCacheStore",
    "CacheEntry",
    "CacheLookup",
    "CacheStore",
    "MemoryStore",
    "SharedCacheStore",
    "StaleCache",
    "last_lookup",
    "store_kind",
]
