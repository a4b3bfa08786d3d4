"""Rate limiting: a local token bucket, plain or one per key.

:class:`RateLimiter` admits ``rate`` calls per ``per`` seconds with bursts of
up to ``burst``; :class:`KeyedRateLimiter` keeps one such bucket per key
(user, tenant, client address, host), with memory bounded by ``max_keys``.

A call over the limit either **waits** its turn (``mode="wait"``, the
default) or is **rejected** at once with :class:`~resilient.RateLimitedError`
carrying ``retry_after`` (``mode="reject"``). A waiting call never waits past
``max_wait`` nor past the current :func:`~resilient.deadline`: when the wait
it would need is longer, it is rejected immediately rather than after
waiting uselessly.

``try_acquire()`` never waits: it returns a :class:`RateDecision` with what
the IETF ``RateLimit`` headers need (limit, remaining, reset).

How the bucket works: the token bucket is kept in its GCRA form (the
"generic cell rate algorithm" of ATM networks, also used by redis-cell), a
single float per bucket, the *theoretical arrival time* (TAT): the time at
which the bucket would be full again. A call costing ``n`` tokens is admitted
when ``max(TAT, now) + n * interval - now <= burst * interval``. A waiting
call *reserves* its place (moves the TAT forward) and sleeps exactly until its
turn, so waiters are served in arrival order with no polling. A waiter that
is cancelled gives its turn back: the last one simply moves the TAT back; one
in the middle of the queue leaves a *freed turn* that the next caller takes
(if it can still be used in time), so no turn is lost and none is handed out
twice.

Why not ``aiolimiter`` underneath (as DESIGN.md first planned): it has no
injectable clock (tests would have to sleep), it cannot say in advance how
long a call would wait (needed to reject at once against ``max_wait`` and the
deadline), it wakes waiters by polling, and it costs more per call than this
bucket. The semantics (a leaky bucket of ``rate`` per ``per`` with a burst
of ``rate``) are the same, so ``RateLimiter(rate, per)`` is a drop-in for
``AsyncLimiter(rate, per)``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Literal, NamedTuple

from cachetools import LRUCache

from resilient.clock import SYSTEM_CLOCK, Clock, SystemClock
from resilient.deadline import remaining as _remaining
from resilient.errors import RateLimitedError, ResilienceError
from resilient.events import REJECTED, EventSite, Listener, Severity
from resilient.policy import AsyncFn, AsyncWrapped, Policy, SyncFn

__all__ = ["KeyedRateLimiter", "RateDecision", "RateLimitKeyError", "RateLimiter"]

# Float slack so that a bucket refilled exactly on time is not refused by rounding.
_EPS = 1e-9
_NEG_INF = float("-inf")
# What _take returns when the call may go at once: a constant, so the sync path allocates nothing.
_NO_WAIT = (0.0, 0.0)


class RateDecision(NamedTuple):
    """The answer of :meth:`RateLimiter.try_acquire`, with what rate-limit headers need."""

    #: Whether the tokens were taken.
    allowed: bool
    #: Seconds until the request would be admitted (0.0 when allowed).
    retry_after: float
    #: The bucket's size (``burst``): ``RateLimit-Limit``.
    limit: int
    #: Whole tokens left after this decision: ``RateLimit-Remaining``.
    remaining: int
    #: Seconds until the bucket is full again: ``RateLimit-Reset``.
    reset: float


class RateLimitKeyError(ResilienceError):
    """A :class:`KeyedRateLimiter`'s key function raised or gave an unhashable key.

    The call is not made. The original exception, if any, is the ``__cause__``.
    """

    def __init__(self, message: str, *, policy: str | None = None) -> None:
        super().__init__(message)
        #: The name of the limiter.
        self.policy = policy


Mode = Literal["wait", "reject"]


def _positive(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{param} must be a number > 0, got {value!r}")
    if math.isnan(value) or math.isinf(value) or value <= 0:
        raise ValueError(f"{param} must be a finite number > 0, got {value!r}")
    return float(value)


class _Config:
    """The options shared by :class:`RateLimiter` and :class:`KeyedRateLimiter`, validated."""

    __slots__ = ("burst", "interval", "max_wait", "mode", "per", "rate", "tau")

    def __init__(self, rate: Any, per: Any, burst: Any, mode: Any, max_wait: Any) -> None:
        self.rate = _positive(rate, "rate")
        self.per = _positive(per, "per")
        if burst is None:
            burst = max(1, int(self.rate))
        elif isinstance(burst, bool) or not isinstance(burst, int):
            raise TypeError(f"burst must be an int >= 1 or None, got {burst!r}")
        elif burst < 1:
            raise ValueError(f"burst must be an int >= 1, got {burst!r}")
        self.burst: int = burst
        if mode not in ("wait", "reject"):
            raise ValueError(f"mode must be 'wait' or 'reject', got {mode!r}")
        self.mode: Mode = mode
        if max_wait is not None:
            if isinstance(max_wait, bool) or not isinstance(max_wait, int | float):
                raise TypeError(f"max_wait must be a number of seconds >= 0 or None, got {max_wait!r}")
            if math.isnan(max_wait) or max_wait < 0:
                raise ValueError(f"max_wait must be a number of seconds >= 0 or None, got {max_wait!r}")
            max_wait = None if math.isinf(max_wait) else float(max_wait)
        self.max_wait: float | None = max_wait
        #: Seconds per token.
        self.interval: float = self.per / self.rate
        #: The bucket's depth in seconds.
        self.tau: float = self.burst * self.interval

    def cost(self, tokens: Any) -> float:
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            raise TypeError(f"tokens must be an int between 1 and burst ({self.burst}), got {tokens!r}")
        if not 1 <= tokens <= self.burst:
            raise ValueError(f"tokens must be between 1 and burst ({self.burst}), got {tokens!r}")
        return tokens * self.interval

    def decision(self, allowed: bool, wait: float, tat: float, now: float) -> RateDecision:
        full_in = tat - now
        if full_in < 0.0:
            full_in = 0.0
        left = int((self.tau - full_in) / self.interval + _EPS)
        return RateDecision(allowed, wait, self.burst, max(0, min(self.burst, left)), full_in)


class _LimiterBase(Policy):
    """Shared machinery: events, errors, waiting."""

    policy_type = "rate_limiter"
    _cfg: _Config
    _lock: threading.Lock
    _rejected: int
    clock: Clock

    def _lookup(self, key: Any) -> list[float]:
        """The bucket of ``key`` (called with the lock held)."""
        raise NotImplementedError

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
        return self._cfg.mode

    @property
    def max_wait(self) -> float | None:
        """The longest a call may wait for tokens, in seconds (``None``: unbounded)."""
        return self._cfg.max_wait

    def _rejection(self, site: EventSite, wait: float, why: str) -> RateLimitedError:
        self._rejected += 1
        err = RateLimitedError(
            f"{self._label()} is over its limit ({self._cfg.rate:g} per {self._cfg.per:g} s, "
            f"burst {self._cfg.burst}): {why}; retry after {wait:.3g} s",
            policy=self.name,
            retry_after=wait,
        )
        self._emit(
            site,
            REJECTED,
            Severity.WARNING,
            exception=err,
            extras={"reason": "rate_limited", "retry_after": wait},
        )
        return err

    def _too_long(self, wait: float) -> str | None:
        """Why a wait of ``wait`` seconds is not allowed, or None."""
        max_wait = self._cfg.max_wait
        if max_wait is not None and wait > max_wait:
            return f"the wait ({wait:.3g} s) would exceed max_wait ({max_wait:.3g} s)"
        rem = _remaining()
        if rem is not None and wait > rem:
            return f"the wait ({wait:.3g} s) would outlive the deadline ({max(rem, 0.0):.3g} s left)"
        return None

    # A bucket is a list: the TAT first, then the freed turns (holes) left by
    # waiters cancelled in the middle of the queue, flattened as start, end,
    # start, end... in order. Only the waiting paths ever look past the TAT:
    # while a hole exists, a waiter is still queued behind it, so the bucket
    # is too far ahead for the fast paths to admit anyone. RateLimiter and
    # every key of KeyedRateLimiter share this code.

    def _take(self, state: list[float], cost: float, site: EventSite, wait_ok: bool) -> tuple[float, float]:
        """Take ``cost`` from the bucket, or reserve it.

        Returns ``(seconds to sleep, end of the reservation)``, ``(0.0, 0.0)``
        when the call may go at once. Raises RateLimitedError when the call
        must not wait.
        """
        cfg = self._cfg
        now = self.clock.now()
        with self._lock:
            tat = state[0]
            if tat < now:
                tat = now
            new = tat + cost
            wait = new - now - cfg.tau
            if wait <= _EPS:
                state[0] = new
                return _NO_WAIT
            hole, start = _find_hole(state, cost, now, cfg.tau)
            if hole:
                wait = start + cost - now - cfg.tau
            if hole and wait <= _EPS:  # a freed turn that is due now
                _fill_hole(state, hole, start, cost)
                return _NO_WAIT
            if wait_ok:
                why = self._too_long(wait)
                if why is None:
                    if hole:
                        return (wait, _fill_hole(state, hole, start, cost))
                    state[0] = new  # reserve our turn, in arrival order
                    return (wait, new)
            else:
                why = "mode='reject'"
        raise self._rejection(site, wait, why)

    def _refund(self, state: list[float], end: float, cost: float) -> None:
        """Give back the turn ``(end - cost, end)`` of a waiter that will not run."""
        with self._lock:
            _give_back(state, end - cost, end)

    async def _acquire_async(self, state: list[float], cost: float, site: EventSite) -> None:
        wait, end = self._take(state, cost, site, self._cfg.mode == "wait")
        if wait:
            try:
                await self.clock.asleep(wait)
            except BaseException:
                self._refund(state, end, cost)
                raise

    def _acquire_sync(self, state: list[float], cost: float, site: EventSite) -> None:
        wait, end = self._take(state, cost, site, self._cfg.mode == "wait")
        if wait:
            try:
                self.clock.sleep(wait)
            except BaseException:
                self._refund(state, end, cost)
                raise

    def _try(self, key: Any, cost: float, site: EventSite) -> RateDecision:
        cfg = self._cfg
        now = self.clock.now()
        with self._lock:
            try:
                state = self._lookup(key)
            except Exception as exc:  # the key's __hash__ or __eq__: reported once the lock is released
                bad: Exception | None = exc
            else:
                bad = None
                tat = state[0]
                if tat < now:
                    tat = now
                new = tat + cost
                wait = new - now - cfg.tau
                if wait <= _EPS:
                    state[0] = new
                    return cfg.decision(True, 0.0, new, now)
                hole, start = _find_hole(state, cost, now, cfg.tau)
                if hole and start + cost - now - cfg.tau <= _EPS:  # a freed turn that is due now
                    _fill_hole(state, hole, start, cost)
                    return cfg.decision(True, 0.0, state[0], now)
                self._rejected += 1
        if bad is not None:
            raise self._bad_key(key, bad) from bad
        self._emit(site, REJECTED, Severity.WARNING, extras={"reason": "rate_limited", "retry_after": wait})
        return cfg.decision(False, wait, tat, now)

    def _bad_key(self, key: Any, exc: Exception) -> RateLimitKeyError:
        """The error for a key whose ``__hash__`` or ``__eq__`` raised (built with the lock released)."""
        if isinstance(exc, TypeError):
            what = f"the key {_describe(key)} is not hashable"
        else:
            what = f"the key {_describe(key)} raised {type(exc).__name__}: {exc} when hashed or compared"
        return RateLimitKeyError(f"{self._label()}: {what}; the call was rejected", policy=self.name)

    def _base_status(self) -> dict[str, Any]:
        cfg = self._cfg
        return {
            "rate": cfg.rate,
            "per": cfg.per,
            "burst": cfg.burst,
            "mode": cfg.mode,
            "max_wait": cfg.max_wait,
            "rejected": self._rejected,
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
        name: shown in errors, events and the status endpoint.
        clock: time source (tests pass a ``FakeClock``).
        listeners: event listeners for this policy only.

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
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        self._cfg = _Config(rate, per, burst, mode, max_wait)
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self._lock = threading.Lock()
        self._state: list[float] = [_NEG_INF]
        self._rejected = 0
        self._site = EventSite(operation=name or "rate_limiter")

    @property
    def rejected(self) -> int:
        """Calls rejected since the limiter was created."""
        return self._rejected

    def try_acquire(self, tokens: int = 1) -> RateDecision:
        """Take ``tokens`` if they are there now; never waits, whatever the mode.

        Raises:
            ValueError: ``tokens`` is not between 1 and ``burst``.
        """
        return self._try(None, self._cfg.cost(tokens), self._site)

    async def acquire(self, tokens: int = 1) -> None:
        """Take ``tokens``, waiting in wait mode; raise in reject mode.

        Raises:
            RateLimitedError: reject mode and no tokens now, or wait mode and
                the wait would exceed ``max_wait`` or the deadline (raised at
                once, without waiting).
        """
        await self._acquire_async(self._state, self._cfg.cost(tokens), self._site)

    def acquire_sync(self, tokens: int = 1) -> None:
        """Like :meth:`acquire`, blocking the thread (``clock.sleep``) in wait mode."""
        self._acquire_sync(self._state, self._cfg.cost(tokens), self._site)

    def _lookup(self, key: Any) -> list[float]:
        return self._state

    @property
    def available(self) -> float:
        """Tokens in the bucket now (fractional)."""
        cfg = self._cfg
        full_in = max(0.0, self._state[0] - self.clock.now())
        return max(0.0, (cfg.tau - full_in) / cfg.interval)

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: options, tokens left and rejections."""
        out = self._base_status()
        out["available"] = self.available
        return out

    def _wrap_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        cfg = self._cfg
        cost = cfg.interval
        tau_eps = cfg.tau + _EPS
        now_fn = _float_now(self.clock)
        lock = self._lock
        state = self._state
        slow = self._acquire_async

        async def rate_limited_call(*args: Any, **kwargs: Any) -> Any:
            now = now_fn()
            # No try/finally: between acquire and release there are only
            # operations on floats (now_fn returns one; the bucket holds only
            # floats), which cannot raise, and a try costs ~13 ns here on 3.11.
            lock.acquire()
            tat = state[0]
            if tat < now:
                tat = now
            tat += cost
            if tat - now <= tau_eps:
                state[0] = tat
                lock.release()
            else:
                lock.release()
                await slow(state, cost, site)
            return await fn(*args, **kwargs)

        return rate_limited_call

    def _wrap_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        cost = self._cfg.interval
        state = self._state
        slow = self._acquire_sync

        def rate_limited_call(*args: Any, **kwargs: Any) -> Any:
            slow(state, cost, site)
            return fn(*args, **kwargs)

        return rate_limited_call

    def __repr__(self) -> str:
        cfg = self._cfg
        return (
            f"RateLimiter(rate={cfg.rate:g}, per={cfg.per:g}, burst={cfg.burst}, mode={cfg.mode!r}, "
            f"max_wait={cfg.max_wait}, name={self.name!r})"
        )


class _Buckets(LRUCache[Hashable, list[float]]):
    """Per-key buckets, least recently used evicted first; a miss creates a full bucket."""

    def __missing__(self, key: Hashable) -> list[float]:
        state = [_NEG_INF]
        self[key] = state
        return state


class KeyedRateLimiter(_LimiterBase):
    """One token bucket per key, at most ``max_keys`` of them in memory.

    Args:
        rate: as :class:`RateLimiter`, per key.
        per: as :class:`RateLimiter`.
        key: ``key(*args, **kwargs) -> Hashable``, called with the wrapped
            function's arguments (e.g. ``lambda user, **_: user.id``). Needed
            to wrap functions; :meth:`try_acquire` takes the key itself.
        max_keys: buckets kept in memory (>= 1). The least recently used
            bucket is dropped when a new key arrives, so a flood of distinct
            keys cannot grow memory; a dropped key comes back with a full
            bucket (size ``max_keys`` above the number of active keys).
        burst: as :class:`RateLimiter`, per key.
        mode: as :class:`RateLimiter`.
        max_wait: as :class:`RateLimiter`.
        name: as :class:`RateLimiter`.
        clock: as :class:`RateLimiter`.
        listeners: as :class:`RateLimiter`.

    A key function that raises, or returns an unhashable value, makes the
    call fail with :class:`RateLimitKeyError` naming the limiter; the
    function is not called.
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
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        self._cfg = _Config(rate, per, burst, mode, max_wait)
        if key is not None and not callable(key):
            raise TypeError(f"key must be a callable (*args, **kwargs) -> hashable, got {key!r}")
        self.key = key
        if isinstance(max_keys, bool) or not isinstance(max_keys, int):
            raise TypeError(f"max_keys must be an int >= 1, got {max_keys!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be an int >= 1, got {max_keys!r}")
        self.max_keys = max_keys
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self._lock = threading.Lock()
        self._buckets = _Buckets(maxsize=max_keys)
        self._rejected = 0
        self._site = EventSite(operation=name or "rate_limiter")

    @property
    def rejected(self) -> int:
        """Calls rejected since the limiter was created."""
        return self._rejected

    @property
    def keys(self) -> int:
        """Buckets held in memory now (<= ``max_keys``)."""
        return len(self._buckets)

    def _lookup(self, key: Any) -> list[float]:
        return self._buckets[key]

    def _bucket(self, key: Any) -> list[float]:
        try:
            with self._lock:
                return self._buckets[key]
        except Exception as exc:  # the key's __hash__ or __eq__; the lock is released by now
            raise self._bad_key(key, exc) from exc

    def _key_error(self, exc: Exception) -> RateLimitKeyError:
        return RateLimitKeyError(
            f"{self._label()}: the key function raised {type(exc).__name__}: {exc}; the call was rejected",
            policy=self.name,
        )

    def _key_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key_fn = self.key
        assert key_fn is not None
        try:
            return key_fn(*args, **kwargs)
        except Exception as exc:
            raise self._key_error(exc) from exc

    def try_acquire(self, key: Hashable, tokens: int = 1) -> RateDecision:
        """Take ``tokens`` from ``key``'s bucket if they are there now; never waits.

        Raises:
            ValueError: ``tokens`` is not between 1 and ``burst``.
            RateLimitKeyError: ``key`` is not hashable.
        """
        return self._try(key, self._cfg.cost(tokens), self._site)

    async def acquire(self, key: Hashable, tokens: int = 1) -> None:
        """Take ``tokens`` from ``key``'s bucket, as :meth:`RateLimiter.acquire`."""
        cost = self._cfg.cost(tokens)
        await self._acquire_async(self._bucket(key), cost, self._site)

    def acquire_sync(self, key: Hashable, tokens: int = 1) -> None:
        """Take ``tokens`` from ``key``'s bucket, blocking the thread in wait mode."""
        cost = self._cfg.cost(tokens)
        self._acquire_sync(self._bucket(key), cost, self._site)

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: options, keys held and rejections."""
        out = self._base_status()
        out["keys"] = len(self._buckets)
        out["max_keys"] = self.max_keys
        return out

    def _check_key(self) -> None:
        if self.key is None:
            raise TypeError(f"{self._label()} needs key= to wrap a function (the key of each call)")

    def _wrap_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        self._check_key()
        cost = self._cfg.interval
        tau_eps = self._cfg.tau + _EPS
        now_fn = _float_now(self.clock)
        lock = self._lock
        key_fn = self.key
        assert key_fn is not None
        key_error = self._key_error
        buckets = self._buckets
        bad_key = self._bad_key
        slow = self._acquire_async

        async def keyed_rate_limited_call(*args: Any, **kwargs: Any) -> Any:
            try:
                key = key_fn(*args, **kwargs)
            except Exception as exc:
                raise key_error(exc) from exc
            now = now_fn()
            lock.acquire()
            try:
                state = buckets[key]
            except BaseException as exc:
                # The key's __hash__ and __eq__ run in the lookup and may raise
                # anything: release first, then build the error (repr is user code).
                lock.release()
                if isinstance(exc, Exception):
                    raise bad_key(key, exc) from exc
                raise
            # From here on, float operations only, as in RateLimiter.
            tat = state[0]
            if tat < now:
                tat = now
            tat += cost
            if tat - now <= tau_eps:
                state[0] = tat
                lock.release()
            else:
                lock.release()
                await slow(state, cost, site)
            return await fn(*args, **kwargs)

        return keyed_rate_limited_call

    def _wrap_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        self._check_key()
        cost = self._cfg.interval
        key_of = self._key_of
        slow = self._acquire_sync

        bucket = self._bucket

        def keyed_rate_limited_call(*args: Any, **kwargs: Any) -> Any:
            slow(bucket(key_of(args, kwargs)), cost, site)
            return fn(*args, **kwargs)

        return keyed_rate_limited_call

    def __repr__(self) -> str:
        cfg = self._cfg
        return (
            f"KeyedRateLimiter(rate={cfg.rate:g}, per={cfg.per:g}, burst={cfg.burst}, mode={cfg.mode!r}, "
            f"max_keys={self.max_keys}, name={self.name!r})"
        )


def _float_now(clock: Clock) -> Callable[[], float]:
    """The clock's ``now`` for the fast paths, sure to return a float.

    The fast paths do arithmetic on it with the lock held and no try: a
    custom clock returning something else must fail before the lock is taken.
    """
    if type(clock) is SystemClock:
        return time.monotonic
    now = clock.now
    return lambda: float(now())


def _describe(key: Any) -> str:
    """``repr(key)`` for an error message, even when the key's ``__repr__`` is broken too."""
    try:
        return repr(key)
    except Exception:
        return f"<{type(key).__name__} object>"


# Freed turns. ``state[1:]`` holds (start, end) pairs of the bucket's virtual
# timeline left free by cancelled waiters, in order, never adjacent. A call
# of cost c taking the part (x, x + c) of a hole runs at x + c - tau, which
# must not be in the past: x >= now + tau - c. Taking it then is exactly as
# if the cancelled waiter (or a smaller part of it) had run, so the rate holds.


def _find_hole(state: list[float], cost: float, now: float, tau: float) -> tuple[int, float]:
    """The first freed turn that a call of ``cost`` arriving at ``now`` fits in: (its index, where the call starts).

    ``(0, 0.0)`` when there is none. Drops the freed turns that have gone by
    (nobody can use them any more).
    """
    i = 1
    while i < len(state):
        end = state[i + 1]
        if now + tau > end + _EPS:
            del state[i : i + 2]
            continue
        start = max(state[i], now + tau - cost)
        if start + cost <= end + _EPS:
            return i, start
        i += 2
    return 0, 0.0


def _fill_hole(state: list[float], i: int, start: float, cost: float) -> float:
    """Reserve ``(start, start + cost)`` in the freed turn at ``i``; return the reservation's end."""
    end = start + cost
    if state[i + 1] - end > _EPS:
        # What is left before ``start`` can never be used (see _find_hole); what is after can.
        state[i] = end
    else:
        del state[i : i + 2]
    return end


def _give_back(state: list[float], start: float, end: float) -> None:
    """Free the reservation ``(start, end)`` of a waiter that will not run."""
    if end >= state[0] - _EPS:
        # The last reservation: the bucket simply moves back, over a freed turn just before it too.
        state[0] = start
        if len(state) > 1 and state[-1] >= start - _EPS:
            state[0] = state[-2]
            del state[-2:]
        return
    holes = [(state[i], state[i + 1]) for i in range(1, len(state), 2)]
    holes.append((start, end))
    holes.sort()
    merged: list[list[float]] = []
    for s, e in holes:
        if merged and s <= merged[-1][1] + _EPS:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    state[1:] = [bound for pair in merged for bound in pair]
