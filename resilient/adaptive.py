"""Adaptive throttling: reject locally what the backend would reject anyway.

:class:`AdaptiveThrottle` is the client-side throttling of the Google SRE
book (chapter 21, "Handling Overload"). Over the last ``window`` seconds the
client counts ``requests`` (every call it tried, including those it rejected
itself) and ``accepts`` (calls the backend served). While the backend accepts
everything, nothing is throttled. When it starts refusing, the client rejects
new calls locally, before they cost anything, with probability::

    max(0, (requests - k * accepts) / (requests + 1))

so the backend keeps receiving about ``k`` times what it actually serves:
enough to notice that it has recovered, little enough not to drown it.
``k=2`` is the book's default; a smaller ``k`` (>= 1) throttles harder.

"Refused by the backend" is what ``on`` / ``on_result`` flag (by default any
exception): an exception not matched by ``on`` (a 404 turned into an
exception, a validation error) means the backend did its job, and counts as
an accept. A cancelled call counts as nothing.

:class:`AdaptiveConcurrency` is a :class:`~resilient.bulkhead.Bulkhead` whose
limit follows the backend with AIMD (Netflix concurrency-limits): +1 after a
success while the limit is at least half used, times ``backoff_ratio`` after
a failure or a call slower than ``latency_threshold``.
"""

from __future__ import annotations

import math
import random as _random
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from resilient.bulkhead import Bulkhead
from resilient.clock import SYSTEM_CLOCK, Clock
from resilient.errors import RateLimitedError
from resilient.events import (
    EXTRA_ACCEPTS,
    EXTRA_PROBABILITY,
    EXTRA_REASON,
    EXTRA_REQUESTS,
    REJECTED,
    WOULD_REJECT,
    EventSite,
    Listener,
    Severity,
)
from resilient.policy import (
    AsyncFn,
    AsyncWrapped,
    OnArg,
    Policy,
    ShadowMode,
    SyncFn,
    exception_predicate,
    result_predicate,
)

__all__ = ["AdaptiveConcurrency", "AdaptiveThrottle"]

_BUCKETS = 10


class AdaptiveThrottle(ShadowMode, Policy):
    """Client-side adaptive throttling (Google SRE book): shed load the backend refuses.

    Args:
        k: the accepts multiplier (>= 1): the backend gets up to ``k`` times
            the calls it accepts. 2.0 as in the SRE book.
        window: seconds of history counted (> 0); the book uses 2 minutes.
        on: exceptions that mean "the backend refused" (type, tuple or
            predicate); default any exception.
        on_result: predicate flagging results that mean "refused" (an HTTP
            429 or 503 response).
        name: shown in errors, events and the status endpoint.
        clock: time source (tests pass a ``FakeClock``).
        random: ``() -> float`` in [0, 1), for deterministic tests;
            default :func:`random.random`.
        listeners: event listeners for this policy only.
        enforce: ``False`` (or a callable returning it, read only when the
            dice say reject) is shadow mode: the throttle decides exactly as
            usual, counts (:attr:`would_reject`) and emits ``would_reject``
            with the :class:`~resilient.RateLimitedError` it would have
            raised, and lets the call through. The window counts that call
            as the enforcing throttle would (a request, not an accept) and
            ignores its outcome, so every later decision is the same.

    A call throttled locally raises :class:`~resilient.RateLimitedError`
    (the function is not called) and emits a ``rejected`` event.
    """

    policy_type = "adaptive_throttle"

    def __init__(
        self,
        *,
        k: float = 2.0,
        window: float = 120.0,
        on: OnArg | None = Exception,
        on_result: Callable[[Any], bool] | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        random: Callable[[], float] | None = None,
        listeners: Iterable[Listener] = (),
        enforce: bool | Callable[[], bool] = True,
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        self.set_enforce(enforce)
        if isinstance(k, bool) or not isinstance(k, int | float):
            raise TypeError(f"k must be a number >= 1, got {k!r}")
        if math.isnan(k) or math.isinf(k) or k < 1:
            raise ValueError(f"k must be a finite number >= 1, got {k!r}")
        if isinstance(window, bool) or not isinstance(window, int | float):
            raise TypeError(f"window must be a number of seconds > 0, got {window!r}")
        if math.isnan(window) or math.isinf(window) or window <= 0:
            raise ValueError(f"window must be a finite number of seconds > 0, got {window!r}")
        if random is not None and not callable(random):
            raise TypeError(f"random must be a callable () -> float in [0, 1), got {random!r}")
        self.k = float(k)
        self.window = float(window)
        self._on = exception_predicate(on)
        self._on_result = result_predicate(on_result)
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self._random = random if random is not None else _random.random
        self._lock = threading.Lock()
        self._tick = self.window / _BUCKETS
        self._requests = [0] * _BUCKETS
        self._accepts = [0] * _BUCKETS
        self._idx = 0
        self._total_requests = 0
        self._total_accepts = 0
        self._tick_end = self.clock.now() + self._tick
        self._rejected = 0

    # -- the window ----------------------------------------------------------

    def _rotate(self, now: float) -> None:
        # Drop the buckets that fell out of the window (checked again under the lock: another thread may be first).
        with self._lock:
            if now < self._tick_end:
                return
            elapsed = int((now - self._tick_end) // self._tick) + 1
            for _ in range(min(elapsed, _BUCKETS)):
                self._idx = idx = (self._idx + 1) % _BUCKETS
                self._total_requests -= self._requests[idx]
                self._total_accepts -= self._accepts[idx]
                self._requests[idx] = 0
                self._accepts[idx] = 0
            self._tick_end += self._tick * elapsed

    def _record(self, accepted: bool) -> None:
        with self._lock:
            idx = self._idx
            self._requests[idx] += 1
            self._total_requests += 1
            if accepted:
                self._accepts[idx] += 1
                self._total_accepts += 1

    # -- introspection -------------------------------------------------------

    @property
    def requests(self) -> int:
        """Calls counted in the window (locally rejected ones included)."""
        self._maybe_rotate()
        return self._total_requests

    @property
    def accepts(self) -> int:
        """Calls the backend accepted in the window."""
        self._maybe_rotate()
        return self._total_accepts

    @property
    def rejected(self) -> int:
        """Calls rejected locally since the throttle was created."""
        return self._rejected

    @property
    def rejection_probability(self) -> float:
        """The probability that the next call is rejected locally."""
        self._maybe_rotate()
        req = self._total_requests
        return max(0.0, (req - self.k * self._total_accepts) / (req + 1))

    def _maybe_rotate(self) -> None:
        now = self.clock.now()
        if now >= self._tick_end:
            self._rotate(now)

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: the window's counts and the current rejection probability."""
        p = self.rejection_probability
        return {
            "k": self.k,
            "window": self.window,
            "requests": self._total_requests,
            "accepts": self._total_accepts,
            "rejection_probability": p,
            "rejected": self._rejected,
            "would_reject": self._would_reject,
            "enforcing": self.enforcing,
        }

    # -- the decision --------------------------------------------------------

    def _maybe_reject(self, site: EventSite, requests: int, accepts: int) -> bool:
        """Slow path: the backend has refused calls lately; roll the dice.

        Raises the rejection; in shadow mode reports it and returns ``True``:
        the call runs, and its outcome must not be recorded (the enforcing
        throttle would not have made it; it was counted as refused).
        """
        p = (requests - self.k * accepts) / (requests + 1)
        if self._random() >= p:
            return False
        self._record(False)
        err = RateLimitedError(
            f"{self._label()} throttled the call locally: the backend accepted {accepts} of {requests} "
            f"calls in the last {self.window:g} s (rejection probability {p:.2f})",
            policy=self.name,
        )
        extras = {
            EXTRA_REASON: "adaptive_throttle",
            EXTRA_PROBABILITY: p,
            EXTRA_REQUESTS: requests,
            EXTRA_ACCEPTS: accepts,
        }
        if not self.shadowed():
            self._rejected += 1
            self._emit(site, REJECTED, Severity.WARNING, exception=err, extras=extras)
            raise err
        self._would_reject += 1
        self._emit(site, WOULD_REJECT, Severity.INFO, exception=err, extras=extras)
        return True

    def _wrap_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        on = self._on
        on_result = self._on_result
        now_fn = self.clock.now
        k = self.k
        record = self._record
        rotate = self._rotate
        maybe_reject = self._maybe_reject

        async def throttled_call(*args: Any, **kwargs: Any) -> Any:
            now = now_fn()
            if now >= self._tick_end:
                rotate(now)
            requests = self._total_requests
            accepts = self._total_accepts
            if requests > k * accepts and maybe_reject(site, requests, accepts):
                return await fn(*args, **kwargs)  # shadow mode: would be rejected; runs uncounted
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                record(not on(exc))
                raise
            record(on_result is None or not on_result(result))
            return result

        return throttled_call

    def _wrap_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        on = self._on
        on_result = self._on_result
        now_fn = self.clock.now
        k = self.k
        record = self._record
        rotate = self._rotate
        maybe_reject = self._maybe_reject

        def throttled_call(*args: Any, **kwargs: Any) -> Any:
            now = now_fn()
            if now >= self._tick_end:
                rotate(now)
            requests = self._total_requests
            accepts = self._total_accepts
            if requests > k * accepts and maybe_reject(site, requests, accepts):
                return fn(*args, **kwargs)  # shadow mode: would be rejected; runs uncounted
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                record(not on(exc))
                raise
            record(on_result is None or not on_result(result))
            return result

        return throttled_call

    def __repr__(self) -> str:
        return f"AdaptiveThrottle(k={self.k:g}, window={self.window:g}, name={self.name!r})"


class AdaptiveConcurrency(Bulkhead):
    """A bulkhead whose limit adapts to the backend: AIMD (Netflix concurrency-limits).

    The limit starts at ``initial_limit``. A call that succeeds while at
    least half the limit is in use raises it by one (additive increase); a
    call that fails (``on`` / ``on_result``) or takes longer than
    ``latency_threshold`` multiplies it by ``backoff_ratio`` (multiplicative
    decrease), never below ``min_limit`` nor above ``max_limit``. Calls over
    the limit queue or are rejected exactly as with :class:`Bulkhead`
    (``BulkheadFullError``), and :meth:`acquire` works the same way, so the
    ASGI load-shedding middleware takes either.

    Args:
        initial_limit: the starting limit (between ``min_limit`` and ``max_limit``).
        min_limit: the lowest limit (>= 1).
        max_limit: the highest limit (>= ``min_limit``).
        backoff_ratio: the factor applied on a drop, in (0, 1).
        latency_threshold: seconds (> 0) above which a successful call also
            counts as a drop; ``None``: only failures do.
        on: exceptions that count as drops (default any exception).
        on_result: predicate flagging results that count as drops.
        max_queued: as :class:`Bulkhead`.
        queue_timeout: as :class:`Bulkhead`.
        name: as :class:`Bulkhead`.
        clock: as :class:`Bulkhead`.
        listeners: as :class:`Bulkhead`.
        enforce: as :class:`Bulkhead` (shadow mode). A call run without a
            slot that would have queued adapts the limit as a call at full
            use (it would have run once a slot freed); one that would have
            been rejected does not adapt it.

    ``acquire_sync()`` holds a slot without adapting the limit (no outcome is
    reported); wrapped sync functions do adapt it.
    """

    policy_type = "adaptive_concurrency"

    def __init__(
        self,
        *,
        initial_limit: int = 20,
        min_limit: int = 1,
        max_limit: int = 1000,
        backoff_ratio: float = 0.9,
        latency_threshold: float | None = None,
        on: OnArg | None = Exception,
        on_result: Callable[[Any], bool] | None = None,
        max_queued: int = 0,
        queue_timeout: float | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
        enforce: bool | Callable[[], bool] = True,
    ) -> None:
        for value, param in ((initial_limit, "initial_limit"), (min_limit, "min_limit"), (max_limit, "max_limit")):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{param} must be an int >= 1, got {value!r}")
            if value < 1:
                raise ValueError(f"{param} must be an int >= 1, got {value!r}")
        if max_limit < min_limit:
            raise ValueError(f"max_limit must be >= min_limit ({min_limit}), got {max_limit!r}")
        if not min_limit <= initial_limit <= max_limit:
            raise ValueError(f"initial_limit must be between min_limit and max_limit, got {initial_limit!r}")
        if isinstance(backoff_ratio, bool) or not isinstance(backoff_ratio, int | float):
            raise TypeError(f"backoff_ratio must be a number in (0, 1), got {backoff_ratio!r}")
        if not 0 < backoff_ratio < 1:
            raise ValueError(f"backoff_ratio must be a number in (0, 1), got {backoff_ratio!r}")
        if latency_threshold is not None:
            if isinstance(latency_threshold, bool) or not isinstance(latency_threshold, int | float):
                raise TypeError(f"latency_threshold must be a number of seconds > 0 or None, got {latency_threshold!r}")
            if math.isnan(latency_threshold) or latency_threshold <= 0:
                raise ValueError(
                    f"latency_threshold must be a number of seconds > 0 or None, got {latency_threshold!r}"
                )
        super().__init__(
            initial_limit,
            max_queued=max_queued,
            queue_timeout=queue_timeout,
            name=name,
            clock=clock,
            listeners=listeners,
            enforce=enforce,
        )
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.backoff_ratio = float(backoff_ratio)
        self.latency_threshold = None if latency_threshold is None else float(latency_threshold)
        self._on = exception_predicate(on)
        self._on_result = result_predicate(on_result)
        # An exact float limit, so that repeated small decreases are not lost to rounding.
        self._limit = float(initial_limit)

    @property
    def limit(self) -> int:
        """The current concurrency limit."""
        return self.max_concurrent

    def status(self) -> dict[str, Any]:
        """The bulkhead's snapshot plus the adaptive limit's bounds."""
        out = super().status()
        out.update(limit=self.max_concurrent, min_limit=self.min_limit, max_limit=self.max_limit)
        return out

    def _sample(self, running: int, dropped: bool) -> None:
        """Adjust the limit after one call (AIMD), then hand out any new slots."""
        with self._lock:
            if dropped:
                self._limit = max(float(self.min_limit), self._limit * self.backoff_ratio)
            elif running * 2 >= self.max_concurrent:
                self._limit = min(float(self.max_limit), self._limit + 1.0)
            else:
                return
            self.max_concurrent = max(self.min_limit, int(self._limit))
            self._grant_locked()

    def _finish(self, start: float, running: int, dropped: bool) -> None:
        threshold = self.latency_threshold
        if not dropped and threshold is not None and self.clock.now() - start > threshold:
            dropped = True
        self._sample(running, dropped)

    def acquire(self) -> _AdaptiveSlot:  # type: ignore[override]
        """An async context manager holding one slot; its outcome and latency adapt the limit."""
        return _AdaptiveSlot(self)

    def _wrap_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        on = self._on
        on_result = self._on_result
        enter = self._enter_async
        release = self._release
        left = self._left_unslotted
        finish = self._finish
        now_fn = self.clock.now

        async def adaptive_call(*args: Any, **kwargs: Any) -> Any:
            how = await enter(site)
            start = now_fn()
            # Shadow mode, no slot: a call that would have queued would have run at full use.
            running = self.max_concurrent if how else self._running
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                if not how:
                    release()
                    finish(start, running, on(exc))
                elif left(how):
                    finish(start, running, on(exc))
                raise
            except BaseException:
                if not how:
                    release()
                else:
                    left(how)
                raise
            if not how:
                release()
                finish(start, running, on_result is not None and on_result(result))
            elif left(how):
                finish(start, running, on_result is not None and on_result(result))
            return result

        return adaptive_call

    def _wrap_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        on = self._on
        on_result = self._on_result
        enter = self._enter_sync
        release = self._release
        left = self._left_unslotted
        finish = self._finish
        now_fn = self.clock.now

        def adaptive_call(*args: Any, **kwargs: Any) -> Any:
            how = enter(site)
            start = now_fn()
            # Shadow mode, no slot: a call that would have queued would have run at full use.
            running = self.max_concurrent if how else self._running
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not how:
                    release()
                    finish(start, running, on(exc))
                elif left(how):
                    finish(start, running, on(exc))
                raise
            except BaseException:
                if not how:
                    release()
                else:
                    left(how)
                raise
            if not how:
                release()
                finish(start, running, on_result is not None and on_result(result))
            elif left(how):
                finish(start, running, on_result is not None and on_result(result))
            return result

        return adaptive_call

    def __repr__(self) -> str:
        return (
            f"AdaptiveConcurrency(limit={self.max_concurrent}, min_limit={self.min_limit}, "
            f"max_limit={self.max_limit}, name={self.name!r})"
        )


class _AdaptiveSlot:
    """``async with limiter.acquire():`` for :class:`AdaptiveConcurrency` (one per block)."""

    __slots__ = ("_how", "_limiter", "_running", "_start")

    def __init__(self, limiter: AdaptiveConcurrency) -> None:
        self._limiter = limiter
        self._start = 0.0
        self._running = 0
        self._how = 0

    async def __aenter__(self) -> None:
        lim = self._limiter
        self._how = how = await lim._enter_async(lim._site)
        self._start = lim.clock.now()
        self._running = lim.max_concurrent if how else lim._running

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        lim = self._limiter
        how = self._how
        if not how:
            lim._release()
        elif not lim._left_unslotted(how):
            return  # shadow mode: an enforcing limiter would have rejected it, so it says nothing
        if exc is None:
            lim._finish(self._start, self._running, False)
        elif isinstance(exc, Exception):
            lim._finish(self._start, self._running, lim._on(exc))
