"""Rate limits shared by every replica: GCRA in one Lua script, failing open."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import redis as _sync_redis

from resilient import events
from resilient.clock import SYSTEM_CLOCK, Clock
from resilient.deadline import remaining as _deadline_remaining
from resilient.errors import RateLimitedError
from resilient.events import EventSite, Listener, Severity
from resilient.policy import AsyncFn, AsyncWrapped, Policy, SyncFn
from resilient.ratelimit import KeyedRateLimiter, Mode, RateDecision
from resilient.redis._common import ClientArg, Connector, FailOpen, LuaScript, key_part, validate_common

__all__ = ["GCRA_SCRIPT", "KeyedRedisRateLimiter", "RateDecision", "RedisRateLimiter"]


#: GCRA (the generic cell rate algorithm) over one key holding the
#: theoretical arrival time (TAT) in microseconds of Redis ``TIME``, so the
#: replicas' clocks never matter. The key expires when the bucket is full
#: again, so idle keys vanish.
GCRA_SCRIPT = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tolerance = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if now < allow_at then
  local left = math.floor((now - (tat - tolerance)) / interval)
  if left < 0 then left = 0 end
  return string.format('0|%d|%d|%d', math.ceil(allow_at - now), left, math.ceil(tat - now))
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return string.format('1|0|%d|%d', math.floor((now - allow_at) / interval), math.ceil(new_tat - now))
"""

_GCRA = LuaScript(GCRA_SCRIPT)


class _LocalFallback(KeyedRateLimiter):
    """The local limiter used while Redis is away (the same GCRA, in memory).

    Quiet: the Redis limiter reports its rejections, so they are not
    reported twice.
    """

    def _emit(self, site: EventSite, name: str, severity: Any, **fields: Any) -> None:
        return None


def _positive(name: str, value: object, *, maximum: float = 1e9) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= maximum:
        raise ValueError(f"{name} must be a number in (0, {maximum:g}], got {value!r}")
    return float(value)


class _RedisRateLimiterBase(Policy):
    policy_type = "rate_limiter"

    def __init__(
        self,
        client_or_url: ClientArg,
        *,
        rate: float,
        per: float,
        burst: int | None,
        name: str,
        prefix: str,
        timeout: float,
        mode: Mode,
        max_wait: float | None,
        fallback_rate: float | None,
        recovery_interval: float,
        max_local_keys: int,
        sync_client: _sync_redis.Redis | None,
        clock: Clock | None,
        listeners: Iterable[Listener],
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str (it is part of the Redis key), got {name!r}")
        rate = _positive("rate", rate)
        per = _positive("per", per, maximum=86400 * 365)
        if burst is None:
            burst = max(1, int(rate))
        if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= 10**9:
            raise ValueError(f"burst must be an int in [1, 1e9], got {burst!r}")
        if mode not in ("wait", "reject"):
            raise ValueError(f"mode must be 'wait' or 'reject', got {mode!r}")
        if max_wait is not None and (
            isinstance(max_wait, bool) or not isinstance(max_wait, int | float) or not 0 <= max_wait <= 86400
        ):
            raise ValueError(f"max_wait must be a number of seconds in [0, 86400] or None, got {max_wait!r}")
        fallback = rate if fallback_rate is None else _positive("fallback_rate", fallback_rate)
        if isinstance(max_local_keys, bool) or not isinstance(max_local_keys, int) or max_local_keys < 1:
            raise ValueError(f"max_local_keys must be an int >= 1, got {max_local_keys!r}")
        validate_common(prefix, timeout, recovery_interval)
        super().__init__(name=name, listeners=listeners)
        self.name: str = name
        #: Admitted calls per ``per`` seconds, shared by every replica.
        self.rate = rate
        #: The period of ``rate``, in seconds.
        self.per = per
        #: Calls that may be admitted at once after a quiet period.
        self.burst = burst
        #: ``"wait"`` (sleep until admitted, within ``max_wait`` and the deadline) or ``"reject"``.
        self.mode: Mode = mode
        #: The longest a call may wait, in seconds (``None``: only the deadline bounds it).
        self.max_wait = None if max_wait is None else float(max_wait)
        self.prefix = prefix
        self.timeout = float(timeout)
        self._clock = clock if clock is not None else SYSTEM_CLOCK
        self._conn = Connector(client_or_url, sync_client, self.timeout)
        self._interval_us = str(per / rate * 1e6)
        self._burst_arg = str(burst)
        self._base_key = f"{prefix}rl:{key_part(name)}"
        self._probe_key: str | None = None
        self._local = _LocalFallback(
            fallback, per, burst=burst, mode="reject", max_keys=max_local_keys, clock=self._clock
        )
        self._failopen = FailOpen(
            kind=self.policy_type,
            name=name,
            where=self._conn.where,
            interval=float(recovery_interval),
            clock=self._clock,
            listeners=self.listeners,
        )

    # -- the decision ---------------------------------------------------------

    def _decision(self, reply: Any) -> RateDecision:
        # One string, not an array: redis-py's pure-Python parser pays per element.
        allowed, wait, left, reset = (reply.decode() if isinstance(reply, bytes) else reply).split("|")
        return RateDecision(allowed == "1", int(wait) / 1e6, self.burst, int(left), int(reset) / 1e6)

    def _redis_key(self, key: str | None) -> str:
        return self._base_key if key is None else f"{self._base_key}:{key_part(key)}"

    def _check_tokens(self, tokens: int) -> None:
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            raise TypeError(f"tokens must be an int between 1 and burst ({self.burst}), got {tokens!r}")
        if not 1 <= tokens <= self.burst:
            raise ValueError(f"tokens must be between 1 and burst ({self.burst}), got {tokens!r}")

    async def _acquire(self, key: str | None, cost: int, site: EventSite | None) -> RateDecision:
        failopen = self._failopen
        if failopen.healthy:
            try:
                client = self._conn.aclient()
                async with asyncio.timeout(self.timeout):
                    res = await _GCRA.arun(client, (self._redis_key(key),), (self._interval_us, self._burst_arg, cost))
                return self._decision(res)
            except Exception as exc:  # any Redis trouble fails open, never the call
                failopen.failed(exc, site)
        else:
            self._probe_key = key
            failopen.aprobe(self._aprobe, site)
        return self._local.try_acquire(key or "", cost)

    # The probe runs what a call runs, at no cost (a GCRA step of 0 tokens
    # changes no bucket), on a key a call used: a PING would pass where an ACL
    # refuses the script or the key, and the limiter would flap between
    # "recovered" and "failed open" every recovery_interval.

    async def _aprobe(self) -> None:
        client = self._conn.aclient()
        async with asyncio.timeout(self.timeout):
            await _GCRA.arun(client, (self._redis_key(self._probe_key),), (self._interval_us, self._burst_arg, 0))

    def _probe(self) -> None:
        _GCRA.run(self._conn.sclient(), (self._redis_key(self._probe_key),), (self._interval_us, self._burst_arg, 0))

    def _acquire_sync(self, key: str | None, cost: int, site: EventSite | None) -> RateDecision:
        failopen = self._failopen
        if not failopen.healthy:
            self._probe_key = key
        if failopen.healthy or failopen.probe_sync(self._probe, site):
            try:
                res = _GCRA.run(
                    self._conn.sclient(), (self._redis_key(key),), (self._interval_us, self._burst_arg, cost)
                )
                return self._decision(res)
            except Exception as exc:  # any Redis trouble fails open, never the call
                failopen.failed(exc, site)
        return self._local.try_acquire(key or "", cost)

    # -- as a policy ------------------------------------------------------------

    def _key_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        return None

    def _reject(self, site: EventSite, wait: float, why: str) -> RateLimitedError:
        err = RateLimitedError(
            f"{self._label()} is over its shared limit ({self.rate:g} per {self.per:g} s, burst {self.burst}): "
            f"{why}; retry after {wait:.3g} s",
            policy=self.name,
            retry_after=wait,
        )
        self._emit(
            site,
            events.REJECTED,
            Severity.WARNING,
            exception=err,
            extras={
                "reason": "rate_limited",
                "retry_after": wait,
                "backend": "redis" if self._failopen.healthy else "local",
            },
        )
        return err

    def _why_not_wait(self, wait: float, waited: float) -> str | None:
        if self.mode == "reject":
            return "mode='reject'"
        max_wait = self.max_wait
        if max_wait is not None and waited + wait > max_wait:
            return f"the wait ({wait:.3g} s) would exceed max_wait ({max_wait:.3g} s)"
        left = _deadline_remaining()
        if left is not None and wait > left:
            return f"the wait ({wait:.3g} s) would outlive the deadline ({max(left, 0.0):.3g} s left)"
        return None

    # Waiting does not reserve a token in Redis: after sleeping retry_after
    # the call asks again, so under contention it may wait more than once,
    # always within max_wait and the deadline, and a cancelled waiter holds
    # nothing that would need to be given back.

    def _wrap_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        self._need_async()
        acquire = self._acquire
        key_of = self._key_of
        clock = self._clock

        async def rate_limited(*args: Any, **kwargs: Any) -> Any:
            key = key_of(args, kwargs)
            decision = await acquire(key, 1, site)
            if not decision.allowed:
                waited = 0.0
                while not decision.allowed:
                    wait = decision.retry_after
                    why = self._why_not_wait(wait, waited)
                    if why is not None:
                        raise self._reject(site, wait, why)
                    await clock.asleep(wait)
                    waited += wait
                    decision = await acquire(key, 1, site)
            return await fn(*args, **kwargs)

        return rate_limited

    def _need_sync(self) -> None:
        if not self._conn.has_sync:
            raise TypeError(
                f"{type(self).__name__} was given an async client only; synchronous use needs a URL, "
                "a redis.Redis client or sync_client="
            )

    def _need_async(self) -> None:
        if not self._conn.has_async:
            raise TypeError(f"{type(self).__name__} was given a sync client only; async use needs a URL or a client")

    def _wrap_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        self._need_sync()
        acquire = self._acquire_sync
        key_of = self._key_of
        clock = self._clock

        def rate_limited(*args: Any, **kwargs: Any) -> Any:
            key = key_of(args, kwargs)
            decision = acquire(key, 1, site)
            if not decision.allowed:
                waited = 0.0
                while not decision.allowed:
                    wait = decision.retry_after
                    why = self._why_not_wait(wait, waited)
                    if why is not None:
                        raise self._reject(site, wait, why)
                    clock.sleep(wait)
                    waited += wait
                    decision = acquire(key, 1, site)
            return fn(*args, **kwargs)

        return rate_limited

    # -- housekeeping -------------------------------------------------------------

    @property
    def using_redis(self) -> bool:
        """``False`` while the limiter has failed open to local state."""
        return self._failopen.healthy

    def status(self) -> dict[str, Any]:
        """Configuration and whether Redis is in use."""
        return {
            "type": type(self).__name__,
            "name": self.name,
            "rate": self.rate,
            "per": self.per,
            "burst": self.burst,
            "mode": self.mode,
            "max_wait": self.max_wait,
            "key": self._base_key,
            **self._failopen.status(),
        }

    async def aclose(self) -> None:
        """Close the connections this limiter opened from a URL."""
        await self._conn.aclose()

    def close(self) -> None:
        """Close the sync connection this limiter opened from a URL."""
        self._conn.close_sync()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rate={self.rate:g}, per={self.per:g}, burst={self.burst}, name={self.name!r})"


class RedisRateLimiter(_RedisRateLimiterBase):
    """One rate limit shared by every process that uses the same Redis and name.

    GCRA (a token bucket without a refill timer) in one Lua script: one
    round trip per decision, the time taken from Redis ``TIME``, the state
    in one key ``{prefix}rl:{name}`` that expires once the bucket is full
    again. As a policy it admits the call or raises
    :class:`~resilient.RateLimitedError` with ``retry_after`` (after waiting
    up to ``max_wait`` seconds, within the current deadline, in ``mode="wait"``).

    When Redis is unreachable, slow (more than ``timeout`` seconds) or
    errors, it fails open: decisions come from the same algorithm in local
    memory at ``fallback_rate`` (default: ``rate``, i.e. each replica admits
    the full rate on its own during an outage), with one warning logged on
    ``resilient.redis`` and a ``store_failed_open`` event; a probe at most
    every ``recovery_interval`` seconds switches back when Redis answers.

    Args:
        client_or_url: ``redis://`` URL, or a ``redis.asyncio.Redis`` or
            ``redis.Redis`` client.
        rate: calls admitted per ``per`` seconds.
        per: the period, in seconds.
        burst: calls admitted at once after a quiet period (default:
            ``max(1, int(rate))``, as the local limiter).
        name: required; every replica that shares the limit uses the same.
        prefix: the namespace of every key.
        timeout: seconds one Redis operation may take before failing open.
        mode: ``"wait"`` (sleep ``retry_after`` and ask again) or ``"reject"``
            (raise :class:`~resilient.RateLimitedError` at once).
        max_wait: in wait mode, the longest total wait in seconds (``None``:
            only the current deadline bounds it).
        fallback_rate: the local rate while Redis is away.
        recovery_interval: seconds between two probes of a failed Redis.
        sync_client: a ``redis.Redis`` for sync calls when ``client_or_url``
            is an async client.
        clock: for the local state and probes (tests pass a ``FakeClock``).
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
        sync_client: _sync_redis.Redis | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        super().__init__(
            client_or_url,
            rate=rate,
            per=per,
            burst=burst,
            name=name,
            prefix=prefix,
            timeout=timeout,
            mode=mode,
            max_wait=max_wait,
            fallback_rate=fallback_rate,
            recovery_interval=recovery_interval,
            max_local_keys=1,
            sync_client=sync_client,
            clock=clock,
            listeners=listeners,
        )

    async def try_acquire(self, tokens: int = 1) -> RateDecision:
        """Take ``tokens`` if the shared limit allows it now; never waits, whatever the mode."""
        self._check_tokens(tokens)
        self._need_async()
        return await self._acquire(None, tokens, None)

    def try_acquire_sync(self, tokens: int = 1) -> RateDecision:
        """Synchronous :meth:`try_acquire`."""
        self._check_tokens(tokens)
        self._need_sync()
        return self._acquire_sync(None, tokens, None)


class KeyedRedisRateLimiter(_RedisRateLimiterBase):
    """A shared rate limit per key (per client, per tenant...): ``{prefix}rl:{name}:{key}``, both encoded.

    As a policy, ``key(*args, **kwargs)`` gives the key of each call; with
    :meth:`try_acquire` the caller passes it. Everything else is as in
    :class:`RedisRateLimiter`; the local fallback state keeps at most
    ``max_local_keys`` keys.
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
        sync_client: _sync_redis.Redis | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        if key is not None and not callable(key):
            raise TypeError(f"key must be a callable returning the key of a call, got {key!r}")
        super().__init__(
            client_or_url,
            rate=rate,
            per=per,
            burst=burst,
            name=name,
            prefix=prefix,
            timeout=timeout,
            mode=mode,
            max_wait=max_wait,
            fallback_rate=fallback_rate,
            recovery_interval=recovery_interval,
            max_local_keys=max_local_keys,
            sync_client=sync_client,
            clock=clock,
            listeners=listeners,
        )
        self._key_fn = key

    def _key_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        key_fn = self._key_fn
        if key_fn is None:  # checked at wrap time; here for the type checker
            raise TypeError("KeyedRedisRateLimiter needs key=")
        return str(key_fn(*args, **kwargs))

    def _wrap_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        self._need_key_fn()
        return super()._wrap_async(fn, site)

    def _wrap_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        self._need_key_fn()
        return super()._wrap_sync(fn, site)

    def _need_key_fn(self) -> None:
        if self._key_fn is None:
            raise TypeError("KeyedRedisRateLimiter needs key= (a function of the call's arguments) to guard a function")

    async def try_acquire(self, key: str, tokens: int = 1) -> RateDecision:
        """Take ``tokens`` from ``key``'s shared bucket if they are there now; never waits."""
        self._check_tokens(tokens)
        self._need_async()
        return await self._acquire(str(key), tokens, None)

    def try_acquire_sync(self, key: str, tokens: int = 1) -> RateDecision:
        """Synchronous :meth:`try_acquire`."""
        self._check_tokens(tokens)
        self._need_sync()
        return self._acquire_sync(str(key), tokens, None)
