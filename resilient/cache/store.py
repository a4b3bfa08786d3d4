"""Where :class:`~resilient.cache.StaleCache` keeps its entries.

A store maps keys to :class:`CacheEntry` objects and knows nothing about
freshness: the policy stamps each entry with the time it was stored and
decides, when it reads it back, whether it is fresh, stale or too old (and
then deletes it). That is why the default store is a plain LRU map
(:class:`cachetools.LRUCache`) and not a :class:`cachetools.TTLCache`: a TTL
cache drops an item the moment it expires, exactly when a stale copy is most
useful.

Two base classes: :class:`CacheStore` (synchronous, for in-process maps:
the hit path must not pay for an ``await``) and :class:`AsyncCacheStore`
(the same four methods as coroutines, for a shared store such as Redis).
:class:`~resilient.cache.StaleCache` accepts either and tells which one it
got by its type, once, at construction (:func:`store_kind`).
"""

from __future__ import annotations

import abc
import inspect
import threading
import warnings
from collections.abc import Hashable
from typing import Any, Literal

import cachetools

from resilient.validate import check_int

__all__ = ["AsyncCacheStore", "CacheEntry", "CacheStore", "MemoryStore", "SharedCacheStore", "store_kind"]


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


class CacheStore(abc.ABC):
    """Base class of synchronous stores: a key -> :class:`CacheEntry` map with bounded memory.

    :class:`~resilient.cache.StaleCache` tells a synchronous store from an
    asynchronous one by its type: subclass this class (or
    :class:`AsyncCacheStore`), or register yours with
    ``CacheStore.register(MyStore)``.

    The call contract, what the policy promises and what it expects:

    * The policy calls ``get`` on every call of the guarded function (the
      hit path: keep it fast, no I/O), ``set`` after a successful call,
      ``delete`` when an entry is too old, invalidated or the write raced an
      invalidation, and ``clear`` from :meth:`StaleCache.clear`.
    * It calls them from whatever thread runs the guarded function, so a
      store behind synchronous functions called from threads must be safe
      to call from several threads at once.
    * It never holds a lock of its own while calling the store: a store may
      block, take its own locks, or call back into the policy.
    * Keys are whatever the policy's ``key`` function returns (hashable);
      entries are immutable: store and return the object you were given.
    * ``get`` may return ``None`` for a key it was given (an eviction), but
      never an entry that was not the last one ``set`` for that key, nor one
      removed by ``delete`` or ``clear``.
    * A method that raises is treated as the store being unavailable: a
      failing ``get`` is a miss, a failing ``set`` or ``delete`` is logged
      (once until the store recovers) and ignored; the guarded call itself
      never fails because of the store.
    """

    __slots__ = ()

    @abc.abstractmethod
    def get(self, key: Hashable) -> CacheEntry | None:
        """The entry under ``key``, or ``None``. May refresh its recency."""

    @abc.abstractmethod
    def set(self, key: Hashable, entry: CacheEntry) -> None:
        """Store ``entry`` under ``key``, evicting something if full."""

    @abc.abstractmethod
    def delete(self, key: Hashable) -> None:
        """Forget ``key`` (no error when it is absent)."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Forget every key."""


class AsyncCacheStore(abc.ABC):
    """Base class of asynchronous stores: :class:`CacheStore`'s methods as coroutines, for shared stores (Redis).

    The same call contract as :class:`CacheStore`, with coroutines: the
    policy awaits them on the event loop of the guarded call (so a policy
    with an async store guards async functions only). Each method should
    fail fast (a short timeout) when the backend is unreachable: a failing
    ``get`` is a miss, a failing ``set`` is logged and ignored. A write may
    be undone by a ``delete`` when an invalidation raced it.
    """

    __slots__ = ()

    @abc.abstractmethod
    async def get(self, key: Hashable) -> CacheEntry | None:
        """The entry under ``key``, or ``None``."""

    @abc.abstractmethod
    async def set(self, key: Hashable, entry: CacheEntry) -> None:
        """Store ``entry`` under ``key``."""

    @abc.abstractmethod
    async def delete(self, key: Hashable) -> None:
        """Forget ``key`` (no error when it is absent)."""

    @abc.abstractmethod
    async def clear(self) -> None:
        """Forget every key this store owns."""


class SharedCacheStore(AsyncCacheStore):
    """An asynchronous store that several processes share: it expires entries and offers a lease.

    With such a store, :class:`~resilient.cache.StaleCache` makes one call
    per key across every process (a cross-process single flight), not one
    per process: before calling the guarded function for a key, the flight
    asks :meth:`lease`; the process that gets it calls and stores, the
    others poll :meth:`get` for the value it stores (serving their stale
    copy meanwhile, if they have one) and call themselves only once the
    lease has lapsed (its holder died or hangs).

    The call contract, on top of :class:`AsyncCacheStore`'s:

    * :meth:`bind` is called once, by the cache's constructor, with the
      cache's ``ttl``, ``stale_ttl`` and clock: the store expires an entry
      on its own once it is older than ``stale_ttl`` (so its memory is
      bounded without the cache's help) and converts ``stored_at`` between
      the cache's clock and the time the processes share.
    * :meth:`lease` is called at most once per flight before the call, and
      again while waiting. ``True`` means "call": this process holds the
      lease, or the store cannot tell (its backend is unreachable: then
      every process calls, as without sharing). ``False`` means another
      process holds a lease that has not lapsed.
    * After :meth:`lease` returned ``False`` for a key, and until the lease
      could lapse or a fresh entry (younger than the cache's ``ttl``) is
      read, :meth:`get` of that key reads the shared state, never a copy
      this process keeps (the waiting flight polls it for the value the
      holder stores: a copy of the old value would hide it, and the flight
      would call again).
    * :meth:`release` is called once the flight's outcome is stored (or the
      call failed), only by the flight that got the lease; a lease that is
      not released lapses after ``seconds``.
    * :attr:`lease_seconds` and :attr:`poll_interval` tell the cache how
      long a lease lasts and how often a waiting flight looks for the value.
    """

    __slots__ = ()

    #: Seconds a lease lasts unless released.
    lease_seconds: float = 10.0
    #: Seconds between two looks for the value while another process holds the lease.
    poll_interval: float = 0.05

    @abc.abstractmethod
    def bind(self, ttl: float, stale_ttl: float, clock: Any) -> None:
        """Take the cache's options (once, from its constructor)."""

    @abc.abstractmethod
    async def lease(self, key: Hashable, seconds: float) -> bool:
        """Whether this process may call for ``key`` now (it holds the lease, or sharing is down)."""

    @abc.abstractmethod
    async def release(self, key: Hashable) -> None:
        """Give back the lease this process holds for ``key`` (no error when it lapsed)."""


_METHODS = ("get", "set", "delete", "clear")


def store_kind(store: object) -> Literal["sync", "async"]:
    """Whether ``store`` is a :class:`CacheStore` (``"sync"``) or an :class:`AsyncCacheStore` (``"async"``).

    Decided by type. A store that derives from neither but has the four
    methods (written against the first release, when these were protocols)
    is still accepted, its kind read from its methods, with a
    :class:`DeprecationWarning`.

    Raises:
        TypeError: neither a store nor anything with the four methods, or
            methods mixing synchronous and async.
    """
    is_sync = isinstance(store, CacheStore)
    is_async = isinstance(store, AsyncCacheStore)
    if is_sync and is_async:
        raise TypeError(f"store must be a CacheStore or an AsyncCacheStore, not both, got {store!r}")
    if is_sync or is_async:
        # Decided by type; the methods are looked at only to catch a store
        # that contradicts its own base class (every hit would then misbehave).
        wrong = [m for m in _METHODS if inspect.iscoroutinefunction(getattr(store, m, None)) is not is_async]
        if wrong:
            base, other = ("AsyncCacheStore", "synchronous") if is_async else ("CacheStore", "async")
            raise TypeError(
                f"store methods must be all synchronous or all async: {store!r} is a {base} "
                f"but {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} {other}"
            )
        return "async" if is_async else "sync"
    if not all(callable(getattr(store, m, None)) for m in _METHODS):
        raise TypeError(f"store must be a CacheStore or an AsyncCacheStore (get/set/delete/clear), got {store!r}")
    kinds = {inspect.iscoroutinefunction(getattr(store, m)) for m in _METHODS}
    if len(kinds) != 1:
        raise TypeError(f"store methods must be all synchronous or all async, got {store!r}")
    kind: Literal["sync", "async"] = "async" if kinds == {True} else "sync"
    base = "AsyncCacheStore" if kind == "async" else "CacheStore"
    warnings.warn(
        f"{type(store).__qualname__} derives from neither CacheStore nor AsyncCacheStore, so its kind was guessed "
        f"from its methods ({kind}); subclass resilient.cache.{base} (or call {base}.register) to keep it working",
        DeprecationWarning,
        stacklevel=3,
    )
    return kind


class MemoryStore(CacheStore):
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
        #: The most entries kept; the least recently used goes first.
        self.max_entries = check_int(max_entries, "max_entries")
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
