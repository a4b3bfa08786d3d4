"""Two counts over a sliding window: the one engine of the retry budget and the adaptive throttle.

:class:`~resilient.RetryBudget` counts calls and retries, and
:class:`~resilient.AdaptiveThrottle` requests and accepts, over the last
``window`` seconds. Both keep the window in :data:`BUCKETS` buckets of
``window / BUCKETS`` seconds in a ring, with a running total per count, so
that a decision reads two integers and a rotation costs one pass over the
buckets that expired.
"""

from __future__ import annotations

__all__ = ["BUCKETS", "PairWindow"]

#: Buckets per window: the window's edge is exact to ``window / BUCKETS``.
BUCKETS = 10
# One slot more than buckets, so that a count kept one bucket longer (``lag``) has room.
_SLOTS = BUCKETS + 1


class PairWindow:
    """Counts :attr:`first` and :attr:`second` over the last :data:`BUCKETS` buckets (the current one included).

    ``lag``: :attr:`second` is kept one bucket longer (over ``BUCKETS + 1``
    buckets), so that something counted in the last ``window`` seconds is
    never forgotten early (the retry budget's retries: its bound is exact
    that way).

    No lock and no clock of its own: the owner reads the time, holds its
    lock around :meth:`advance` and :meth:`add`, and its fast path reads
    :attr:`tick_end`, :attr:`first` and :attr:`second` without one.
    Buckets are numbered from ``now`` at construction; a bucket's number
    comes from one multiplication, never from a running sum of ticks, so
    rounding never drifts the buckets' edges.
    """

    __slots__ = ("_firsts", "_idx", "_lag", "_origin", "_seconds", "_slot", "_tick", "first", "second", "tick_end")

    def __init__(self, window: float, now: float, *, lag: bool = False) -> None:
        self._tick = window / BUCKETS
        self._lag = 1 if lag else 0
        self._firsts = [0] * _SLOTS
        self._seconds = [0] * _SLOTS
        #: The first count's total over the window.
        self.first = 0
        #: The second count's total over the window (one bucket more with ``lag``).
        self.second = 0
        # The current bucket's number, and its slot in the ring (``_idx % _SLOTS``).
        self._idx = 0
        self._slot = 0
        self._origin = now
        #: When the current bucket ends: :meth:`advance` is due from then.
        self.tick_end = now + self._tick

    def advance(self, now: float) -> None:
        """Make ``now``'s bucket the current one, dropping the counts that left the window."""
        target = int((now - self._origin) // self._tick)
        if target <= self._idx:  # rounding at an edge: stay in the current bucket
            self.tick_end = self._origin + (self._idx + 1) * self._tick
            return
        if target - self._idx >= _SLOTS:
            self._firsts = [0] * _SLOTS
            self._seconds = [0] * _SLOTS
            self.first = self.second = 0
        else:
            firsts, seconds, lag = self._firsts, self._seconds, self._lag
            for idx in range(self._idx + 1, target + 1):
                # Bucket idx - BUCKETS leaves the window (idx - BUCKETS - 1 for a lagging count).
                old = (idx - BUCKETS) % _SLOTS
                self.first -= firsts[old]
                firsts[old] = 0
                old = (idx - BUCKETS - lag) % _SLOTS
                self.second -= seconds[old]
                seconds[old] = 0
        self._idx = target
        self._slot = target % _SLOTS
        self.tick_end = self._origin + (target + 1) * self._tick

    def add(self, first: int, second: int) -> None:
        """Count ``first`` and ``second`` more in the current bucket (as of the last :meth:`advance`)."""
        slot = self._slot
        self._firsts[slot] += first
        self.first += first
        self._seconds[slot] += second
        self.second += second

    def count_first(self, now: float) -> None:
        """Count one more of the first kind at ``now``: the budget's step on every call, so one method, whole."""
        if now >= self.tick_end:
            self.advance(now)
        self._firsts[self._slot] += 1
        self.first += 1
