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
from resilient.window import PairWindow

__all__ = ["RetryBudget"]

# Calls are counted over the window's last BUCKETS buckets (the current one
# included), so only calls of the last `window` seconds earn retries; retries
# are counted over one bucket more (lag), so a retry of the last `window`
# seconds is never forgotten (its bucket may have started up to
# window + window / BUCKETS ago). Both err on the safe side, which makes the
# bound exact.


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

    __slots__ = ("_clock", "_floor", "_lock", "_window", "min_per_second", "ratio", "window")

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
        # Calls in `first`, retries in `second` (kept one bucket longer).
        self._window = PairWindow(self.window, self._clock.now(), lag=True)
        # Uncontended under asyncio (one thread), so it costs tens of nanoseconds.
        self._lock = threading.Lock()

    def record_request(self) -> None:
        """Count one call (its first attempt): it earns ``ratio`` of a retry."""
        now = self._clock.now()
        # Under the lock: threads (sync Retry) would otherwise lose counts, or
        # add to a bucket that a rotation in another thread has just emptied,
        # and the running total would drift away from the buckets' sum.
        with self._lock:
            self._window.count_first(now)

    def try_spend(self) -> bool:
        """Take one retry from the budget; ``False`` when it is exhausted."""
        now = self._clock.now()
        with self._lock:
            if self._left(now) < 1:
                return False
            self._window.add(0, 1)  # _left() has advanced the window to now
            return True

    @property
    def available(self) -> float:
        """Retries that could be spent now."""
        now = self._clock.now()
        with self._lock:
            return max(0.0, self._left(now))

    def _left(self, now: float) -> float:
        """Retries left at ``now`` (fractional, negative once overspent); called under the lock."""
        window = self._window
        if now >= window.tick_end:
            window.advance(now)
        return self._floor + self.ratio * window.first - window.second

    def status(self) -> dict[str, Any]:
        """Counts in the current window, JSON-able."""
        avail = self.available
        return {
            "requests": self._window.first,
            "retries": self._window.second,
            "available": avail,
            "ratio": self.ratio,
        }

    def __repr__(self) -> str:
        return f"RetryBudget(ratio={self.ratio}, min_per_second={self.min_per_second}, window={self.window})"
