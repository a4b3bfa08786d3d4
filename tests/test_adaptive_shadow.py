"""Shadow mode (``enforce=False``) of AdaptiveThrottle."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from resilient import RateLimitedError
from resilient.events import REJECTED, WOULD_REJECT
from resilient.testing import FakeClock, recording
from resilient.throttle import AdaptiveThrottle


class Refused(Exception):
    pass


def _dice(seed: int) -> Callable[[], float]:
    values = itertools.cycle([((seed * 7919 + i * 104729) % 1000) / 1000 for i in range(97)])
    return lambda: next(values)


def _pattern() -> list[bool]:
    """Whether the backend refuses the i-th call it gets: a brownout, then recovery."""
    return [i % 5 != 0 for i in range(60)] + [False] * 40


def _drive(th: AdaptiveThrottle, clock: FakeClock, refuses: list[bool]) -> list[bool]:
    """Call ``th`` once per entry; whether the throttle rejected (or, in shadow mode, would have)."""
    out = []

    for refuse in refuses:
        before = th.rejected + th.would_reject

        @th
        def call(refuse: bool = refuse) -> str:
            if refuse:
                raise Refused
            return "ok"

        with contextlib.suppress(Refused, RateLimitedError):
            call()
        out.append(th.rejected + th.would_reject > before)
        clock.advance(0.5)
    return out


def test_shadow_throttle_decides_call_by_call_as_an_enforcing_twin() -> None:
    c1, c2 = FakeClock(), FakeClock()
    enforcing = AdaptiveThrottle(k=1.5, window=20, clock=c1, random=_dice(3))
    shadow = AdaptiveThrottle(k=1.5, window=20, clock=c2, random=_dice(3), enforce=False)
    rejected = _drive(enforcing, c1, _pattern())
    with recording() as rec:
        would = _drive(shadow, c2, _pattern())
    assert rejected == would
    assert enforcing.rejected == shadow.would_reject > 5
    assert shadow.rejected == 0
    assert rec.names().count(WOULD_REJECT) == shadow.would_reject
    assert REJECTED not in rec.names()
    assert (shadow.requests, shadow.accepts) == (enforcing.requests, enforcing.accepts)
    assert shadow.rejection_probability == enforcing.rejection_probability


async def test_shadow_lets_the_call_through_with_the_error_it_would_have_raised() -> None:
    clock = FakeClock()
    th = AdaptiveThrottle(k=1, window=10, clock=clock, random=lambda: 0.0, name="api", enforce=False)
    calls = []

    @th
    async def call(fail: bool) -> str:
        calls.append(fail)
        if fail:
            raise Refused
        return "ok"

    with pytest.raises(Refused):
        await call(True)  # the first refusal: the next call would be throttled with p = 1/2
    with recording() as rec:
        assert await call(False) == "ok"  # would be throttled: runs, and the caller sees its result
    assert calls == [True, False]
    assert th.would_reject == 1
    event = rec.events[0]
    assert event.name == WOULD_REJECT
    assert event.policy == "api"
    assert event.exception is not None
    assert event.exception.endswith("RateLimitedError")
    assert event.extras["reason"] == "adaptive_throttle"
    assert event.extras["requests"] == 1
    assert event.extras["accepts"] == 0
    # Counted as the enforcing throttle would: one more request, no accept (its success is ignored).
    assert (th.requests, th.accepts) == (2, 0)
    assert th.status()["would_reject"] == 1
    assert th.status()["enforcing"] is False


def test_enforce_callable_is_read_only_when_the_dice_say_reject() -> None:
    reads: list[int] = []

    def switch() -> bool:
        reads.append(1)
        return False

    th = AdaptiveThrottle(k=1, window=10, clock=FakeClock(), random=lambda: 0.99, enforce=switch)

    @th
    def call(fail: bool) -> None:
        if fail:
            raise Refused

    for _ in range(20):
        call(False)
    with pytest.raises(Refused):
        call(True)
    call(False)  # dice 0.99 >= p: admitted, the switch is not read
    assert reads == []


@pytest.mark.parametrize("bad", ["off", 0, None])
def test_enforce_is_validated(bad: Any) -> None:
    with pytest.raises(TypeError, match="enforce"):
        AdaptiveThrottle(enforce=bad)
