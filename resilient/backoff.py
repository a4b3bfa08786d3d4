"""Backoff strategies: how long to wait before each retry.

A backoff is a small immutable value. :meth:`Backoff.delays` gives a fresh,
infinite iterator of delays for retries 1, 2, 3... of one call; the stateless
strategies are also plain functions of the retry number
(``exponential(0.1)(3) == 0.4``).

Jitter spreads retries of many clients so that they do not hit a recovering
dependency in lockstep. ``"full"`` and ``"equal"`` are the AWS Architecture
Blog's variants; ``"decorrelated"`` is Polly's ``DecorrelatedJitterBackoffV2``
(no clumping near zero, a monotone mean that follows the exponential curve,
capped by ``max_delay``). Each takes an injectable ``random`` (a callable
returning floats in ``[0, 1)``) so that tests and benchmarks are
deterministic: ``exponential(jitter="full", random=random.Random(7).random)``.
"""

from __future__ import annotations

import math
import random as _random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Literal

from resilient.validate import check_callable, check_number, check_seconds

__all__ = ["Backoff", "Jitter", "constant", "exponential", "linear"]

Jitter = Literal["full", "equal", "decorrelated"]
_JITTERS = ("full", "equal", "decorrelated")
# Polly's constants for DecorrelatedJitterBackoffV2 (see its source for the
# derivation): pFactor smooths the first delay, the scaling factor puts the
# median delays near base, 2*base, 4*base...
_P_FACTOR = 4.0
_RP_SCALING = 1 / 1.4
# The growth per retry that the decorrelated formula has built in (2**t).
_DECORRELATED_FACTOR = 2.0


class Backoff(ABC):
    """A strategy giving the delay before each retry of one call."""

    __slots__ = ()

    @abstractmethod
    def delays(self) -> Iterator[float]:
        """A fresh infinite iterator of delays, in seconds, for retries 1, 2, ..."""

    def __call__(self, retry: int) -> float:
        """The delay before retry number ``retry`` (1-based)."""
        if retry < 1:
            raise ValueError(f"retry must be >= 1, got {retry!r}")
        it = self.delays()
        for _ in range(retry - 1):
            next(it)
        return next(it)


class _Constant(Backoff):
    __slots__ = ("delay",)

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def delays(self) -> Iterator[float]:
        while True:
            yield self.delay

    def __call__(self, retry: int) -> float:
        return self.delay

    def __repr__(self) -> str:
        return f"constant({self.delay})"


class _Linear(Backoff):
    __slots__ = ("max_delay", "start", "step")

    def __init__(self, start: float, step: float, max_delay: float) -> None:
        self.start = start
        self.step = step
        self.max_delay = max_delay

    def delays(self) -> Iterator[float]:
        n = 1
        while True:
            yield self(n)
            n += 1

    def __call__(self, retry: int) -> float:
        return min(self.start + self.step * (retry - 1), self.max_delay)

    def __repr__(self) -> str:
        return f"linear(start={self.start}, step={self.step}, max_delay={self.max_delay})"


class _Exponential(Backoff):
    __slots__ = ("base", "factor", "jitter", "max_delay", "random")

    def __init__(
        self, base: float, factor: float, max_delay: float, jitter: Jitter | None, random: Callable[[], float]
    ) -> None:
        self.base = base
        self.factor = factor
        self.max_delay = max_delay
        self.jitter = jitter
        self.random = random

    def _ceiling(self, retry: int) -> float:
        # Compare exponents rather than computing factor**n, which overflows.
        if self.base == 0:
            return 0.0
        try:
            value = self.base * self.factor ** (retry - 1)
        except OverflowError:
            return self.max_delay
        return min(value, self.max_delay)

    def delays(self) -> Iterator[float]:
        if self.jitter == "decorrelated":
            yield from self._decorrelated()
            return
        n = 1
        while True:
            yield self(n)
            n += 1

    def _decorrelated(self) -> Iterator[float]:
        prev = 0.0
        attempt = 0
        rnd = self.random
        while True:
            t = attempt + rnd()
            try:
                nxt = math.pow(2, t) * math.tanh(math.sqrt(_P_FACTOR * t))
            except OverflowError:
                nxt = math.inf
            delay = (nxt - prev) * _RP_SCALING * self.base
            prev = nxt
            if math.isnan(delay) or delay > self.max_delay:
                delay = self.max_delay
            yield max(delay, 0.0)
            attempt += 1

    def __call__(self, retry: int) -> float:
        if self.jitter == "decorrelated":
            return super().__call__(retry)
        ceiling = self._ceiling(retry)
        if self.jitter is None:
            return ceiling
        if self.jitter == "full":
            return ceiling * self.random()
        half = ceiling / 2
        return half + half * self.random()

    def __repr__(self) -> str:
        return (
            f"exponential(base={self.base}, factor={self.factor}, max_delay={self.max_delay}, jitter={self.jitter!r})"
        )


def constant(delay: float) -> Backoff:
    """The same ``delay`` (seconds) before every retry."""
    return _Constant(check_seconds(delay, "delay", allow_zero=True))


def linear(start: float, step: float | None = None, *, max_delay: float = 30.0) -> Backoff:
    """``start``, ``start + step``, ``start + 2*step``... capped at ``max_delay``.

    ``step`` defaults to ``start``.
    """
    start = check_seconds(start, "start", allow_zero=True)
    step = start if step is None else check_seconds(step, "step", allow_zero=True)
    return _Linear(start, step, check_seconds(max_delay, "max_delay", allow_zero=True))


def exponential(
    base: float = 0.1,
    factor: float = 2.0,
    *,
    max_delay: float = 30.0,
    jitter: Jitter | None = "full",
    random: Callable[[], float] | None = None,
) -> Backoff:
    """``base * factor**(n-1)`` before retry ``n``, capped at ``max_delay``, with jitter.

    Args:
        base: the first delay in seconds (for ``"decorrelated"``: the median
            first delay).
        factor: growth per retry, ``>= 1``. ``"decorrelated"`` jitter grows
            by 2 per retry by construction, so it takes only ``factor=2``.
        max_delay: upper bound of any delay.
        jitter: ``"full"`` (uniform in ``[0, d]``, the default), ``"equal"``
            (uniform in ``[d/2, d]``), ``"decorrelated"`` (Polly's V2) or
            ``None``.
        random: source of uniform floats in ``[0, 1)``.

    Raises:
        TypeError: a value of the wrong type (``factor="2"``).
        ValueError: a bad value, or ``jitter="decorrelated"`` with a
            ``factor`` other than 2 (the formula would ignore it).
    """
    base = check_seconds(base, "base", allow_zero=True)
    factor = check_number(factor, "factor", minimum=1.0, strict=False)
    max_delay = check_seconds(max_delay, "max_delay", allow_zero=True)
    if jitter is not None and jitter not in _JITTERS:
        raise ValueError(f"jitter must be one of {_JITTERS} or None, got {jitter!r}")
    if jitter == "decorrelated" and factor != _DECORRELATED_FACTOR:
        # Polly's formula is built on powers of 2 and does not generalise: with
        # a factor near 1 its tanh term would make later delays shrink. Refuse
        # rather than silently ignore the factor.
        raise ValueError(
            f"factor must be 2 (its default) with jitter='decorrelated', which doubles each retry "
            f"by construction, got factor={factor!r}; use jitter='full' or 'equal' for another factor"
        )
    random = check_callable(random, "random", "a callable returning floats in [0, 1)", allow_none=True)
    return _Exponential(base, factor, max_delay, jitter, _random.random if random is None else random)
