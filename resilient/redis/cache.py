"""RedisCacheStore: a StaleCache tier shared by every replica, with a near tier and a cross-process single flight."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol, runtime_checkable

import cachetools

from resilient.cache import CacheEntry, SharedCacheStore
from resilient.clock import SYSTEM_CLOCK, Clock
from resilient.events import Listener
from resilient.redis._common import ClientArg, Connector, FailOpen, LuaScript, key_part, validate_common
from resilient.validate import check_callable, check_int, check_seconds

__all__ = ["JSONSerializer", "RedisCacheStore", "Serializer"]

logger = logging.getLogger("resilient.redis")


@runtime_checkable
class Serializer(Protocol):
    """How :class:`RedisCacheStore` turns values into bytes and back."""

    def dumps(self, value: Any) -> bytes:
        """``value`` as bytes (raise for a value it cannot encode: the entry is then kept locally only)."""
        ...

    def loads(self, data: bytes) -> Any:
        """The value ``dumps`` made ``data`` from (raise for bytes it cannot read: a miss)."""
        ...


class JSONSerializer:
    """JSON (UTF-8): safe on data another process wrote, for values JSON can hold.

    Tuples come back as lists and dict keys as strings; for richer values
    give your own :class:`Serializer` (never ``pickle`` on a Redis that
    anything but your own services can write: loading pickled data runs
    code).
    """

    def dumps(self, value: Any) -> bytes:
        """``value`` as compact JSON."""
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()

    def loads(self, data: bytes) -> Any:
        """The value of JSON ``data``."""
        return json.loads(data)

    def __repr__(self) -> str:
        return "JSONSerializer()"


# Take the lease when it is free or lapsed (on the processes' shared time,
# not Redis' TTL alone, so that tests on a FakeClock see it lapse); the PX
# expiry is only the safety net that removes a dead holder's key.
_LEASE = LuaScript(
    """
local cur = redis.call('GET', KEYS[1])
if cur then
  local untl = tonumber(string.match(cur, '^[^|]+'))
  if untl and untl > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2] .. '|' .. ARGV[4], 'PX', ARGV[3])
return 1
"""
)
# Release only our own lease: a lapsed one may belong to another process by now.
_RELEASE = LuaScript(
    """
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '|(.*)$') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
)
_TOKENS = itertools.count()


class RedisCacheStore(SharedCacheStore):
    """A :class:`~resilient.cache.StaleCache` store in Redis: one cache for every replica.

    ``StaleCache(60, stale_ttl=600, store=RedisCacheStore(url, name="prices"))``:
    every replica that builds the same cache (same ``name``, same Redis)
    reads and writes the same entries, so a value one replica fetched is
    fresh for all, and a cold or expired key costs ONE upstream call for the
    whole fleet: the first replica to miss takes a lease (a Redis key with an
    expiry) and calls; the others serve their stale copy if they have one,
    else wait for the value (polling every ``poll_interval``), and call
    themselves only when the lease lapses (its holder died).

    Entries are ``{prefix}cache:{name}:{key}`` (both parts encoded, so no
    two (name, key) pairs collide; the key is ``repr(key)``, so keys must
    have a stable ``repr`` across processes, as the default key of plain
    arguments does), each expiring in Redis once older than the cache's
    ``stale_ttl`` (with no ``stale_ttl``, never: bound Redis' memory with
    ``maxmemory``). Every command touches one key, so the store works on a
    Redis Cluster as it is.

    In front of Redis, a near tier in this process (at most
    ``near_max_entries`` entries, each served for ``near_ttl`` seconds)
    answers the hottest keys without a round trip; an invalidation on
    another replica reaches this one after at most ``near_ttl``.

    When Redis is unreachable, slow (more than ``timeout``) or errors, the
    store fails open to the near tier alone (one warning on
    ``resilient.redis`` and a ``store_failed_open`` event; the near tier
    then keeps entries until they are evicted): each replica caches and
    calls on its own until a probe, at most every ``recovery_interval``
    seconds, finds Redis again.

    Args:
        url_or_client: a ``redis://`` URL (``redis+cluster://host:port,...``
            for a Redis Cluster) or a ``redis.asyncio`` client.
        name: the shared cache's name; every replica uses the same.
        prefix: the namespace of every key.
        serializer: a :class:`Serializer` (default :class:`JSONSerializer`);
            a value it cannot encode stays in the near tier only, bytes it
            cannot decode are a miss; each logged once.
        timeout: seconds one Redis operation may take before failing open.
        recovery_interval: seconds between two probes of a failed Redis.
        near_ttl: seconds the near tier serves an entry without asking Redis
            (0 turns the near tier off while Redis answers).
        near_max_entries: the near tier's bound (>= 1).
        lease_seconds: how long a lease lasts unless released (the longest
            a replica waits for another's call).
        poll_interval: seconds between two looks for the value while
            another replica holds the lease.
        wall: the time the replicas share (default ``time.time``); tests
            pass their ``FakeClock``'s ``now``.
        listeners: listeners of the store's events.
    """

    __slots__ = (
        "_clock",
        "_conn",
        "_contended",
        "_failopen",
        "_lock",
        "_near",
        "_probe_key",
        "_px",
        "_token",
        "_ttl",
        "_warned",
        "lease_seconds",
        "name",
        "near_ttl",
        "poll_interval",
        "prefix",
        "serializer",
        "timeout",
        "wall",
    )

    def __init__(
        self,
        url_or_client: ClientArg,
        *,
        name: str = "default",
        prefix: str = "resilient:",
        serializer: Serializer | None = None,
        timeout: float = 0.05,
        recovery_interval: float = 1.0,
        near_ttl: float = 1.0,
        near_max_entries: int = 1024,
        lease_seconds: float = 10.0,
        poll_interval: float = 0.05,
        wall: Callable[[], float] | None = None,
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        validate_common(prefix, timeout, recovery_interval)
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str (it is part of every key), got {name!r}")
        #: The shared cache's name.
        self.name = name
        #: The namespace of every key.
        self.prefix = prefix
        if serializer is None:
            serializer = JSONSerializer()
        elif not isinstance(serializer, Serializer):
            raise TypeError(f"serializer must have dumps(value) -> bytes and loads(bytes), got {serializer!r}")
        #: How values become bytes.
        self.serializer: Serializer = serializer
        #: Seconds one Redis operation may take.
        self.timeout = float(timeout)
        #: Seconds the near tier serves an entry without asking Redis.
        self.near_ttl = check_seconds(near_ttl, "near_ttl", allow_zero=True)
        self.lease_seconds = check_seconds(lease_seconds, "lease_seconds")
        self.poll_interval = check_seconds(poll_interval, "poll_interval")
        #: The time the replicas share.
        self.wall: Callable[[], float] = check_callable(wall, "wall", "a callable () -> float", allow_none=True) or (
            time.time
        )
        self._conn = Connector(url_or_client, None, self.timeout)
        if not self._conn.has_async:
            raise TypeError("RedisCacheStore needs a redis:// URL or a redis.asyncio client (StaleCache awaits it)")
        # key -> (entry, clock time the near tier stops serving it without Redis)
        self._near: cachetools.LRUCache[Hashable, tuple[CacheEntry, float]] = cachetools.LRUCache(
            check_int(near_max_entries, "near_max_entries")
        )
        # key -> clock time until which another replica's lease may hold it: while a flight here
        # waits for that replica's value, get() reads Redis and keeps no near copy (a copy of the
        # old value would hide the new one for near_ttl, and the flight would call again).
        self._contended: cachetools.LRUCache[Hashable, float] = cachetools.LRUCache(self._near.maxsize)
        self._lock = threading.Lock()
        self._clock: Clock = SYSTEM_CLOCK
        self._ttl = 0.0  # the cache's ttl, from bind(): an entry younger than it is fresh
        self._px: int | None = None
        self._token = f"{os.getpid()}-{id(self):x}-{next(_TOKENS)}"
        self._warned: set[str] = set()
        self._probe_key = f"{prefix}cache:{key_part(name)}:probe"
        self._failopen = FailOpen(
            kind="cache",
            name=name,
            where=self._conn.where,
            interval=float(recovery_interval),
            clock=SYSTEM_CLOCK,
            listeners=tuple(listeners),
        )

    # -- SharedCacheStore ----------------------------------------------------------------

    def bind(self, ttl: float, stale_ttl: float, clock: Any) -> None:
        """Take the cache's ``ttl`` (what is fresh), ``stale_ttl`` (each key's expiry in Redis) and clock."""
        self._clock = clock
        self._ttl = ttl
        self._failopen.clock = clock
        self._px = None if math.isinf(stale_ttl) else max(1, math.ceil(stale_ttl * 1000))

    @property
    def using_redis(self) -> bool:
        """``False`` while the store has failed open to its near tier."""
        return self._failopen.healthy

    def _key(self, key: Hashable) -> str:
        return f"{self.prefix}cache:{key_part(self.name)}:{key_part(repr(key))}"

    def _warn_once(self, what: str, exc: Exception) -> None:
        if what not in self._warned:
            self._warned.add(what)
            logger.warning("resilient: RedisCacheStore %r: %s (%r); logged once", self.name, what, exc)

    async def _redis(self, op: Callable[[Any], Any]) -> tuple[bool, Any]:
        """``(True, reply)`` of ``await op(client)``, or ``(False, None)`` while failed open."""
        failopen = self._failopen
        if not failopen.healthy:
            failopen.aprobe(self._aprobe)
            return False, None
        try:
            return True, await self._conn.acall(op)
        except Exception as exc:  # any Redis trouble fails open, never the call
            failopen.failed(exc)
            return False, None

    async def _aprobe(self) -> None:
        await self._conn.acall(lambda client: client.get(self._probe_key))

    # -- the AsyncCacheStore methods ------------------------------------------------------

    async def get(self, key: Hashable) -> CacheEntry | None:
        """The near tier's entry while it is young, else Redis' (or the near tier's while failed open)."""
        now = self._clock.now()
        contended = False
        with self._lock:
            near = self._near.get(key)
            if self._contended:
                until = self._contended.get(key)
                if until is not None:
                    if now < until:
                        contended, near = True, None
                    else:
                        del self._contended[key]  # the lease has lapsed
        if near is not None:
            if now < near[1]:
                return near[0]
            if not self._failopen.healthy:
                self._failopen.aprobe(self._aprobe)  # a due probe; meanwhile the near tier is the store
                return near[0]
        ok, data = await self._redis(lambda client: client.get(self._key(key)))
        if not ok:
            return near[0] if near is not None else None
        if data is None:
            with self._lock:
                self._near.pop(key, None)
            return None
        try:
            head, _, payload = bytes(data).partition(b"|")
            entry = CacheEntry(self.serializer.loads(payload), now - (self.wall() - float(head)))
        except Exception as exc:
            self._warn_once("an entry in Redis could not be read, so it is a miss", exc)
            return None
        if contended:
            if now - entry.stored_at >= self._ttl:
                return entry  # the old value: a near copy would hide the holder's new one
            with self._lock:
                self._contended.pop(key, None)  # the holder's value has landed: cache it again
        self._remember(key, entry, now)
        return entry

    def _remember(self, key: Hashable, entry: CacheEntry, now: float) -> None:
        with self._lock:
            self._near[key] = (entry, now + self.near_ttl)

    async def set(self, key: Hashable, entry: CacheEntry) -> None:
        """Store ``entry`` in the near tier and in Redis (expiring at the cache's ``stale_ttl``)."""
        now = self._clock.now()
        with self._lock:
            self._contended.pop(key, None)
        self._remember(key, entry, now)
        try:
            payload = self.serializer.dumps(entry.value)
        except Exception as exc:
            self._warn_once("a value could not be serialized, so it is cached in this process only", exc)
            return
        stamp = repr(self.wall() - (now - entry.stored_at)).encode()
        px = self._px
        await self._redis(lambda client: client.set(self._key(key), stamp + b"|" + payload, px=px))

    async def delete(self, key: Hashable) -> None:
        """Forget ``key`` here and in Redis (other replicas' near tiers within ``near_ttl``)."""
        with self._lock:
            self._near.pop(key, None)
        await self._redis(lambda client: client.delete(self._key(key)))

    async def clear(self) -> None:
        """Forget every key of this cache (a scan of its keys in Redis)."""
        with self._lock:
            self._near.clear()
            self._contended.clear()
        pattern = f"{self.prefix}cache:{key_part(self.name)}:*"

        async def drop(client: Any) -> None:
            async for found in client.scan_iter(match=pattern, count=500):
                await client.delete(found)

        await self._redis(drop)

    async def lease(self, key: Hashable, seconds: float) -> bool:
        """Take ``key``'s lease for ``seconds`` unless another replica holds one (``True`` while failed open)."""
        now = self.wall()
        args = (repr(now), repr(now + seconds), str(max(1, math.ceil(seconds * 2000))), self._token)
        ok, got = await self._redis(lambda client: _LEASE.arun(client, (self._key(key) + ":lease",), args))
        with self._lock:
            if ok and not got:
                # Another replica is calling: the value to wait for is the one it stores, not ours.
                self._near.pop(key, None)
                self._contended[key] = self._clock.now() + seconds
            else:
                self._contended.pop(key, None)
        return not ok or bool(got)

    async def release(self, key: Hashable) -> None:
        """Give back this replica's lease on ``key``."""
        await self._redis(lambda client: _RELEASE.arun(client, (self._key(key) + ":lease",), (self._token,)))

    def __len__(self) -> int:
        """Entries in the near tier (Redis holds the rest)."""
        return len(self._near)

    def status(self) -> dict[str, Any]:
        """The name, the near tier's size and the backend's health."""
        return {"name": self.name, "near_entries": len(self._near), **self._failopen.status()}

    async def aclose(self) -> None:
        """Close the connections this store opened from a URL."""
        await self._conn.aclose()

    def __repr__(self) -> str:
        return f"RedisCacheStore(name={self.name!r}, prefix={self.prefix!r}, where={self._conn.where!r})"
