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

import math
import threading
from typing import Any

from resilient.clock import SYSTEM_CLOCK, Clock

__all__ = ["RetryBudget"]

_BUCKETS = 10


def _positive(value: float, param: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or math.isinf(value):
        raise ValueError(f"{param} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{param} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


class RetryBudget:
    """Allow retries up to ``ratio`` of recent calls plus ``min_per_second``.

    Args:
        ratio: retries allowed per call made in the window (0.2 = 20 %).
        min_per_second: retries always allowed per second of window,
            whatever the traffic.
        window: seconds of history the budget looks at.
        clock: the time source (tests pass a FakeClock).

    Over any ``window``, retries are bounded by
    ``ratio * calls + min_per_second * window``.
    """

    __slots__ = (
        "_clock",
        "_floor",
        "_idx",
        "_lock",
        "_requests",
        "_retries",
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
        self.ratio = _positive(ratio, "ratio", allow_zero=True)
        self.min_per_second = _positive(min_per_second, "min_per_second", allow_zero=True)
        self.window = _positive(window, "window")
        self._clock = clock if clock is not None else SYSTEM_CLOCK
        self._floor = self.min_per_second * self.window
        self._tick = self.window / _BUCKETS
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._total_requests = 0
        self._total_retries = 0
        self._idx = 0
        self._tick_end = self._clock.now() + self._tick
        # Uncontended under asyncio (one thread), so it costs tens of nanoseconds.
        self._lock = threading.Lock()

    def _rotate(self, now: float) -> None:
        steps = min(_BUCKETS, int((now - self._tick_end) // self._tick) + 1)
        for _ in range(steps):
            self._idx = (self._idx + 1) % _BUCKETS
            self._total_requests -= self._requests[self._idx]
            self._total_retries -= self._retries[self._idx]
            self._requests[self._idx] = 0
            self._retries[self._idx] = 0
        self._tick_end += self._tick * (int((now - self._tick_end) // self._tick) + 1)

    def record_request(self) -> None:
        """Count one call (its first attempt): it earns ``ratio`` of a retry."""
        now = self._clock.now()
        # Under the lock: threads (sync Retry) would otherwise lose counts, or
        # add to a bucket that a rotation in another thread has just emptied,
        # and the running total would drift away from the buckets' sum.
        with self._lock:
            if now >= self._tick_end:
                self._rotate(now)
            self._requests[self._idx] += 1
            self._total_requests += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; ``False`` when it is exhausted."""
        now = self._clock.now()
        with self._lock:
            if now >= self._tick_end:
                self._rotate(now)
            if self._total_retries + 1 > self._floor + self.ratio * self._total_requests:
                return False
            self._retries[self._idx] += 1
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
