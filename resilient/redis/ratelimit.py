"""Rate limits shared by every replica: a :class:`~resilient.ratelimit.RateStore` on Redis, failing open.

:class:`RedisRateStore` keeps the buckets of one
:class:`~resilient.ratelimit.RateLimiter` or
:class:`~resilient.ratelimit.KeyedRateLimiter` in Redis and runs the GCRA
step (:data:`GCRA_SCRIPT`, the Lua twin of
:class:`~resilient.ratelimit.InMemoryRateStore`'s) in one round trip.
:class:`RedisRateLimiter` and :class:`KeyedRedisRateLimiter` are the same
limiters built over such a store, with the first wave's parameters.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Iterable
from typing import Any, NoReturn

from resilient.clock import Clock
from resilient.events import Listener
from resilient.policy import Policy
from resilient.ratelimit import InMemoryRateStore, KeyedRateLimiter, Mode, RateConfig, RateDecision, RateLimiter
from resilient.redis._common import ClientArg, Connector, FailOpen, LuaScript, SyncClient, key_part, validate_common
from resilient.validate import check_int, check_number

__all__ = ["GCRA_SCRIPT", "KeyedRedisRateLimiter", "RateDecision", "RedisRateLimiter", "RedisRateStore"]


#: The GCRA step over one key holding the bucket's theoretical arrival time
#: (TAT) in microseconds, the same step as the in-memory store's. ARGV: the
#: cost (negative: give that much back, for a cancelled waiter), the bucket's
#: depth, the longest wait the call may reserve, and ``now`` (empty: Redis
#: ``TIME``, so that the replicas' clocks never matter). Replies
#: ``"wait|full_in"`` (microseconds) (one string: redis-py's pure-Python parser pays per
#: array element): ``wait`` 0 (went now), ``<= max_wait`` (reserved) or more
#: (refused, nothing written). The key expires when the bucket is full again,
#: so idle keys vanish.
GCRA_SCRIPT = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local now = tonumber(ARGV[4])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local cost = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
local new = tat + cost
if cost < 0 then
  if new > now then
    redis.call('SET', KEYS[1], string.format('%.17g', new), 'PX', math.ceil((new - now) / 1000) + 1)
    return string.format('0|%.17g', new - now)
  end
  redis.call('DEL', KEYS[1])
  return '0|0'
end
local wait = new - now - tonumber(ARGV[2])
if wait <= 0.001 then
  wait = 0
elseif wait > tonumber(ARGV[3]) then
  return string.format('%.17g|%.17g', wait, tat - now)
end
if cost > 0 then
  redis.call('SET', KEYS[1], string.format('%.17g', new), 'PX', math.ceil((new - now) / 1000) + 1)
end
return string.format('%.17g|%.17g', wait, new - now)
"""

_GCRA = LuaScript(GCRA_SCRIPT)


class RedisRateStore:
    """A limiter's buckets in Redis: one round trip per decision, shared by every replica.

    Give it to a limiter: ``RateLimiter(100, store=RedisRateStore(url), name="api")``
    or ``KeyedRateLimiter(10, store=RedisRateStore(url), name="per-user")``.
    The limiter's API (wrapping, ``acquire``, ``try_acquire`` /
    ``atry_acquire``, wait and reject modes, ``enforce=``) is the same as on
    the in-memory store; a waiting call reserves its turn in Redis and a
    cancelled waiter gives the capacity back at the end of the queue.

    Keys: ``{prefix}rl:{name}`` for a plain limiter,
    ``{prefix}rl:{name}:{key}`` per key (``str(key)``), both parts encoded
    so that no (name, key) pair can pass for another; each expires once its
    bucket is full again. A decision touches one key, so the store works on
    a Redis Cluster as it is, and the keys of a keyed limiter spread over
    the cluster's masters.

    When Redis is unreachable, slow (more than ``timeout`` seconds) or
    errors, the store fails open: decisions come from an
    :class:`~resilient.ratelimit.InMemoryRateStore` at ``fallback_rate``
    (default: the limiter's rate, i.e. each replica admits the full rate on
    its own during an outage), with one warning logged on
    ``resilient.redis`` and a ``store_failed_open`` event; a probe at most
    every ``recovery_interval`` seconds switches back when Redis answers.

    Args:
        url_or_client: ``redis://`` URL (``redis+cluster://host:port,...`` for a
            Redis Cluster), or a ``redis.asyncio.Redis`` or ``redis.Redis``
            client (or either ``RedisCluster``).
        name: the shared limit's name (default: the limiter's ``name``, which
            is then required); every replica that shares it uses the same.
        prefix: the namespace of every key.
        timeout: seconds one Redis operation may take before failing open.
        fallback_rate: the local rate while Redis is away.
        recovery_interval: seconds between two probes of a failed Redis.
        max_local_keys: bound on the per-key local state.
        sync_client: a ``redis.Redis`` for sync calls when ``url_or_client``
            is an async client.
        redis_time: ``True`` (default): the time is Redis ``TIME``.
            ``False``: the limiter's clock, passed with each step (tests
            drive it with a ``FakeClock``; only where every replica shares
            one clock).
    """

    def __init__(
        self,
        url_or_client: ClientArg,
        *,
        name: str | None = None,
        prefix: str = "resilient:",
        timeout: float = 0.05,
        fallback_rate: float | None = None,
        recovery_interval: float = 1.0,
        max_local_keys: int = 10_000,
        sync_client: SyncClient | None = None,
        redis_time: bool = True,
    ) -> None:
        validate_common(prefix, timeout, recovery_interval)
        #: The shared limit's name (the limiter's, once bound).
        self.name = None if name is None else _check_name(name, or_none=True)
        #: The namespace of every key.
        self.prefix = prefix
        #: Seconds one Redis operation may take.
        self.timeout = float(timeout)
        self._fallback_rate = check_number(fallback_rate, "fallback_rate", allow_none=True)
        self._max_local_keys = check_int(max_local_keys, "max_local_keys")
        self._recovery_interval = float(recovery_interval)
        if not isinstance(redis_time, bool):
            raise TypeError(f"redis_time must be a bool, got {redis_time!r}")
        self._redis_time = redis_time
        self._conn = Connector(url_or_client, sync_client, self.timeout)
        self._config: RateConfig | None = None
        self._base_key = ""
        self._tau_us = ""
        self._probe_key = ""
        # When the plain bucket was last seen full again, on the limiter's clock (for tokens()).
        self._full_at = float("-inf")
        self._local = InMemoryRateStore(max_keys=self._max_local_keys)
        self._local_scale = 1.0
        self._cost_args: dict[float, str] = {}
        self._failopen: FailOpen | None = None

    # -- binding ---------------------------------------------------------------

    def bind(self, config: RateConfig) -> None:
        """Take the limiter's options (once) and derive the key from the name."""
        if self._config is not None:
            raise RuntimeError("this RedisRateStore is already bound to a limiter; give each limiter its own")
        name = self.name if self.name is not None else config.name
        if not name:
            raise ValueError(
                "RedisRateStore needs a name, which every replica shares: give the limiter a name or the store name="
            )
        if config.burst > 10**9:
            raise ValueError(f"burst must be an int in [1, 1e9] for a Redis store, got {config.burst!r}")
        self.name = name
        self._config = config
        self._base_key = f"{self.prefix}rl:{key_part(name)}"
        self._probe_key = self._base_key
        self._tau_us = repr(config.tau * 1e6)
        rate = config.rate if self._fallback_rate is None else self._fallback_rate
        local = RateConfig(rate, config.per, config.burst, name=name, clock=config.clock)
        self._local.bind(local)
        # A cost is seconds of the limiter's timeline; the local bucket's may run at another rate.
        self._local_scale = local.interval / config.interval
        self._failopen = FailOpen(
            kind="rate_limiter",
            name=name,
            where=self._conn.where,
            interval=self._recovery_interval,
            clock=config.clock,
            listeners=config.listeners,
        )

    @property
    def config(self) -> RateConfig:
        """The options given to :meth:`bind`."""
        if self._config is None:
            _unbound()
        return self._config

    @property
    def failopen(self) -> FailOpen:
        """The switch between Redis and the local state."""
        if self._failopen is None:
            _unbound()
        return self._failopen

    @property
    def backend(self) -> str:
        """``"redis"``, or ``"local"`` while failed open."""
        failopen = self._failopen
        return "local" if failopen is not None and not failopen.healthy else "redis"

    @property
    def using_redis(self) -> bool:
        """``False`` while the store has failed open to local state."""
        return self.failopen.healthy

    @property
    def has_sync(self) -> bool:
        """Whether sync calls can reach Redis."""
        return self._conn.has_sync

    @property
    def has_async(self) -> bool:
        """Whether async calls can reach Redis."""
        return self._conn.has_async

    @property
    def keys(self) -> int:
        """Keys held by the local fallback state."""
        return self._local.keys

    # -- one step, either side ------------------------------------------------------

    def _key(self, key: Hashable) -> str:
        return self._base_key if key is None else f"{self._base_key}:{key_part(str(key))}"

    def _args(self, cost: float, now: float, max_wait: float) -> tuple[str, str, str, str]:
        # Formatting a float costs more than the rest of the Python side of a step: the costs a
        # limiter uses (a few token counts) and the fast path's bound are formatted once.
        arg = self._cost_args.get(cost)
        if arg is None:
            arg = repr(cost * 1e6)
            if len(self._cost_args) < 64:
                self._cost_args[cost] = arg
        bound = "0" if max_wait == 0.0 else _us(max_wait)
        return (arg, self._tau_us, bound, "" if self._redis_time else repr(now * 1e6))

    def _parse(self, reply: Any, key: Hashable, now: float) -> tuple[float, float]:
        wait, full_in = (reply.decode() if isinstance(reply, bytes) else reply).split("|")
        full = float(full_in) / 1e6
        if key is None:
            self._full_at = now + full
        return float(wait) / 1e6, full

    async def _arun(self, rkey: str, args: tuple[str, ...]) -> Any:
        """The script's reply, or ``None`` when the local state must answer (failed open)."""
        failopen = self.failopen
        if failopen.healthy:
            try:
                return await self._conn.acall(lambda client: _GCRA.arun(client, (rkey,), args))
            except Exception as exc:  # any Redis trouble fails open, never the call
                failopen.failed(exc)
        else:
            self._probe_key = rkey
            failopen.aprobe(self._aprobe)
        return None

    def _run(self, rkey: str, args: tuple[str, ...]) -> Any:
        """Sync :meth:`_arun` (a due probe runs inline)."""
        failopen = self.failopen
        if not failopen.healthy:
            self._probe_key = rkey
            if not failopen.probe_sync(self._probe):
                return None
        try:
            return _GCRA.run(self._conn.sclient(), (rkey,), args)
        except Exception as exc:  # any Redis trouble fails open, never the call
            failopen.failed(exc)
            return None

    # The probe runs what a call runs, at no cost (a step of 0 tokens changes
    # no bucket), on a key a call used: a PING would pass where an ACL refuses
    # the script or the key, and the store would flap between "recovered" and
    # "failed open" every recovery_interval.

    def _probe_args(self) -> tuple[str, ...]:
        return self._args(0.0, float(self.config.clock.now()), 0.0)

    async def _aprobe(self) -> None:
        await self._conn.acall(lambda client: _GCRA.arun(client, (self._probe_key,), self._probe_args()))

    def _probe(self) -> None:
        _GCRA.run(self._conn.sclient(), (self._probe_key,), self._probe_args())

    # -- the RateStore methods --------------------------------------------------------

    # Each method is a shell around one round trip; what the reply means (or,
    # with no reply, what the local state answers) is decided once, below.

    def acquire(self, key: Hashable, cost: float, now: float, max_wait: float) -> float:
        """The GCRA step in Redis (blocking), or locally while failed open."""
        return self._waited(self._run(self._key(key), self._args(cost, now, max_wait)), key, cost, now, max_wait)

    async def aacquire(self, key: Hashable, cost: float, now: float, max_wait: float) -> float:
        """Async :meth:`acquire`."""
        return self._waited(await self._arun(self._key(key), self._args(cost, now, max_wait)), key, cost, now, max_wait)

    def try_acquire(self, key: Hashable, cost: float, now: float) -> RateDecision:
        """Take ``cost`` now or refuse (blocking)."""
        return self._decided(self._run(self._key(key), self._args(cost, now, 0.0)), key, cost, now)

    async def atry_acquire(self, key: Hashable, cost: float, now: float) -> RateDecision:
        """Async :meth:`try_acquire`."""
        return self._decided(await self._arun(self._key(key), self._args(cost, now, 0.0)), key, cost, now)

    # A cancelled waiter's turn goes back at the end of the queue: the next
    # caller gets the capacity, later than the freed turn would have come,
    # which never breaks the rate. While failed open the local state takes it.

    def refund(self, key: Hashable, cost: float, now: float, wait: float) -> None:
        """Give ``cost`` back to ``key``'s bucket."""
        self._refunded(self._run(self._key(key), self._args(-cost, now, 0.0)), key, cost, now, wait)

    async def arefund(self, key: Hashable, cost: float, now: float, wait: float) -> None:
        """Async :meth:`refund`."""
        self._refunded(await self._arun(self._key(key), self._args(-cost, now, 0.0)), key, cost, now, wait)

    def _waited(self, reply: Any, key: Hashable, cost: float, now: float, max_wait: float) -> float:
        if reply is None:
            return self._local.acquire(key, cost * self._local_scale, now, max_wait)
        return self._parse(reply, key, now)[0]

    def _decided(self, reply: Any, key: Hashable, cost: float, now: float) -> RateDecision:
        if reply is None:
            return self._local.try_acquire(key, cost * self._local_scale, now)
        return self.config.decision(*self._parse(reply, key, now))

    def _refunded(self, reply: Any, key: Hashable, cost: float, now: float, wait: float) -> None:
        if reply is None:
            self._local.refund(key, cost * self._local_scale, now, wait)
        else:
            self._parse(reply, key, now)

    def tokens(self, key: Hashable, now: float) -> float:
        """Tokens now: the plain bucket's as of its last decision; a key's is not known without a round trip."""
        if not self.failopen.healthy:
            return self._local.tokens(key, now)
        if key is None:
            return self.config.tokens(self._full_at - now)
        return float(self.config.burst)

    def status(self) -> dict[str, Any]:
        """The key and the backend's health."""
        return {"key": self._base_key, **self.failopen.status()}

    # -- housekeeping -------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connections this store opened from a URL."""
        await self._conn.aclose()

    def close(self) -> None:
        """Close the sync connection this store opened from a URL."""
        self._conn.close_sync()

    def __repr__(self) -> str:
        return f"RedisRateStore({self._conn.where!r}, name={self.name!r}, prefix={self.prefix!r})"


def _unbound() -> NoReturn:
    """The error of a store used before :meth:`RedisRateStore.bind`."""
    raise RuntimeError("this RedisRateStore is not bound to a limiter yet")


def _us(seconds: float) -> str:
    """Seconds as the script's microseconds (a bound too large for Lua's numbers is "no bound")."""
    return "1e300" if seconds > 1e290 else repr(seconds * 1e6)


def _check_name(name: object, *, or_none: bool = False) -> str:
    if not isinstance(name, str) or not name:
        also = " or None" if or_none else ""
        raise TypeError(f"name must be a non-empty str (it is part of the Redis key){also}, got {name!r}")
    return name


def _deprecated_try() -> None:
    warnings.warn(
        "the Redis limiters' try_acquire() is a coroutine only for compatibility and will become "
        "synchronous, as RateLimiter.try_acquire(); use `await limiter.atry_acquire(...)` in async code "
        "(or limiter.try_acquire_sync(...))",
        DeprecationWarning,
        stacklevel=3,
    )


class _OnRedis(Policy):
    """What both Redis limiters add to their local class: the store's health and connections.

    Listed first among the bases, so that its methods run around the local class's.
    """

    _redis: RedisRateStore

    def _connect(
        self,
        client_or_url: ClientArg,
        name: object,
        prefix: str,
        timeout: float,
        fallback_rate: float | None,
        recovery_interval: float,
        max_local_keys: int,
        sync_client: SyncClient | None,
        redis_time: bool,
    ) -> RedisRateStore:
        self._redis = RedisRateStore(
            client_or_url,
            name=_check_name(name),
            prefix=prefix,
            timeout=timeout,
            fallback_rate=fallback_rate,
            recovery_interval=recovery_interval,
            max_local_keys=max_local_keys,
            sync_client=sync_client,
            redis_time=redis_time,
        )
        return self._redis

    @property
    def using_redis(self) -> bool:
        """``False`` while the limiter has failed open to local state."""
        return self._redis.using_redis

    @property
    def prefix(self) -> str:
        """The namespace of every key."""
        return self._redis.prefix

    @property
    def timeout(self) -> float:
        """Seconds one Redis operation may take before failing open."""
        return self._redis.timeout

    def status(self) -> dict[str, Any]:
        """Options, rejections and whether Redis is in use."""
        # What the first wave's status() started with, then the local class's.
        return {"type": type(self).__name__, "name": self._redis.name, **(super().status() or {})}

    async def aclose(self) -> None:
        """Close the connections this limiter opened from a URL."""
        await self._redis.aclose()

    def close(self) -> None:
        """Close the sync connection this limiter opened from a URL."""
        self._redis.close()


class RedisRateLimiter(_OnRedis, RateLimiter):
    """One rate limit shared by every process that uses the same Redis and name.

    A :class:`~resilient.ratelimit.RateLimiter` over a
    :class:`RedisRateStore`: ``RedisRateLimiter(url, rate=10, name="api")``
    is ``RateLimiter(10, name="api", store=RedisRateStore(url))``, with the
    same options, API and fail-open behaviour (see :class:`RedisRateStore`).
    As a policy it admits the call or raises
    :class:`~resilient.RateLimitedError` with ``retry_after`` (after waiting
    its reserved turn, up to ``max_wait`` seconds and within the current
    deadline, in ``mode="wait"``).

    Args:
        client_or_url: ``redis://`` URL (``redis+cluster://host:port,...`` for a
            Redis Cluster), or a ``redis.asyncio.Redis`` or ``redis.Redis``
            client (or either ``RedisCluster``).
        rate: calls admitted per ``per`` seconds.
        per: the period, in seconds.
        burst: calls admitted at once after a quiet period (default:
            ``max(1, int(rate))``, as the local limiter).
        name: required; every replica that shares the limit uses the same.
        prefix: the namespace of every key.
        timeout: seconds one Redis operation may take before failing open.
        mode: ``"wait"`` (wait for the reserved turn) or ``"reject"``
            (raise :class:`~resilient.RateLimitedError` at once).
        max_wait: in wait mode, the longest wait in seconds (``None``:
            only the current deadline bounds it).
        fallback_rate: the local rate while Redis is away.
        recovery_interval: seconds between two probes of a failed Redis.
        sync_client: a ``redis.Redis`` for sync calls when ``client_or_url``
            is an async client.
        clock: for the local state and probes (tests pass a ``FakeClock``).
        listeners: event listeners for this limiter only.
        enforce: shadow mode when false, as :class:`~resilient.ratelimit.RateLimiter`.
        redis_time: ``True`` (default): the bucket's time is Redis ``TIME``.
            ``False``: ``clock``'s, as :class:`RedisRateStore` (tests drive
            the shared limit with a ``FakeClock``; only where every replica
            shares one clock).

    ``try_acquire()`` is still a coroutine here (deprecated): use
    ``await atry_acquire()`` or ``try_acquire_sync()``.
    """

    def __init__(
        self,
        client_or_url: ClientArg,
        *,
        rate: float,
        per: float = 1.0,
        burst: int | None = None,
        name: str,
        prefix: str = "resilient:",
        timeout: float = 0.05,
        mode: Mode = "wait",
        max_wait: float | None = None,
        fallback_rate: float | None = None,
        recovery_interval: float = 1.0,
        sync_client: SyncClient | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
        enforce: bool | Callable[[], bool] = True,
        redis_time: bool = True,
    ) -> None:
        store = self._connect(
            client_or_url, name, prefix, timeout, fallback_rate, recovery_interval, 1, sync_client, redis_time
        )
        super().__init__(
            rate,
            per,
            burst=burst,
            mode=mode,
            max_wait=max_wait,
            name=name,
            clock=clock,
            listeners=listeners,
            store=store,
            enforce=enforce,
        )

    async def try_acquire(self, tokens: int = 1) -> RateDecision:  # type: ignore[override]
        """Deprecated: ``await atry_acquire()`` (or ``try_acquire_sync()``)."""
        _deprecated_try()
        return await self.atry_acquire(tokens)


class KeyedRedisRateLimiter(_OnRedis, KeyedRateLimiter):
    """A shared rate limit per key (per client, per tenant...): ``{prefix}rl:{name}:{key}``, both encoded.

    A :class:`~resilient.ratelimit.KeyedRateLimiter` over a
    :class:`RedisRateStore`. As a policy, ``key(*args, **kwargs)`` gives the
    key of each call; with :meth:`atry_acquire` the caller passes it.
    Everything else is as in :class:`RedisRateLimiter`; the local fallback
    state keeps at most ``max_local_keys`` keys.
    """

    def __init__(
        self,
        client_or_url: ClientArg,
        *,
        rate: float,
        per: float = 1.0,
        burst: int | None = None,
        name: str,
        key: Callable[..., str] | None = None,
        prefix: str = "resilient:",
        timeout: float = 0.05,
        mode: Mode = "wait",
        max_wait: float | None = None,
        fallback_rate: float | None = None,
        recovery_interval: float = 1.0,
        max_local_keys: int = 10_000,
        sync_client: SyncClient | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
        enforce: bool | Callable[[], bool] = True,
        redis_time: bool = True,
    ) -> None:
        store = self._connect(
            client_or_url,
            name,
            prefix,
            timeout,
            fallback_rate,
            recovery_interval,
            max_local_keys,
            sync_client,
            redis_time,
        )
        super().__init__(
            rate,
            per,
            key=key,
            burst=burst,
            mode=mode,
            max_wait=max_wait,
            max_keys=max_local_keys,
            name=name,
            clock=clock,
            listeners=listeners,
            store=store,
            enforce=enforce,
        )

    async def try_acquire(self, key: Hashable, tokens: int = 1) -> RateDecision:  # type: ignore[override]
        """Deprecated: ``await atry_acquire(key)`` (or ``try_acquire_sync(key)``)."""
        _deprecated_try()
        return await self.atry_acquire(key, tokens)
