"""The limit algorithms of :class:`~resilient.concurrency.AdaptiveConcurrency`.

* :class:`Gradient2` (the default, ``algorithm="gradient2"``): latency
  driven, after Netflix concurrency-limits' ``Gradient2Limit``: the limit
  follows the ratio of a long-term latency baseline to the latency now; no
  latency threshold to set.
* :class:`AIMD` (``algorithm="aimd"``): additive increase, multiplicative
  decrease on failures (and, optionally, on calls slower than a threshold).

An algorithm is any object with the :class:`LimitAlgorithm` protocol: one
``update`` per finished call, which gets the current limit and what the call
saw (when it ended, its latency, the calls in flight, whether it failed)
and returns the next limit. :class:`~resilient.concurrency.AdaptiveConcurrency`
keeps the limit between its ``min_limit`` and ``max_limit`` and hands the
slots out; the algorithm only decides. No I/O, no awaits, no lock: it is
called outside every lock, once per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from resilient.validate import check_callable, check_int, check_number, check_seconds

__all__ = ["AIMD", "Gradient2", "LimitAlgorithm"]


@runtime_checkable
class LimitAlgorithm(Protocol):
    """What :class:`~resilient.concurrency.AdaptiveConcurrency` asks of its ``algorithm=``.

    ``update`` is called after every call that an enforcing limiter would
    have run, outside every lock, with:

    * ``limit``: the current limit (a float: small steps add up);
    * ``now``: when the call ended, on the limiter's clock;
    * ``rtt``: the call's latency in seconds (the limiter's clock);
    * ``inflight``: the calls holding a slot as it ended, itself included;
    * ``dropped``: whether it failed (``on`` / ``on_result``).

    It returns the next limit (clamped to ``[min_limit, max_limit]`` by the
    caller; NaN reads ``min_limit``). It must be cheap and must not raise.
    Sync callers may call it from several threads at once: a lost update
    under a race must cost at most one sample, never a broken state. An
    algorithm object keeps state: give each limiter its own.
    """

    def update(self, limit: float, now: float, rtt: float, inflight: int, dropped: bool) -> float:
        """The next limit, after one call."""
        ...


class AIMD:
    """Additive increase, multiplicative decrease (Netflix concurrency-limits' ``AIMDLimit``).

    A call that succeeds while at least half the (whole) limit is in use
    raises the limit by one; a call that fails, or is slower than
    ``latency_threshold``, multiplies it by ``backoff_ratio``; anything else
    leaves it as it is.

    Args:
        backoff_ratio: the factor applied on a drop, in (0, 1).
        latency_threshold: seconds (> 0) above which a successful call also
            counts as a drop; ``None``: only failures do.
    """

    __slots__ = ("backoff_ratio", "latency_threshold")

    def __init__(self, *, backoff_ratio: float = 0.9, latency_threshold: float | None = None) -> None:
        ratio = check_number(backoff_ratio, "backoff_ratio", maximum=1.0)
        if ratio == 1.0:
            raise ValueError(f"backoff_ratio must be a finite number in (0, 1), got {backoff_ratio!r}")
        self.backoff_ratio = ratio
        self.latency_threshold = check_seconds(latency_threshold, "latency_threshold", allow_inf=True, allow_none=True)

    def update(self, limit: float, now: float, rtt: float, inflight: int, dropped: bool) -> float:
        """``limit * backoff_ratio`` after a drop, ``limit + 1`` after a success at half use or more."""
        threshold = self.latency_threshold
        if dropped or (threshold is not None and rtt > threshold):
            return limit * self.backoff_ratio
        if inflight * 2 >= int(limit):
            return limit + 1.0
        return limit

    def __repr__(self) -> str:
        return f"AIMD(backoff_ratio={self.backoff_ratio:g}, latency_threshold={self.latency_threshold})"


class Gradient2:
    """A latency-driven limit (Netflix concurrency-limits' ``Gradient2Limit``; Envoy's gradient controller).

    Calls are grouped in windows of at least ``window`` seconds and
    ``min_samples`` calls. At the end of each window its mean latency (the
    short-term latency) is compared with a long-term baseline, an
    exponentially weighted average of the windows' latencies over about
    ``baseline_window`` seconds::

        gradient = clamp(baseline / latency, 0.5, 1.0)
        target = limit * gradient + queue_size
        limit = limit + smoothing * (target - limit)

    While latency stays at the baseline the limit grows by
    ``smoothing * queue_size`` a window, probing for capacity; once queueing
    makes latency climb above the baseline the gradient pulls it back toward
    ``limit * baseline / latency`` (never below half the limit). No latency threshold is set by hand: the baseline is
    learned. It falls fast (over about ten windows) when latency drops below
    it, since a lower latency is evidence of the unloaded one, and rises only
    slowly, since a higher one may be the queueing the limit must prevent
    (this differs from Netflix's symmetric average, which lets a long
    overload drag the baseline, and then the limit, up). A window in which
    fewer than half the limit's slots were ever in use leaves the limit
    alone (the caller, not the backend, is the bottleneck); failures do not
    move it either (like Netflix's: use :class:`AIMD` where the backend
    signals overload by failing).

    Args:
        smoothing: how far each window moves the limit toward its target, in (0, 1].
        queue_size: the headroom added to ``limit * gradient`` (>= 0), or a
            callable ``(limit) -> float`` (``math.sqrt`` as in Netflix's
            first gradient limit).
        window: the shortest window, in seconds (> 0).
        min_samples: the fewest calls in a window (>= 1); with little traffic
            a window lasts until it has them.
        baseline_window: the horizon of the baseline's average, in seconds
            (> ``window``); Netflix's default is 600 windows of a second.
    """

    __slots__ = (
        "_baseline",
        "_fall",
        "_latency",
        "_n",
        "_peak",
        "_rise",
        "_sum",
        "_window_end",
        "baseline_window",
        "min_samples",
        "queue_size",
        "smoothing",
        "window",
    )

    def __init__(
        self,
        *,
        smoothing: float = 0.2,
        queue_size: float | Callable[[float], float] = 4,
        window: float = 0.1,
        min_samples: int = 10,
        baseline_window: float = 600.0,
    ) -> None:
        self.smoothing = check_number(smoothing, "smoothing", maximum=1.0)
        if callable(queue_size):
            self.queue_size: float | Callable[[float], float] = check_callable(queue_size, "queue_size")
        else:
            self.queue_size = check_number(queue_size, "queue_size", strict=False)
        self.window = check_seconds(window, "window")
        self.min_samples = check_int(min_samples, "min_samples")
        self.baseline_window = check_number(baseline_window, "baseline_window", minimum=self.window, unit="seconds")
        windows = self.baseline_window / self.window
        self._rise = 2.0 / (windows + 1.0)
        self._fall = max(self._rise, 2.0 / 11.0)
        self._baseline = 0.0  # 0: nothing measured yet
        self._latency = 0.0
        self._sum = 0.0
        self._n = 0
        self._peak = 0
        self._window_end = -math.inf

    @property
    def baseline(self) -> float | None:
        """The long-term latency baseline, in seconds (``None`` before the first window)."""
        return self._baseline or None

    @property
    def latency(self) -> float | None:
        """The last window's mean latency, in seconds (``None`` before the first window)."""
        return self._latency or None

    def update(self, limit: float, now: float, rtt: float, inflight: int, dropped: bool) -> float:
        """Add the call to the window; at a window's end, the gradient's new limit."""
        self._sum += rtt
        self._n = n = self._n + 1
        if inflight > self._peak:
            self._peak = inflight
        if now < self._window_end or n < self.min_samples:
            return limit
        return self._close(limit, now, n)

    def _close(self, limit: float, now: float, n: int) -> float:
        latency = self._sum / n
        peak = self._peak
        self._sum = 0.0
        self._n = 0
        self._peak = 0
        self._window_end = now + self.window
        if latency <= 0.0:
            # Calls that took no time (a clock that did not move), or a close raced by another thread: no news.
            return limit
        self._latency = latency
        baseline = self._baseline
        if not baseline:
            baseline = latency
        else:
            baseline += (self._fall if latency < baseline else self._rise) * (latency - baseline)
        self._baseline = baseline
        if peak * 2 < limit:
            return limit
        gradient = baseline / latency
        if gradient < 0.5:
            gradient = 0.5
        elif gradient > 1.0:
            gradient = 1.0
        queue_size = self.queue_size
        headroom = queue_size(limit) if callable(queue_size) else queue_size
        return limit + self.smoothing * (limit * gradient + headroom - limit)

    def __repr__(self) -> str:
        return (
            f"Gradient2(smoothing={self.smoothing:g}, queue_size={self.queue_size!r}, window={self.window:g}, "
            f"min_samples={self.min_samples}, baseline_window={self.baseline_window:g})"
        )
