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

The success path is one clock read and one comparison; the sync and async
wrappers are thin shells of the same steps (a test compares them).
"""

from __future__ import annotations

import random as _random
import threading
from collections.abc import Callable, Iterable
from typing import Any

from resilient.clock import SYSTEM_CLOCK, Clock
from resilient.errors import RateLimitedError
from resilient.events import (
    EXTRA_ACCEPTS,
    EXTRA_PROBABILITY,
    EXTRA_REASON,
    EXTRA_REQUESTS,
    REJECTED,
    EventSite,
    ExtraValue,
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
from resilient.validate import check_number, check_seconds
from resilient.window import PairWindow

__all__ = ["AdaptiveThrottle"]


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
        self.k = check_number(k, "k", minimum=1, strict=False)
        self.window = check_seconds(window, "window")
        if random is not None and not callable(random):
            raise TypeError(f"random must be a callable () -> float in [0, 1), got {random!r}")
        self._on = exception_predicate(on)
        self._on_result = result_predicate(on_result)
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self._random = random if random is not None else _random.random
        self._lock = threading.Lock()
        # Requests in `first`, accepts in `second`.
        self._window = PairWindow(self.window, self.clock.now())
        self._rejected = 0

    # -- the window ----------------------------------------------------------

    def _rotate(self, now: float) -> None:
        # Checked again under the lock: another thread may have been first.
        window = self._window
        with self._lock:
            if now >= window.tick_end:
                window.advance(now)

    def _record(self, accepted: bool) -> None:
        with self._lock:
            self._window.add(1, 1 if accepted else 0)

    def _served(self, result: Any) -> Any:
        """A call returned: an accept unless ``on_result`` flags the result as refused."""
        on_result = self._on_result
        accepted = on_result is None or not on_result(result)
        # _record's body, inlined: this is the success path (an int, not the bool: int + bool is the slow add).
        with self._lock:
            self._window.add(1, 1 if accepted else 0)
        return result

    # -- introspection -------------------------------------------------------

    @property
    def requests(self) -> int:
        """Calls counted in the window (locally rejected ones included)."""
        self._maybe_rotate()
        return self._window.first

    @property
    def accepts(self) -> int:
        """Calls the backend accepted in the window."""
        self._maybe_rotate()
        return self._window.second

    @property
    def rejected(self) -> int:
        """Calls rejected locally since the throttle was created."""
        return self._rejected

    @property
    def rejection_probability(self) -> float:
        """The probability that the next call is rejected locally."""
        self._maybe_rotate()
        window = self._window
        return max(0.0, (window.first - self.k * window.second) / (window.first + 1))

    def _maybe_rotate(self) -> None:
        now = self.clock.now()
        if now >= self._window.tick_end:
            self._rotate(now)

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: the window's counts and the current rejection probability."""
        p = self.rejection_probability
        return {
            "k": self.k,
            "window": self.window,
            "requests": self._window.first,
            "accepts": self._window.second,
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
            f"{self.label()} throttled the call locally: the backend accepted {accepts} of {requests} "
            f"calls in the last {self.window:g} s (rejection probability {p:.2f})",
            policy=self.name,
        )
        extras: dict[str, ExtraValue] = {
            EXTRA_REASON: "adaptive_throttle",
            EXTRA_PROBABILITY: p,
            EXTRA_REQUESTS: requests,
            EXTRA_ACCEPTS: accepts,
        }
        if not self.shadowed():
            self._rejected += 1
            self.emit(site, REJECTED, Severity.WARNING, exception=err, extras=extras)
            raise err
        self.record_would_reject(site, err, extras)
        return True

    def _admit_slow(self, site: EventSite) -> bool:
        """A new bucket is due, or the backend refused calls lately: rotate, then maybe roll the dice.

        ``True``: shadow mode let a would-be rejection through (run the call
        uncounted); raises the rejection when enforcing.
        """
        now = self.clock.now()
        window = self._window
        if now >= window.tick_end:
            self._rotate(now)
        requests = window.first
        accepts = window.second
        return requests > self.k * accepts and self._maybe_reject(site, requests, accepts)

    def _shell_parts(self) -> tuple[Any, ...]:
        """What both wrappers bind once, as locals of their closures."""
        return self._on, self.clock.now, self.k, self._window, self._record, self._served, self._admit_slow

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        """The closure guarding each call of the async ``fn`` (:meth:`~resilient.Policy.build_async`)."""
        on, now, k, window, record, served, admit_slow = self._shell_parts()

        async def throttled_call(*args: Any, **kwargs: Any) -> Any:
            if (now() >= window.tick_end or window.first > k * window.second) and admit_slow(site):
                return await fn(*args, **kwargs)  # shadow mode: would be rejected; runs uncounted
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                record(not on(exc))
                raise
            return served(result)

        return throttled_call

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        """The closure guarding each call of the synchronous ``fn`` (:meth:`~resilient.Policy.build_sync`)."""
        on, now, k, window, record, served, admit_slow = self._shell_parts()

        def throttled_call(*args: Any, **kwargs: Any) -> Any:
            if (now() >= window.tick_end or window.first > k * window.second) and admit_slow(site):
                return fn(*args, **kwargs)  # shadow mode: would be rejected; runs uncounted
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                record(not on(exc))
                raise
            return served(result)

        return throttled_call

    def __repr__(self) -> str:
        return f"AdaptiveThrottle(k={self.k:g}, window={self.window:g}, name={self.name!r})"
