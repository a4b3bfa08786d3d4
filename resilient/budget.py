"""Retry budgets: retries limited to a share of recent traffic.

Retrying every failed call multiplies load on a dependency exactly when it
is weakest (a *retry storm*). A :class:`RetryBudget` lets retries through
only while they stay under ``ratio`` of the calls made in the last
``window`` seconds, plus a floor of ``min_per_second`` so that a quiet
service can still retry (Finagle's ``RetryBudget``, Envoy's retry budgets,
gRPC's retry throttling).

Share one budget between every :class:`~resilient.Retry` that calls the same
downstream service::

    payments_budget = RetryBudget(ratio=0.2)
    charge = Retry(attempts=3, budget=payments_budget)(charge)
    refund = Retry(attempts=5, budget=payments_budget)(refund)
"""

from __future__ import annotations

import threading
from typing import Any

from resilient.clock import SYSTEM_CLOCK, Clock
from resilient.validate import check_number, check_seconds

__all__ = ["RetryBudget"]

# The window is kept in _BUCKETS buckets of window / _BUCKETS seconds. Calls
# are counted over the last _BUCKETS buckets (the current one included), so
# only calls of the last `window` seconds earn retries; retries are counted
# over one bucket more, so a retry of the last `window` seconds is never
# forgotten (its bucket may have started up to window + window / _BUCKETS
# ago). Both err on the safe side, which makes the bound exact.
_BUCKETS = 10
_SLOTS = _BUCKETS + 1


class RetryBudget:
    """Allow retries up to ``ratio`` of recent calls plus ``min_per_second``.

    Args:
        ratio: retries allowed per call made in the window (0.2 = 20 %).
        min_per_second: retries always allowed per second of window,
            whatever the traffic.
        window: seconds of history the budget looks at.
        clock: the time source (tests pass a FakeClock).

    At every retry, the retries of the last ``window`` seconds (this one
    included) are at most ``ratio * calls + min_per_second * window``, with
    ``calls`` counted over the same last ``window`` seconds. Hence over any
    span of ``window`` seconds, retries are at most
    ``min_per_second * window`` plus ``ratio`` times the calls made from
    ``window`` seconds before the span to its end. Granularity errs on the
    safe side: a call stops earning retries up to ``window / 10`` before it
    is ``window`` old, and a retry is forgotten up to ``window / 10`` after.
    """

    __slots__ = (
        "_clock",
        "_floor",
        "_idx",
        "_lock",
        "_origin",
        "_requests",
        "_retries",
        "_slot",
        "_tick",
        "_tick_end",
        "_total_requests",
        "_total_retries",
        "min_per_second",
        "ratio",
        "window",
    )

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        window: float = 10.0,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.ratio = check_number(ratio, "ratio", strict=False)
        self.min_per_second = check_number(min_per_second, "min_per_second", strict=False)
        self.window = check_seconds(window, "window")
        # Only now() is read: any object with it will do (as before), not the full Clock protocol.
        if clock is not None and not callable(getattr(clock, "now", None)):
            raise TypeError(f"clock must be a Clock (an object with now()) or None, got {clock!r}")
        self._clock = clock if clock is not None else SYSTEM_CLOCK
        self._floor = self.min_per_second * self.window
        self._tick = self.window / _BUCKETS
        # One slot per bucket, in a ring; the oldest slot's calls are no longer counted.
        self._requests = [0] * _SLOTS
        self._retries = [0] * _SLOTS
        self._total_requests = 0
        self._total_retries = 0
        #: The current bucket's number (buckets are numbered from the budget's creation).
        self._idx = 0
        #: Its slot in the ring (``_idx % _SLOTS``).
        self._slot = 0
        self._origin = self._clock.now()
        self._tick_end = self._origin + self._tick
        # Uncontended under asyncio (one thread), so it costs tens of nanoseconds.
        self._lock = threading.Lock()

    def _rotate(self, now: float) -> None:
        # Bucket numbers come from one multiplication each, not from a running
        # sum of ticks, so that rounding never drifts the buckets' edges.
        target = int((now - self._origin) // self._tick)
        if target <= self._idx:  # rounding at an edge: stay in the current bucket
            self._tick_end = self._origin + (self._idx + 1) * self._tick
            return
        if target - self._idx >= _SLOTS:
            self._requests = [0] * _SLOTS
            self._retries = [0] * _SLOTS
            self._total_requests = 0
            self._total_retries = 0
        else:
            requests = self._requests
            retries = self._retries
            for idx in range(self._idx + 1, target + 1):
                slot = idx % _SLOTS
                # Bucket idx - _BUCKETS becomes the oldest: its calls stop counting.
                self._total_requests -= requests[(idx - _BUCKETS) % _SLOTS]
                requests[(idx - _BUCKETS) % _SLOTS] = 0
                # Bucket idx - _SLOTS leaves the window: its retries stop counting. Its slot is reused.
                self._total_retries -= retries[slot]
                retries[slot] = 0
        self._idx = target
        self._slot = target % _SLOTS
        self._tick_end = self._origin + (target + 1) * self._tick

    def record_request(self) -> None:
        """Count one call (its first attempt): it earns ``ratio`` of a retry."""
        now = self._clock.now()
        # Under the lock: threads (sync Retry) would otherwise lose counts, or
        # add to a bucket that a rotation in another thread has just emptied,
        # and the running total would drift away from the buckets' sum.
        with self._lock:
            if now >= self._tick_end:
                self._rotate(now)
            self._requests[self._slot] += 1
            self._total_requests += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; ``False`` when it is exhausted."""
        now = self._clock.now()
        with self._lock:
            if now >= self._tick_end:
                self._rotate(now)
            if self._total_retries + 1 > self._floor + self.ratio * self._total_requests:
                return False
            self._retries[self._slot] += 1
            self._total_retries += 1
            return True

    @property
    def available(self) -> float:
        """Retries that could be spent now."""
        now = self._clock.now()
        with self._lock:
            if now >= self._tick_end:
                self._rotate(now)
            return max(0.0, self._floor + self.ratio * self._total_requests - self._total_retries)

    def status(self) -> dict[str, Any]:
        """Counts in the current window, JSON-able."""
        avail = self.available
        return {
            "requests": self._total_requests,
            "retries": self._total_retries,
            "available": avail,
            "ratio": self.ratio,
        }

    def __repr__(self) -> str:
        return f"RetryBudget(ratio={self.ratio}, min_per_second={self.min_per_second}, window={self.window})"
