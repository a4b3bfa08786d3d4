"""The circuit's states and the immutable values the breaker and its store exchange.

A :class:`BreakerSnapshot` is the whole shared state of a circuit at one
moment, minus the counters: which state it is in, since when, until when,
and an ``epoch`` that changes on every transition. The store replaces the
snapshot on each transition and never mutates one, so the breaker can read
it without a lock and use it as the *permit* of the call it admits: an
outcome whose permit belongs to an older epoch is stale and is not counted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from resilient.clock import Clock
from resilient.validate import check_number, check_seconds

__all__ = [
    "BreakDuration",
    "BreakerConfig",
    "BreakerMetrics",
    "BreakerSnapshot",
    "CircuitState",
    "GrowingBreak",
    "StateChange",
]

logger = logging.getLogger("resilient.breaker")


class CircuitState(StrEnum):
    """The state of a circuit breaker."""

    #: Calls pass; outcomes are counted.
    CLOSED = "closed"
    #: Calls fail fast with :class:`~resilient.CircuitOpenError` until the break ends.
    OPEN = "open"
    #: A few probe calls pass; their outcomes close or reopen the circuit.
    HALF_OPEN = "half_open"
    #: Held open by :meth:`CircuitBreaker.isolate` until :meth:`CircuitBreaker.reset`.
    ISOLATED = "isolated"


#: ``(failed_probes, last_break_duration) -> seconds``: see :class:`BreakerConfig`.
BreakDuration = Callable[[int, float], float]


class GrowingBreak:
    """A break duration that starts short and grows only while probes keep failing.

    The first opening breaks for ``first`` seconds; each failed probe
    multiplies the break by ``factor``, up to ``maximum``; a successful
    probe closes the circuit and the next opening starts from ``first``
    again. A short outage then costs a short break (a fixed 5 s break
    outlives a 2 s outage), and a long one costs a probe every ``maximum``
    seconds. Pass it as ``CircuitBreaker(break_duration=GrowingBreak(...))``.

    Args:
        first: the first break, seconds (> 0).
        factor: growth per failed probe (>= 1).
        maximum: the longest break, seconds (>= ``first``).

    Raises:
        ValueError, TypeError: an option out of range, naming it.
    """

    __slots__ = ("factor", "first", "maximum")

    def __init__(self, first: float = 0.5, *, factor: float = 2.0, maximum: float = 30.0) -> None:
        self.first = check_seconds(first, "first")
        self.factor = check_number(factor, "factor", minimum=1.0, strict=False)
        self.maximum = check_seconds(maximum, "maximum")
        if self.maximum < self.first:
            raise ValueError(f"maximum must be >= first ({self.first:g} s), got {maximum!r}")

    def __call__(self, failed_probes: int, last: float) -> float:
        """The break after ``failed_probes`` failed probes (``last`` is unused)."""
        if failed_probes <= 0:
            return self.first
        # Past ~64 doublings any factor > 1 is beyond every sane maximum: avoid float overflow.
        return min(self.maximum, self.first * self.factor ** min(failed_probes, 64))

    def __repr__(self) -> str:
        return f"GrowingBreak({self.first:g}, factor={self.factor:g}, maximum={self.maximum:g})"


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """The state of a circuit at one moment; immutable, replaced on every transition.

    It doubles as the *permit* of an admitted call: the breaker hands the
    snapshot current at admission back to the store with the outcome, and the
    store ignores outcomes whose ``epoch`` is not the current one (the call
    was admitted before the last transition, so it says nothing about now).

    Times are on the breaker's clock (the ``now`` values the breaker passes,
    or ``config.clock.now()``). A store that keeps time elsewhere (Redis
    ``TIME``) converts: it computes remaining durations there and adds them to
    the local ``now``.
    """

    #: The state.
    state: CircuitState
    #: Changes on every transition (a counter; only equality matters).
    epoch: int
    #: When this state began.
    since: float
    #: OPEN: when a probe may be admitted. HALF_OPEN: when probes still in
    #: flight are given up and new ones admitted (a hung probe must not hold
    #: the circuit half-open forever). CLOSED and ISOLATED: ``inf``.
    until: float = math.inf
    #: Consecutive failed probes since the circuit last opened from CLOSED
    #: (0 on the first opening). Fed to a break-duration callable.
    failed_probes: int = 0
    #: The break duration of the current (or last) opening, in seconds; 0.0 if none yet.
    break_duration: float = 0.0
    #: The state before this one, ``None`` for the initial snapshot.
    previous: CircuitState | None = None
    #: Whether :meth:`CircuitBreaker.isolate`/:meth:`~CircuitBreaker.reset` made this transition.
    manual: bool = False

    def retry_after(self, now: float) -> float | None:
        """Seconds from ``now`` until a call may be admitted, ``None`` if unknown (isolated)."""
        if self.state is CircuitState.CLOSED:
            return 0.0
        if math.isinf(self.until):
            return None
        return max(0.0, self.until - now)


@dataclass(frozen=True, slots=True)
class BreakerMetrics:
    """Counters of a circuit, as :attr:`CircuitBreaker.metrics` reports them."""

    #: The state.
    state: CircuitState
    #: Calls counted: in the sliding window (ratio mode) or since the circuit
    #: last closed (consecutive mode).
    calls: int
    #: Failures among ``calls``.
    failures: int
    #: ``failures / calls`` (0.0 with no calls).
    failure_ratio: float
    #: Failures in a row (reset by any success).
    consecutive_failures: int
    #: Half-open probes running now.
    probes_in_flight: int
    #: Successful probes in the current half-open state.
    probe_successes: int
    #: Seconds until a call may be admitted (0.0 when closed, ``None`` when isolated).
    retry_after: float | None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "state": self.state.value,
            "calls": self.calls,
            "failures": self.failures,
            "failure_ratio": self.failure_ratio,
            "consecutive_failures": self.consecutive_failures,
            "probes_in_flight": self.probes_in_flight,
            "probe_successes": self.probe_successes,
            "retry_after": self.retry_after,
        }


@dataclass(frozen=True, slots=True)
class StateChange:
    """What ``on_open``/``on_close``/``on_half_open`` listeners receive."""

    #: The breaker's name.
    name: str | None
    #: The state left.
    previous: CircuitState | None
    #: The state entered.
    state: CircuitState
    #: The snapshot the transition produced.
    snapshot: BreakerSnapshot
    #: The failure that caused the transition, if it was an exception.
    exception: BaseException | None = None


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """A breaker's validated options, handed to its store by :meth:`BreakerStore.bind`.

    Ratio mode (``consecutive_failures is None``): the circuit opens when, in
    the sliding window of ``sampling_duration`` seconds, at least
    ``minimum_throughput`` calls were counted and ``failures / calls >=
    failure_ratio``. Consecutive mode: it opens after ``consecutive_failures``
    failures in a row. Both (``both_thresholds``): whichever is reached first
    opens it, so a store must check the run of consecutive failures whenever
    ``consecutive_failures`` is set and the window whenever
    :attr:`ratio_mode` is true.
    """

    #: The breaker's name (a remote store may derive its key from it).
    name: str | None
    #: Failure ratio that opens the circuit, in (0, 1].
    failure_ratio: float
    #: Length of the sliding window, seconds.
    sampling_duration: float
    #: Calls the window must hold before the circuit may open.
    minimum_throughput: int
    #: Set: consecutive mode with this threshold.
    consecutive_failures: int | None
    #: Calls at least this long count as failures (``None``: off).
    slow_call_duration: float | None
    #: Seconds, or ``(failed_probes, last_duration) -> seconds``.
    break_duration: float | BreakDuration
    #: Probes admitted concurrently while half-open.
    half_open_max_calls: int
    #: Successful probes needed to close.
    half_open_successes: int
    #: The breaker's clock.
    clock: Clock
    #: Both the ratio window and the run of consecutive failures open the circuit.
    both_thresholds: bool = False

    @property
    def ratio_mode(self) -> bool:
        """Whether the failure-ratio window counts (alone, or next to consecutive failures)."""
        return self.consecutive_failures is None or self.both_thresholds

    def break_duration_for(self, failed_probes: int, last: float) -> float:
        """The break duration of an opening after ``failed_probes`` failed probes.

        A callable that raises or returns something that is not a finite
        number >= 0 is logged and replaced by ``last`` (or 5 s the first time):
        a broken option must not keep the circuit open forever or not at all.
        """
        duration = self.break_duration
        if not callable(duration):
            return duration
        try:
            value = duration(failed_probes, last)
        except Exception:
            logger.exception("resilient: break_duration callable raised; using %.3g s", last or 5.0)
            return last or 5.0
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            logger.error("resilient: break_duration returned %r; using %.3g s", value, last or 5.0)
            return last or 5.0
        return float(value)
