"""The rate-limiting policies: thin sync and async shells over a :class:`~resilient.ratelimit.RateStore`.

Each shell does a fast-path step on the store (``max_wait=0.0``: go now or
not) and, only when the call cannot go now, hands the refusal to
:meth:`_LimiterBase._await_turn` / :meth:`_LimiterBase._wait_turn`, which
decide once (reject, wait within ``max_wait`` and the deadline, or, in
shadow mode, let the call through) and do the one thing each side does
differently: ``await clock.asleep`` or ``clock.sleep``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from resilient.clock import Clock
from resilient.deadline import remaining as deadline_remaining
from resilient.errors import RateLimitedError
from resilient.events import (
    EXTRA_BACKEND,
    EXTRA_REASON,
    EXTRA_RETRY_AFTER,
    REJECTED,
    WOULD_REJECT,
    EventSite,
    Listener,
    Severity,
)
from resilient.policy import AsyncFn, AsyncWrapped, Policy, SyncFn
from resilient.ratelimit.engine import Mode, RateConfig, RateDecision, RateLimitKeyError
from resilient.ratelimit.store import AsyncRateStore, InMemoryRateStore, RateStore
from resilient.validate import check_callable, check_clock, check_int, check_seconds, check_switch

__all__ = ["KeyedRateLimiter", "RateLimiter"]

_INF = math.inf


class _LimiterBase(Policy):
    """What :class:`RateLimiter` and :class:`KeyedRateLimiter` share: options, refusals, waiting."""

    policy_type = "rate_limiter"

    def _setup(
        self,
        rate: Any,
        per: Any,
        burst: Any,
        mode: Any,
        max_wait: Any,
        clock: Clock | None,
        store: RateStore | None,
        enforce: bool | Callable[[], bool],
        max_keys: int,
    ) -> None:
        #: The limiter's clock.
        self.clock: Clock = check_clock(clock)
        self._cfg = RateConfig(rate, per, burst, name=self.name, clock=self.clock, listeners=self.listeners)
        if mode not in ("wait", "reject"):
            raise ValueError(f"mode must be 'wait' or 'reject', got {mode!r}")
        self._mode: Mode = mode
        max_wait = check_seconds(max_wait, "max_wait", allow_zero=True, allow_inf=True, allow_none=True)
        self._max_wait: float | None = None if max_wait is None or math.isinf(max_wait) else max_wait
        self._enforce = check_switch(enforce, "enforce")
        if store is None:
            store = InMemoryRateStore(max_keys=max_keys)
        elif not isinstance(store, RateStore):
            raise TypeError(f"store must be a RateStore (InMemoryRateStore, RedisRateStore...), got {store!r}")
        store.bind(self._cfg)
        #: Where the buckets live (:class:`~resilient.ratelimit.InMemoryRateStore` by default).
        self.store: RateStore = store
        self._astore: AsyncRateStore | None = store if isinstance(store, AsyncRateStore) else None
        self._rejected = 0
        self._would_reject = 0
        self._site = EventSite(operation=self.name or "rate_limiter")

    # -- options ---------------------------------------------------------------

    @property
    def rate(self) -> float:
        """Tokens added per ``per`` seconds."""
        return self._cfg.rate

    @property
    def per(self) -> float:
        """The period of ``rate``, in seconds."""
        return self._cfg.per

    @property
    def burst(self) -> int:
        """The bucket's size: the most tokens taken at once after a quiet spell."""
        return self._cfg.burst

    @property
    def mode(self) -> Mode:
        """``"wait"`` or ``"reject"``."""
        return self._mode

    @property
    def max_wait(self) -> float | None:
        """The longest a call may wait for tokens, in seconds (``None``: unbounded)."""
        return self._max_wait

    @property
    def rejected(self) -> int:
        """Calls rejected since the limiter was created (shadow mode: none)."""
        return self._rejected

    @property
    def would_reject(self) -> int:
        """Calls that shadow mode (``enforce`` false) let through but would have rejected."""
        return self._would_reject

    @property
    def enforcing(self) -> bool:
        """Whether refusals are enforced now (``enforce``, read at this moment)."""
        enforce = self._enforce
        return enforce if isinstance(enforce, bool) else bool(enforce())

    # -- refusals --------------------------------------------------------------

    def _wait_bound(self) -> float:
        """How long the current call may wait: 0.0 in reject mode, else ``max_wait`` and the deadline's left."""
        if self._mode == "reject":
            return 0.0
        bound = _INF if self._max_wait is None else self._max_wait
        rem = deadline_remaining()
        if rem is not None and rem < bound:
            bound = max(rem, 0.0)
        return bound

    def _why(self, wait: float) -> str:
        if self._mode == "reject":
            return "mode='reject'"
        max_wait = self._max_wait
        if max_wait is not None and wait > max_wait:
            return f"the wait ({wait:.3g} s) would exceed max_wait ({max_wait:.3g} s)"
        rem = deadline_remaining()
        return f"the wait ({wait:.3g} s) would outlive the deadline ({max(rem or 0.0, 0.0):.3g} s left)"

    def _extras(self, wait: float) -> dict[str, Any]:
        return {EXTRA_REASON: "rate_limited", EXTRA_RETRY_AFTER: wait, EXTRA_BACKEND: self.store.backend}

    def _refused(self, site: EventSite, wait: float) -> None:
        """The call cannot go: raise :class:`~resilient.RateLimitedError`, or, in shadow mode, report it and return."""
        cfg = self._cfg
        err = RateLimitedError(
            f"{self.label()} is over its limit ({cfg.rate:g} per {cfg.per:g} s, burst {cfg.burst}): "
            f"{self._why(wait)}; retry after {wait:.3g} s",
            policy=self.name,
            retry_after=wait,
        )
        if self._report(site, wait, err):
            raise err

    def _answer(self, decision: RateDecision, site: EventSite) -> RateDecision:
        """What ``try_acquire`` returns: the store's decision, reported when it denies."""
        if decision.allowed or self._report(site, decision.retry_after):
            return decision
        return decision._replace(allowed=True, retry_after=0.0)

    def _report(self, site: EventSite, wait: float, err: RateLimitedError | None = None) -> bool:
        """Count and emit a denial; ``True`` when it is enforced, ``False`` in shadow mode (the call goes)."""
        if self.enforcing:
            self._rejected += 1
            self.emit(site, REJECTED, Severity.WARNING, exception=err, extras=self._extras(wait))
            return True
        self._would_reject += 1
        self.emit(site, WOULD_REJECT, Severity.INFO, exception=err, extras=self._extras(wait))
        return False

    # -- the store, with key errors named ----------------------------------------

    def _bad_key(self, key: Any, exc: Exception) -> RateLimitKeyError:
        """The error for a key whose ``__hash__`` or ``__eq__`` raised (built with the lock released)."""
        if isinstance(exc, TypeError):
            what = f"the key {_describe(key)} is not hashable"
        else:
            what = f"the key {_describe(key)} raised {type(exc).__name__}: {exc} when hashed or compared"
        return RateLimitKeyError(f"{self.label()}: {what}; the call was rejected", policy=self.name)

    def _need_sync(self) -> None:
        astore = self._astore
        if astore is not None and not astore.has_sync:
            raise TypeError(
                f"{self.label()}: its store was given an async client only; synchronous use needs a URL, "
                "a redis.Redis client or sync_client="
            )

    def _need_async(self) -> None:
        astore = self._astore
        if astore is not None and not astore.has_async:
            raise TypeError(
                f"{self.label()}: its store was given a sync client only; async use needs a URL or an async client"
            )

    def _take(self, key: Hashable, cost: float, now: float, bound: float) -> float:
        try:
            return self.store.acquire(key, cost, now, bound)
        except Exception as exc:  # the key's __hash__ or __eq__; the store's lock is released by now
            raise self._bad_key(key, exc) from exc

    # The async steps: over a store with no I/O, the sync step itself; else one awaited store call.
    async def _atake(self, key: Hashable, cost: float, now: float, bound: float) -> float:
        astore = self._astore
        if astore is None:
            return self._take(key, cost, now, bound)
        try:
            return await astore.aacquire(key, cost, now, bound)
        except Exception as exc:
            raise self._bad_key(key, exc) from exc

    def _try_sync(self, key: Hashable, tokens: int, site: EventSite) -> RateDecision:
        cost = self._cfg.cost(tokens)
        self._need_sync()
        now = float(self.clock.now())
        try:
            decision = self.store.try_acquire(key, cost, now)
        except Exception as exc:
            raise self._bad_key(key, exc) from exc
        return self._answer(decision, site)

    async def _try_async(self, key: Hashable, tokens: int, site: EventSite) -> RateDecision:
        astore = self._astore
        if astore is None:
            return self._try_sync(key, tokens, site)
        cost = self._cfg.cost(tokens)
        self._need_async()
        now = float(self.clock.now())
        try:
            decision = await astore.atry_acquire(key, cost, now)
        except Exception as exc:
            raise self._bad_key(key, exc) from exc
        return self._answer(decision, site)

    # -- waiting: the two shells ---------------------------------------------------
    # A call the fast path refused (``wait`` > 0 at ``now``) asks again with
    # the wait it may afford; the store reserves its turn (moves the bucket
    # forward) so that waiters are served in arrival order with no polling.
    # A waiter that does not run (cancelled) gives its turn back. In shadow
    # mode a call takes its turn as it would and goes at once: shadow mode
    # never delays a call, and the bucket stays what enforcing would make it.

    async def _await_turn(self, key: Hashable, cost: float, site: EventSite, wait: float, now: float) -> None:
        bound = self._wait_bound()
        if bound > 0.0:
            wait = await self._atake(key, cost, now, bound)
            if wait <= bound:
                if wait and self.enforcing:
                    try:
                        await self.clock.asleep(wait)
                    except BaseException:
                        await self._arefund(key, cost, now, wait)
                        raise
                return
        self._refused(site, wait)

    def _wait_turn(self, key: Hashable, cost: float, site: EventSite, wait: float, now: float) -> None:
        bound = self._wait_bound()
        if bound > 0.0:
            wait = self._take(key, cost, now, bound)
            if wait <= bound:
                if wait and self.enforcing:
                    try:
                        self.clock.sleep(wait)
                    except BaseException:
                        self._refund(key, cost, now, wait)
                        raise
                return
        self._refused(site, wait)

    def _refund(self, key: Hashable, cost: float, now: float, wait: float) -> None:
        self.store.refund(key, cost, now, wait)

    async def _arefund(self, key: Hashable, cost: float, now: float, wait: float) -> None:
        astore = self._astore
        if astore is None:
            self._refund(key, cost, now, wait)
        else:
            await astore.arefund(key, cost, now, wait)

    async def _acquire_async(self, key: Hashable, cost: float, site: EventSite) -> None:
        now = float(self.clock.now())
        wait = await self._atake(key, cost, now, 0.0)
        if wait:
            await self._await_turn(key, cost, site, wait, now)

    def _acquire_sync(self, key: Hashable, cost: float, site: EventSite) -> None:
        now = float(self.clock.now())
        wait = self._take(key, cost, now, 0.0)
        if wait:
            self._wait_turn(key, cost, site, wait, now)

    # -- the shells ----------------------------------------------------------------

    def _shell_key(self) -> Callable[..., Hashable] | None:
        """The key function of wrapped calls (``None``: one bucket); raises when one is needed and missing."""
        return None

    def _key_error(self, exc: Exception) -> RateLimitKeyError:
        return RateLimitKeyError(
            f"{self.label()}: the key function raised {type(exc).__name__}: {exc}; the call was rejected",
            policy=self.name,
        )

    def _key_of(self, key_fn: Callable[..., Hashable] | None) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
        if key_fn is None:
            return _no_key
        key_error = self._key_error

        def key_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            try:
                return key_fn(*args, **kwargs)
            except Exception as exc:
                raise key_error(exc) from exc

        return key_of

    def _shell_parts(
        self, check: Callable[[], None]
    ) -> tuple[Callable[..., Hashable] | None, float, Callable[[], float]]:
        # What every shell reads once, at wrap time: the key function, the cost of a call, the clock.
        key_fn = self._shell_key()
        check()
        return key_fn, self._cfg.interval, _float_now(self.clock)

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        """The async shell: (the key,) one store step, then the call."""
        key_fn, cost, now_fn = self._shell_parts(self._need_async)
        slow = self._await_turn
        if self._astore is not None:
            key_of = self._key_of(key_fn)
            atake = self._atake

            async def remote_rate_limited_call(*args: Any, **kwargs: Any) -> Any:
                key = key_of(args, kwargs)
                now = now_fn()
                wait = await atake(key, cost, now, 0.0)
                if wait:
                    await slow(key, cost, site, wait, now)
                return await fn(*args, **kwargs)

            return remote_rate_limited_call
        acquire = self.store.acquire
        key_error = self._key_error
        bad_key = self._bad_key
        if type(self.store) is InMemoryRateStore:  # a subclass may override acquire(): not inlined
            lock, single, buckets, tau_eps = self.store._fits_now()
            take = self._take

            async def local_rate_limited_call(*args: Any, **kwargs: Any) -> Any:
                state: list[float] | None
                if key_fn is None:
                    key, state = None, single
                else:
                    try:
                        key = key_fn(*args, **kwargs)
                    except Exception as exc:
                        raise key_error(exc) from exc
                    state = single if key is None else None  # the store's bucket for None, as acquire()
                now = now_fn()
                # The store's step when the bucket has room, inlined; any other case is the
                # store's own acquire(). A key's __hash__ or __eq__ may raise: the lock is released.
                try:
                    lock.acquire()
                    try:
                        if state is None:
                            state = buckets[key]
                        tat = state[0]
                        new = (tat if tat > now else now) + cost
                        fits = new - now <= tau_eps
                        if fits:
                            state[0] = new
                    finally:
                        lock.release()
                except Exception as exc:
                    raise bad_key(key, exc) from exc
                if not fits:
                    wait = take(key, cost, now, 0.0)
                    if wait:
                        await slow(key, cost, site, wait, now)
                return await fn(*args, **kwargs)

            return local_rate_limited_call
        if key_fn is None:

            async def one_bucket_rate_limited_call(*args: Any, **kwargs: Any) -> Any:
                now = now_fn()
                wait = acquire(None, cost, now, 0.0)
                if wait:
                    await slow(None, cost, site, wait, now)
                return await fn(*args, **kwargs)

            return one_bucket_rate_limited_call
        # A store of another type: the keyed path inlines the key function's and the lookup's error handling.

        async def keyed_rate_limited_call(*args: Any, **kwargs: Any) -> Any:
            try:
                key = key_fn(*args, **kwargs)
            except Exception as exc:
                raise key_error(exc) from exc
            now = now_fn()
            try:
                wait = acquire(key, cost, now, 0.0)
            except Exception as exc:  # the key's __hash__ or __eq__; the store's lock is released by now
                raise bad_key(key, exc) from exc
            if wait:
                await slow(key, cost, site, wait, now)
            return await fn(*args, **kwargs)

        return keyed_rate_limited_call

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        """The sync shell: (the key,) one store step, then the call."""
        key_fn, cost, now_fn = self._shell_parts(self._need_sync)
        slow = self._wait_turn
        key_of = self._key_of(key_fn)
        # One bucket: no key can fail its lookup, so the store is called as it is.
        take = self.store.acquire if key_fn is None else self._take

        def rate_limited_call(*args: Any, **kwargs: Any) -> Any:
            key = key_of(args, kwargs)
            now = now_fn()
            wait = take(key, cost, now, 0.0)
            if wait:
                slow(key, cost, site, wait, now)
            return fn(*args, **kwargs)

        return rate_limited_call

    def _repr(self, bound: str) -> str:
        """The repr of either limiter, with its own bound (``max_wait=`` or ``max_keys=``) before the name."""
        cfg = self._cfg
        return (
            f"{type(self).__name__}(rate={cfg.rate:g}, per={cfg.per:g}, burst={cfg.burst}, mode={self._mode!r}, "
            f"{bound}, name={self.name!r})"
        )

    def _base_status(self) -> dict[str, Any]:
        return {
            "rate": self._cfg.rate,
            "per": self._cfg.per,
            "burst": self._cfg.burst,
            "mode": self._mode,
            "max_wait": self._max_wait,
            "rejected": self._rejected,
            "would_reject": self._would_reject,
            "enforcing": self.enforcing,
            **self.store.status(),
        }


class RateLimiter(_LimiterBase):
    """A token bucket: ``rate`` calls per ``per`` seconds, bursts up to ``burst``.

    Args:
        rate: tokens added per ``per`` seconds (> 0).
        per: the period, in seconds (> 0). ``RateLimiter(100, 60)``: 100 per minute.
        burst: the bucket's size (>= 1); default ``max(1, int(rate))``, as aiolimiter.
        mode: ``"wait"`` (wait for a token) or ``"reject"`` (raise
            :class:`~resilient.RateLimitedError` with ``retry_after``).
        max_wait: in wait mode, the longest wait (seconds, >= 0); a call that
            would wait longer is rejected at once. ``None``: no limit other
            than the current deadline.
        name: shown in errors, events and the status endpoint (and the key
            of a Redis store).
        clock: time source (tests pass a ``FakeClock``).
        listeners: event listeners for this policy only.
        store: where the bucket lives: an :class:`InMemoryRateStore` by
            default, a :class:`resilient.redis.RedisRateStore` to share the
            limit with every replica.
        enforce: ``False`` (or a callable returning it, read at each refusal)
            is shadow mode: the limiter decides exactly as usual, counts
            (:attr:`would_reject`) and emits ``would_reject`` with the error
            it would have raised, and lets the call through.

    Every wrapped call costs one token. One limiter object is one bucket,
    shared by every function it wraps, async and sync (threads).
    """

    def __init__(
        self,
        rate: float,
        per: float = 1.0,
        *,
        burst: int | None = None,
        mode: Mode = "wait",
        max_wait: float | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
        store: RateStore | None = None,
        enforce: bool | Callable[[], bool] = True,
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        self._setup(rate, per, burst, mode, max_wait, clock, store, enforce, 1)

    def try_acquire(self, tokens: int = 1) -> RateDecision:
        """Take ``tokens`` if they are there now; never waits, whatever the mode.

        Blocking: with a Redis store, from async code use :meth:`atry_acquire`.
        In shadow mode a denial is reported (``would_reject``) and returned
        as allowed.

        Raises:
            ValueError: ``tokens`` is not between 1 and ``burst``.
        """
        return self._try_sync(None, tokens, self._site)

    #: The same as :meth:`try_acquire` (the name the Redis limiters had first).
    try_acquire_sync = try_acquire

    async def atry_acquire(self, tokens: int = 1) -> RateDecision:
        """:meth:`try_acquire` for async code: awaits the store's round trip when it has one."""
        return await self._try_async(None, tokens, self._site)

    async def acquire(self, tokens: int = 1) -> None:
        """Take ``tokens``, waiting in wait mode; raise in reject mode.

        Raises:
            RateLimitedError: reject mode and no tokens now, or wait mode and
                the wait would exceed ``max_wait`` or the deadline (raised at
                once, without waiting).
        """
        self._need_async()
        await self._acquire_async(None, self._cfg.cost(tokens), self._site)

    def acquire_sync(self, tokens: int = 1) -> None:
        """Like :meth:`acquire`, blocking the thread (``clock.sleep``) in wait mode."""
        self._need_sync()
        self._acquire_sync(None, self._cfg.cost(tokens), self._site)

    @property
    def available(self) -> float:
        """Tokens in the bucket now (fractional; a remote store: as of its last decision)."""
        return self.store.tokens(None, self.clock.now())

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: options, tokens left and rejections."""
        out = self._base_status()
        out["available"] = self.available
        return out

    def __repr__(self) -> str:
        return self._repr(f"max_wait={self._max_wait}")


class KeyedRateLimiter(_LimiterBase):
    """One token bucket per key, at most ``max_keys`` of them in memory.

    Args:
        rate, per, burst, mode, max_wait: as :class:`RateLimiter`, per key.
        key: ``key(*args, **kwargs) -> Hashable``, called with the wrapped
            function's arguments (e.g. ``lambda user, **_: user.id``). Needed
            to wrap functions; :meth:`try_acquire` takes the key itself.
        max_keys: buckets kept in memory (>= 1) by the default store. The
            least recently used bucket is dropped when a new key arrives, so
            a flood of distinct keys cannot grow memory; a dropped key comes
            back with a full bucket (size ``max_keys`` above the number of
            active keys). With ``store=``, the store's own bound applies.
        name, clock, listeners, store, enforce: as :class:`RateLimiter`.

    A key function that raises, or returns an unhashable value, makes the
    call fail with :class:`RateLimitKeyError` naming the limiter; the
    function is not called.

    For an ASGI or other per-request caller: :meth:`atry_acquire` (async,
    right for every store) or :meth:`try_acquire` (blocking; in-memory store).
    """

    def __init__(
        self,
        rate: float,
        per: float = 1.0,
        *,
        key: Callable[..., Hashable] | None = None,
        burst: int | None = None,
        mode: Mode = "wait",
        max_wait: float | None = None,
        max_keys: int = 10_000,
        name: str | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
        store: RateStore | None = None,
        enforce: bool | Callable[[], bool] = True,
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        #: ``key(*args, **kwargs)``: the key of a wrapped call.
        self.key: Callable[..., Hashable] | None = check_callable(
            key, "key", "a callable (*args, **kwargs) -> hashable", allow_none=True
        )
        max_keys = check_int(max_keys, "max_keys")
        self._setup(rate, per, burst, mode, max_wait, clock, store, enforce, max_keys)
        #: Buckets kept in memory.
        self.max_keys: int = self.store.max_keys if isinstance(self.store, InMemoryRateStore) else max_keys

    @property
    def keys(self) -> int:
        """Buckets held in memory now (<= ``max_keys``)."""
        return int(getattr(self.store, "keys", 0))

    @property
    def _buckets(self) -> Any:
        # The in-memory store's map, for tests that check its bound.
        return getattr(self.store, "_buckets", {})

    def try_acquire(self, key: Hashable, tokens: int = 1) -> RateDecision:
        """Take ``tokens`` from ``key``'s bucket if they are there now; never waits.

        Blocking: with a Redis store, from async code use :meth:`atry_acquire`.
        In shadow mode a denial is reported (``would_reject``) and returned
        as allowed.

        Raises:
            ValueError: ``tokens`` is not between 1 and ``burst``.
            RateLimitKeyError: ``key`` is not hashable.
        """
        return self._try_sync(key, tokens, self._site)

    #: The same as :meth:`try_acquire` (the name the Redis limiters had first).
    try_acquire_sync = try_acquire

    async def atry_acquire(self, key: Hashable, tokens: int = 1) -> RateDecision:
        """:meth:`try_acquire` for async code (the ASGI ``RateLimit`` calls this): awaits a remote store."""
        return await self._try_async(key, tokens, self._site)

    async def acquire(self, key: Hashable, tokens: int = 1) -> None:
        """Take ``tokens`` from ``key``'s bucket, as :meth:`RateLimiter.acquire`."""
        self._need_async()
        await self._acquire_async(key, self._cfg.cost(tokens), self._site)

    def acquire_sync(self, key: Hashable, tokens: int = 1) -> None:
        """Take ``tokens`` from ``key``'s bucket, blocking the thread in wait mode."""
        self._need_sync()
        self._acquire_sync(key, self._cfg.cost(tokens), self._site)

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: options, keys held and rejections."""
        out = self._base_status()
        out["keys"] = self.keys
        out["max_keys"] = self.max_keys
        return out

    def _shell_key(self) -> Callable[..., Hashable]:
        if self.key is None:
            raise TypeError(f"{self.label()} needs key= to wrap a function (the key of each call)")
        return self.key

    def __repr__(self) -> str:
        return self._repr(f"max_keys={self.max_keys}")


def _float_now(clock: Clock) -> Callable[[], float]:
    """The clock's ``now`` for the shells, sure to return a float.

    The store does arithmetic on it under its lock: a custom clock returning
    something else must fail before the store is called.
    """
    now = clock.now
    if now is time.monotonic:  # the system clock's (and any clock's that reads it straight): a float already
        return now
    return lambda: float(now())


def _no_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    return None


def _describe(key: Any) -> str:
    """``repr(key)`` for an error message, even when the key's ``__repr__`` is broken too."""
    try:
        return repr(key)
    except Exception:
        return f"<{type(key).__name__} object>"
