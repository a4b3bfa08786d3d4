"""RetryBudget: the bound on retries, the floor, the window, sharing, Retry integration."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient import Retry, RetryBudget, constant
from resilient.events import BUDGET_EXHAUSTED, RETRY
from resilient.testing import FakeClock, recording


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": float("nan")}, "ratio"),
        ({"ratio": float("inf")}, "ratio"),
        ({"min_per_second": -1}, "min_per_second"),
        ({"window": 0}, "window"),
        ({"window": -5}, "window"),
    ],
)
def test_bad_config_names_the_parameter(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ValueError, match=param):
        RetryBudget(**kwargs)


def test_a_value_of_the_wrong_type_is_a_type_error_like_everywhere_else() -> None:
    # It was a ValueError here alone (issue 15: one error type per kind of mistake).
    with pytest.raises(TypeError, match=r"ratio must be a finite number >= 0, got '0.2'"):
        RetryBudget(ratio="0.2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clock must be a Clock"):
        RetryBudget(clock=3)  # type: ignore[arg-type]


def test_floor_alone(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=2, window=5, clock=clock)
    assert budget.available == 10
    assert sum(budget.try_spend() for _ in range(20)) == 10
    assert not budget.try_spend()


def test_ratio_alone(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.25, min_per_second=0, window=10, clock=clock)
    assert not budget.try_spend()
    for _ in range(8):
        budget.record_request()
    assert budget.available == pytest.approx(2)
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]
    st = budget.status()
    assert (st["requests"], st["retries"], st["available"], st["ratio"]) == (8, 2, 0.0, 0.25)
    assert "ratio=0.25" in repr(budget)


def test_window_forgets_requests_and_retries(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0, window=10, clock=clock)
    for _ in range(10):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(10)) == 5
    clock.advance(5)
    assert not budget.try_spend()
    clock.advance(5.5)  # the calls above have left the window
    assert budget.status()["requests"] == 0
    # Retries are forgotten one bucket later, so that none of the last 10 s ever is.
    assert budget.status()["retries"] == 5
    clock.advance(0.5)
    assert budget.status()["retries"] == 0
    assert not budget.try_spend()
    budget.record_request()
    budget.record_request()
    assert budget.try_spend()


def test_window_slides_bucket_by_bucket(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0, window=10, clock=clock)
    budget.record_request()  # t=0
    clock.advance(5)
    budget.record_request()  # t=5
    clock.advance(5.5)  # t=10.5: the first left, the second stays
    assert budget.status()["requests"] == 1
    clock.advance(1000)
    assert budget.status()["requests"] == 0


async def test_retry_storm_is_bounded_by_the_budget(clock: FakeClock) -> None:
    """1000 calls to a dead dependency with 3 attempts each: at most ratio*1000 + floor retries."""
    ratio, min_per_second, window = 0.2, 10.0, 10.0
    budget = RetryBudget(ratio=ratio, min_per_second=min_per_second, window=window, clock=clock)
    calls = 0

    async def dead() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    guarded = Retry(3, backoff=constant(0), budget=budget, clock=clock)(dead)
    with recording() as rec:
        results = await asyncio.gather(*(guarded() for _ in range(1000)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    retries = calls - 1000
    bound = ratio * 1000 + min_per_second * window
    assert retries <= bound
    assert retries >= bound - 1  # the budget is actually used, not just refused
    assert len(rec.of(RETRY)) == retries
    assert len(rec.of(BUDGET_EXHAUSTED)) > 0
    # Without a budget the same storm makes 2000 retries.
    calls = 0
    await asyncio.gather(*(Retry(3, backoff=constant(0))(dead)() for _ in range(1000)), return_exceptions=True)
    assert calls == 3000


async def test_storm_spread_over_time_stays_bounded_per_window(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.1, min_per_second=1, window=10, clock=clock)
    calls = 0

    async def dead() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    guarded = Retry(5, backoff=constant(0), budget=budget, clock=clock)(dead)
    for _ in range(3000):  # 300 simulated seconds, 10 calls per second
        with pytest.raises(ConnectionError):
            await guarded()
        clock.advance(0.1)
    retries = calls - 3000
    windows = 300 / 10
    # Per window: 10% of 100 calls + 10 floor = 20 retries; allow one bucket of slack per window.
    assert retries <= windows * (0.1 * 100 + 1 * 10) * 1.1 + 20
    assert retries >= windows * 15


async def test_exhausted_budget_reraises_with_a_note(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0, min_per_second=0, window=1, clock=clock)

    @Retry(3, backoff=constant(0), budget=budget, clock=clock, name="payments")
    async def dead() -> None:
        raise ConnectionError("down")

    with recording() as rec, pytest.raises(ConnectionError) as info:
        await dead()
    assert any("retry budget is spent" in note for note in info.value.__notes__)
    [event] = rec.of(BUDGET_EXHAUSTED)
    assert event.policy == "payments"


async def test_exhausted_budget_returns_the_last_result(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0, min_per_second=0, window=1, clock=clock)
    calls = 0

    @Retry(3, backoff=constant(0), on_result=lambda r: r == 503, budget=budget, clock=clock)
    async def flaky() -> int:
        nonlocal calls
        calls += 1
        return 503

    assert await flaky() == 503
    assert calls == 1


async def test_budget_spent_only_when_a_retry_would_happen(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0, min_per_second=1, window=3, clock=clock)  # 3 retries

    @Retry(2, backoff=constant(0), budget=budget, clock=clock)
    async def dead() -> None:
        raise ConnectionError("down")

    for _ in range(3):
        with pytest.raises(ConnectionError):
            await dead()
    # Three calls, one retry each: the attempts limit ended them, not the budget.
    assert budget.status()["retries"] == 3
    assert budget.available == 0

    async def fine() -> int:
        return 1

    assert await Retry(3, budget=budget, clock=clock)(fine)() == 1
    assert budget.status()["retries"] == 3  # success spends nothing


async def test_one_budget_shared_by_several_retries(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0, min_per_second=1, window=4, clock=clock)  # 4 retries in all
    calls = {"a": 0, "b": 0}

    def dead(tag: str) -> Any:
        async def call() -> None:
            calls[tag] += 1
            raise ConnectionError(tag)

        return call

    a = Retry(10, backoff=constant(0), budget=budget, clock=clock)(dead("a"))
    b = Retry(10, backoff=constant(0), budget=budget, clock=clock)(dead("b"))
    with pytest.raises(ConnectionError):
        await a()
    with pytest.raises(ConnectionError):
        await b()
    assert calls == {"a": 5, "b": 1}


def test_sync_retry_with_budget(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0, window=10, clock=clock)
    calls = 0

    @Retry(3, backoff=constant(0), budget=budget, clock=clock)
    def dead() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    for _ in range(100):
        with pytest.raises(ConnectionError):
            dead()
    assert calls - 100 <= 50


def test_threads_count_every_request() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0, window=3600)

    def worker() -> None:
        for _ in range(20_000):
            budget.record_request()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.status()["requests"] == 80_000


# -- the bound, over any window (issue 14, item 15) --------------------------


def test_retries_at_the_end_of_a_bucket_do_not_come_back_early(clock: FakeClock) -> None:
    """10 retries at t=0.99 with a floor of 10: none may pass again before t=10.99."""
    budget = RetryBudget(ratio=0.0, min_per_second=1, window=10, clock=clock)
    clock.set(0.99)
    assert sum(budget.try_spend() for _ in range(10)) == 10
    clock.set(10.0)  # 9.01 s later: the 10 retries are still in the last 10 s
    assert not budget.try_spend()
    clock.set(10.98)
    assert not budget.try_spend()
    clock.set(11.0)  # more than 10 s after them, with a bucket's slack
    assert budget.try_spend()


@settings(max_examples=300, deadline=None)
@given(
    window=st.integers(1, 20),
    ratio=st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0]),
    min_per_second=st.sampled_from([0.0, 0.3, 1.0, 3.0]),
    events=st.lists(st.tuples(st.integers(0, 4000), st.booleans()), max_size=250),
)
def test_retries_never_exceed_the_bound_over_any_window(
    window: int, ratio: float, min_per_second: float, events: list[tuple[int, bool]]
) -> None:
    """The documented bound, checked over every window of a random history on a FakeClock.

    Events come every 0..4 s (whole milliseconds); each is a call or a retry attempt.
    """
    clock = FakeClock()
    budget = RetryBudget(ratio=ratio, min_per_second=min_per_second, window=window, clock=clock)
    calls: list[float] = []
    retries: list[float] = []
    t_ms = 0
    for step_ms, is_call in events:
        t_ms += step_ms
        clock.set(t_ms / 1000)
        now = clock.now()
        if is_call:
            budget.record_request()
            calls.append(now)
        elif budget.try_spend():
            retries.append(now)
    floor = min_per_second * window
    slack = 1e-6  # float rounding at the exact edge of a window

    def count(times: list[float], lo: float, hi: float) -> int:
        """Events in (lo, hi]."""
        return sum(lo < t <= hi for t in times)

    for t in retries:
        # At every retry, the last `window` seconds hold at most ratio * calls + floor retries...
        in_window = count(retries, t - window + slack, t)
        assert in_window <= ratio * count(calls, t - window, t) + floor + 1e-9, (t, in_window)
        # ...so any span of `window` seconds starting at a retry (the busiest spans do) holds at
        # most floor retries plus ratio times the calls of that span and of the window before it.
        span = count(retries, t - slack, t + window - slack)
        assert span <= ratio * count(calls, t - window, t + window) + floor + 1e-9, (t, span)
