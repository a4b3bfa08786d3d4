"""Where :class:`~resilient.cache.StaleCache` keeps its entries.

A store maps keys to :class:`CacheEntry` objects and knows nothing about
freshness: the policy stamps each entry with the time it was stored and
decides, when it reads it back, whether it is fresh, stale or too old (and
then deletes it). That is why the default store is a plain LRU map
(:class:`cachetools.LRUCache`) and not a :class:`cachetools.TTLCache`: a TTL
cache drops an item the moment it expires, exactly when a stale copy is most
useful.

Two protocols: :class:`CacheStore` (synchronous, for in-process maps: the
hit path must not pay for an ``await``) and :class:`AsyncCacheStore` (the
same four methods as coroutines, for a shared store such as Redis).
:class:`~resilient.cache.StaleCache` accepts either and checks which one it
got once, at construction.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any, Protocol, runtime_checkable

import cachetools

__all__ = ["AsyncCacheStore", "CacheEntry", "CacheStore", "MemoryStore"]


class CacheEntry:
    """One cached value and when it was stored (on the policy's clock).

    Immutable by convention: a refresh stores a new entry, it never updates
    one in place, so a caller holding an entry never sees it change.
    """

    __slots__ = ("stored_at", "value")

    def __init__(self, value: Any, stored_at: float) -> None:
        #: The cached result.
        self.value = value
        #: ``clock.now()`` when it was stored. A store shared across processes
        #: needs a wall clock here (``StaleCache(clock=...)``), not the default
        #: monotonic one.
        self.stored_at = stored_at

    def __repr__(self) -> str:
        return f"CacheEntry(value={self.value!r}, stored_at={self.stored_at!r})"


@runtime_checkable
class CacheStore(Protocol):
    """A synchronous key -> :class:`CacheEntry` map with bounded memory.

    Implementations must be safe to call from several threads if the policy
    guards synchronous functions called from threads.
    """

    def get(self, key: Hashable) -> CacheEntry | None:
        """The entry under ``key``, or ``None``. May refresh its recency."""
        ...

    def set(self, key: Hashable, entry: CacheEntry) -> None:
        """Store ``entry`` under ``key``, evicting something if full."""
        ...

    def delete(self, key: Hashable) -> None:
        """Forget ``key`` (no error when it is absent)."""
        ...

    def clear(self) -> None:
        """Forget every key."""
        ...


@runtime_checkable
class AsyncCacheStore(Protocol):
    """:class:`CacheStore` with coroutine methods, for shared stores (Redis).

    A policy using one can guard async functions only. Each method should
    fail fast (a short timeout) when the backend is unreachable: a failing
    ``get`` is treated as a miss and a failing ``set`` is logged and ignored,
    so the call itself is never failed by the store.
    """

    async def get(self, key: Hashable) -> CacheEntry | None:
        """The entry under ``key``, or ``None``."""
        ...

    async def set(self, key: Hashable, entry: CacheEntry) -> None:
        """Store ``entry`` under ``key``."""
        ...

    async def delete(self, key: Hashable) -> None:
        """Forget ``key`` (no error when it is absent)."""
        ...

    async def clear(self) -> None:
        """Forget every key this store owns."""
        ...


class MemoryStore:
    """The default store: an in-process LRU map of at most ``max_entries``.

    Built on :class:`cachetools.LRUCache`. Reads take no lock (an LRU read
    only reorders, and a read racing an eviction in another thread is
    reported as a miss); writes, deletes and ``clear`` take one, because
    cachetools' compound updates are not thread-safe.

    Expired entries are not swept: the policy deletes one when it reads it,
    and the LRU bound evicts the rest, so memory stays bounded either way.
    """

    __slots__ = ("_lock", "_lru", "max_entries")

    def __init__(self, max_entries: int = 1024) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int):
            raise TypeError(f"max_entries must be an int, got {max_entries!r}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries!r}")
        #: The most entries kept; the least recently used goes first.
        self.max_entries = max_entries
        self._lru: cachetools.LRUCache[Hashable, CacheEntry] = cachetools.LRUCache(max_entries)
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> CacheEntry | None:
        """The entry under ``key`` (marked most recently used), or ``None``."""
        try:
            return self._lru.get(key)
        except KeyError:  # evicted by another thread between two steps of the read
            return None

    def set(self, key: Hashable, entry: CacheEntry) -> None:
        """Store ``entry``, evicting the least recently used entry when full."""
        with self._lock:
            self._lru[key] = entry

    def delete(self, key: Hashable) -> None:
        """Forget ``key`` if present."""
        with self._lock:
            self._lru.pop(key, None)

    def clear(self) -> None:
        """Forget everything (O(1): the map is replaced, not emptied item by item)."""
        with self._lock:
            self._lru = cachetools.LRUCache(self.max_entries)

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: object) -> bool:
        return key in self._lru

    def __repr__(self) -> str:
        return f"MemoryStore(max_entries={self.max_entries}, entries={len(self._lru)})"
