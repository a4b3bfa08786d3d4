"""The limit algorithms of :class:`~resilient.concurrency.AdaptiveConcurrency`.

An algorithm is any object with the :class:`LimitAlgorithm` protocol: one
``update`` per finished call, which gets the current limit and what the call
saw (its latency, the calls in flight when it started, whether it failed)
and returns the next limit. :class:`~resilient.concurrency.AdaptiveConcurrency`
keeps the limit between its ``min_limit`` and ``max_limit`` and hands the
slots out; the algorithm only decides. No I/O, no awaits, no lock: it is
called outside every lock, once per call.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from resilient.validate import check_number, check_seconds

__all__ = ["AIMD", "LimitAlgorithm"]


@runtime_checkable
class LimitAlgorithm(Protocol):
    """What :class:`~resilient.concurrency.AdaptiveConcurrency` asks of its ``algorithm=``.

    ``update`` is called after every call that an enforcing limiter would
    have run, outside every lock, with:

    * ``limit``: the current limit (a float: small steps add up);
    * ``rtt``: the call's latency in seconds (the limiter's clock);
    * ``inflight``: the calls holding a slot as it ended, itself included;
    * ``dropped``: whether it failed (``on`` / ``on_result``).

    It returns the next limit (clamped to ``[min_limit, max_limit]`` by the
    caller; NaN reads ``min_limit``). It must be cheap and must not raise.
    Sync callers may call it from several threads at once: a lost update
    under a race must cost at most one sample, never a broken state.
    """

    def update(self, limit: float, rtt: float, inflight: int, dropped: bool) -> float:
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

    def update(self, limit: float, rtt: float, inflight: int, dropped: bool) -> float:
        """``limit * backoff_ratio`` after a drop, ``limit + 1`` after a success at half use or more."""
        threshold = self.latency_threshold
        if dropped or (threshold is not None and rtt > threshold):
            return limit * self.backoff_ratio
        if inflight * 2 >= int(limit):
            return limit + 1.0
        return limit

    def __repr__(self) -> str:
        return f"AIMD(backoff_ratio={self.backoff_ratio:g}, latency_threshold={self.latency_threshold})"
