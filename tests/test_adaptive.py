"""AdaptiveThrottle: the SRE-book rejection probability, windowing, outcomes, events."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from resilient import RateLimitedError
from resilient.events import REJECTED
from resilient.testing import FakeClock, recording
from resilient.throttle import AdaptiveThrottle


class Dice:
    """A deterministic random(): returns the queued values, then `default`."""

    def __init__(self, default: float = 0.999) -> None:
        self.values: list[float] = []
        self.default = default
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.values.pop(0) if self.values else self.default


async def ok() -> str:
    return "ok"


async def fail() -> None:
    raise ConnectionError("refused")


@pytest.mark.parametrize(
    ("kwargs", "param", "exc"),
    [
        ({"k": 0.5}, "k", ValueError),
        ({"k": float("nan")}, "k", ValueError),
        ({"k": "2"}, "k", TypeError),
        ({"window": 0}, "window", ValueError),
        ({"window": -3}, "window", ValueError),
        ({"window": float("inf")}, "window", ValueError),
        ({"random": 0.5}, "random", TypeError),
        ({"on": 3}, "on", TypeError),
    ],
)
def test_bad_config(kwargs: dict[str, Any], param: str, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=param):
        AdaptiveThrottle(**kwargs)


async def test_healthy_backend_is_never_throttled(clock: FakeClock) -> None:
    dice = Dice(default=0.0)  # would reject anything with p > 0
    th = AdaptiveThrottle(clock=clock, random=dice)
    call = th(ok)
    for _ in range(1000):
        assert await call() == "ok"
    assert th.requests == 1000
    assert th.accepts == 1000
    assert th.rejection_probability == 0.0
    assert dice.calls == 0  # the dice are not even rolled on the success path


async def test_probability_follows_the_formula(clock: FakeClock) -> None:
    th = AdaptiveThrottle(k=2.0, clock=clock, random=Dice())
    good, bad = th(ok), th(fail)
    for _ in range(10):
        await good()
    for _ in range(90):
        with pytest.raises(ConnectionError):
            await bad()
    assert (th.requests, th.accepts) == (100, 10)
    assert th.rejection_probability == pytest.approx((100 - 2 * 10) / 101)


async def test_rejects_locally_with_event(clock: FakeClock) -> None:
    dice = Dice()
    th = AdaptiveThrottle(k=2.0, clock=clock, random=dice, name="payments")
    bad = th(fail)
    for _ in range(10):
        with pytest.raises(ConnectionError):
            await bad()
    p = th.rejection_probability
    assert p == pytest.approx(10 / 11)
    called = False

    async def spy() -> None:
        nonlocal called
        called = True

    dice.values = [p - 0.01]
    with recording() as rec, pytest.raises(RateLimitedError, match="'payments'") as info:
        await th(spy)()
    assert not called
    assert info.value.policy == "payments"
    assert th.rejected == 1
    assert th.requests == 11  # a local rejection counts as a request
    [event] = rec.of(REJECTED)
    assert event.policy_type == "adaptive_throttle"
    assert event.extras["reason"] == "adaptive_throttle"
    dice.values = [p + 0.01]
    await th(spy)()
    assert called


async def test_backend_sees_about_k_times_what_it_serves(clock: FakeClock) -> None:
    """100 calls/s offered to a backend that serves 20/s: it receives about k * 20/s, not 100/s."""
    import random

    th = AdaptiveThrottle(k=2.0, window=10.0, clock=clock, random=random.Random(3).random)
    served_this_second: dict[int, int] = {}
    sent = served = 0

    async def backend() -> None:
        nonlocal sent, served
        sent += 1
        second = int(clock.now())
        if served_this_second.get(second, 0) >= 20:
            raise ConnectionError("overloaded")
        served_this_second[second] = served_this_second.get(second, 0) + 1
        served += 1

    call = th(backend)
    for i in range(6000):  # 60 simulated seconds
        if i == 3000:  # measure the second half, once the window has settled
            sent = served = 0
        with contextlib.suppress(RateLimitedError, ConnectionError):
            await call()
        clock.advance(0.01)
    assert served == pytest.approx(20 * 30, rel=0.05)
    assert sent / served == pytest.approx(2.0, rel=0.2)  # about k times what it serves
    assert sent < 3000 * 0.6  # instead of all 3000


async def test_window_forgets(clock: FakeClock) -> None:
    th = AdaptiveThrottle(window=10.0, clock=clock, random=Dice())
    for _ in range(20):
        with pytest.raises(ConnectionError):
            await th(fail)()
    assert th.rejection_probability > 0.9
    clock.advance(5)
    assert th.requests == 20
    clock.advance(6)
    assert th.requests == 0
    assert th.rejection_probability == 0.0
    assert await th(ok)() == "ok"


async def test_partial_window_rotation(clock: FakeClock) -> None:
    th = AdaptiveThrottle(window=10.0, clock=clock, random=Dice())
    await th(ok)()
    clock.advance(4)
    await th(ok)()
    await th(ok)()
    clock.advance(6.5)  # the first call fell out, the other two stay
    assert th.requests == 2
    clock.advance(1000)
    assert th.requests == 0


async def test_unhandled_exceptions_count_as_accepted(clock: FakeClock) -> None:
    th = AdaptiveThrottle(on=ConnectionError, clock=clock, random=Dice())

    async def not_found() -> None:
        raise KeyError("404")

    for _ in range(10):
        with pytest.raises(KeyError):
            await th(not_found)()
    assert (th.requests, th.accepts) == (10, 10)


async def test_on_result_flags_refusals(clock: FakeClock) -> None:
    th = AdaptiveThrottle(on_result=lambda status: status == 503, clock=clock, random=Dice())

    async def status() -> int:
        return 503

    assert await th(status)() == 503
    assert (th.requests, th.accepts) == (1, 0)


async def test_cancellation_counts_nothing(clock: FakeClock) -> None:
    th = AdaptiveThrottle(clock=clock)
    task = asyncio.create_task(th(asyncio.sleep)(10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert th.requests == 0


def test_sync(clock: FakeClock) -> None:
    dice = Dice()
    th = AdaptiveThrottle(clock=clock, random=dice)

    def boom() -> None:
        raise OSError("down")

    for _ in range(5):
        with pytest.raises(OSError, match="down"):
            th.run_sync(boom)
    dice.values = [0.0]
    with pytest.raises(RateLimitedError):
        th.run_sync(lambda: 1)
    assert th.run_sync(lambda: 1) == 1
    st = th.status()
    assert st["requests"] == 7
    assert st["accepts"] == 1
    assert st["rejected"] == 1
    assert "AdaptiveThrottle(k=2" in repr(th)
