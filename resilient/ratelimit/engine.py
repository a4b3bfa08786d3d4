"""The rate limiter's options and answers: :class:`RateConfig`, :class:`RateDecision`, the errors.

No state and no I/O here: the bucket lives in a store (see
:mod:`resilient.ratelimit.store`), the waiting and the events in the
policy (:mod:`resilient.ratelimit.limiter`).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from resilient.clock import Clock
from resilient.errors import ResilienceError
from resilient.events import Listener
from resilient.validate import check_int, check_number

__all__ = ["EPS", "Mode", "RateConfig", "RateDecision", "RateLimitKeyError"]

#: Float slack, in seconds, so that a bucket refilled exactly on time is not refused by rounding.
EPS = 1e-9

Mode = Literal["wait", "reject"]


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


class RateConfig:
    """A limiter's validated bucket, handed to its store by :meth:`RateStore.bind`.

    The bucket admits ``rate`` tokens per ``per`` seconds with bursts of up
    to ``burst``; in GCRA terms one token is ``interval`` seconds of the
    bucket's virtual timeline and the bucket is ``tau`` seconds deep.
    """

    __slots__ = ("burst", "clock", "interval", "listeners", "name", "per", "rate", "tau")

    def __init__(
        self,
        rate: Any,
        per: Any,
        burst: Any,
        *,
        name: str | None,
        clock: Clock,
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        #: Tokens added per ``per`` seconds.
        self.rate: float = check_number(rate, "rate")
        #: The period of ``rate``, in seconds.
        self.per: float = check_number(per, "per", unit="seconds")
        if burst is None:
            burst = max(1, int(self.rate))
        #: The bucket's size.
        self.burst: int = check_int(burst, "burst")
        #: The limiter's name (a remote store derives its key from it).
        self.name = name
        #: The limiter's clock.
        self.clock = clock
        #: The limiter's own listeners (a remote store reports its outages to them too).
        self.listeners = listeners
        #: Seconds per token.
        self.interval: float = self.per / self.rate
        #: The bucket's depth in seconds.
        self.tau: float = self.burst * self.interval

    def cost(self, tokens: Any) -> float:
        """``tokens`` as seconds of the bucket's timeline.

        Raises:
            TypeError: ``tokens`` is not an int.
            ValueError: ``tokens`` is not between 1 and ``burst``.
        """
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            raise TypeError(f"tokens must be an int between 1 and burst ({self.burst}), got {tokens!r}")
        if not 1 <= tokens <= self.burst:
            raise ValueError(f"tokens must be between 1 and burst ({self.burst}), got {tokens!r}")
        return tokens * self.interval

    def decision(self, wait: float, full_in: float) -> RateDecision:
        """The :class:`RateDecision` of a step that returned ``wait`` and left the bucket full in ``full_in`` s."""
        if full_in < 0.0:
            full_in = 0.0
        left = int((self.tau - full_in) / self.interval + EPS)
        return RateDecision(wait == 0.0, wait, self.burst, max(0, min(self.burst, left)), full_in)

    def tokens(self, full_in: float) -> float:
        """Tokens in a bucket that is full again in ``full_in`` seconds (fractional)."""
        return max(0.0, (self.tau - max(0.0, full_in)) / self.interval)

    def __repr__(self) -> str:
        return f"RateConfig(rate={self.rate:g}, per={self.per:g}, burst={self.burst}, name={self.name!r})"
