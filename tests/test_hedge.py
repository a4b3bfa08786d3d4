"""Hedge: extra calls on slowness or failure; first good outcome wins; losers cancelled.

A ``FakeClock`` drives the hedging delay and the backend's latencies.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resilient import Hedge, LatencyQuantile
from resilient.testing import FakeClock, recording


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class Backend:
    """Each call takes the next (delay, outcome) from a script; delays are on the fake clock."""

    def __init__(self, clock: FakeClock, script: list[tuple[float, Any]]) -> None:
        self.clock = clock
        self.script = list(script)
        self.started = 0
        self.cancelled = 0

    async def __call__(self) -> Any:
        delay, outcome = self.script[self.started]
        self.started += 1
        try:
            if delay:
                await self.clock.asleep(delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


async def test_fast_call_needs_no_hedge(clock: FakeClock) -> None:
    backend = Backend(clock, [(0, "a")])
    assert await Hedge(0.5, clock=clock)(backend)() == "a"
    assert backend.started == 1
    assert clock.pending_timers == 0


async def test_slow_call_is_hedged_after_the_delay_and_the_loser_cancelled(clock: FakeClock) -> None:
    backend = Backend(clock, [(5, "slow"), (0, "fast")])
    with recording() as events:
        task = asyncio.create_task(Hedge(0.02, name="h", clock=clock)(backend)())
        await settle()
        clock.advance(0.019)
        await settle()
        assert backend.started == 1
        clock.advance(0.001)
        assert await task == "fast"
    assert backend.started == 2
    await settle()
    assert backend.cancelled == 1
    (event,) = events.of("hedge_fired")
    assert event.attempt == 2


async def test_failure_starts_the_next_hedge_at_once(clock: FakeClock) -> None:
    backend = Backend(clock, [(0, ConnectionError("x")), (0, "ok")])
    assert await Hedge(10, clock=clock)(backend)() == "ok"
    assert clock.now() == 0


async def test_all_failing_reraises_the_last_with_a_note(clock: FakeClock) -> None:
    backend = Backend(clock, [(0, ConnectionError("1")), (0, ConnectionError("2")), (0, ConnectionError("3"))])
    with pytest.raises(ConnectionError, match="3") as info:
        await Hedge(0.01, max_hedged=2, clock=clock)(backend)()
    assert "all 3 hedged calls failed" in info.value.__notes__[0]


async def test_flagged_results(clock: FakeClock) -> None:
    backend = Backend(clock, [(0, 503), (0, 200)])
    assert await Hedge(1, on_result=lambda r: r >= 500, clock=clock)(backend)() == 200
    backend = Backend(clock, [(0, 503), (0, 502)])
    assert await Hedge(1, on_result=lambda r: r >= 500, clock=clock)(backend)() == 502


async def test_unhandled_exception_propagates_and_cancels_others(clock: FakeClock) -> None:
    backend = Backend(clock, [(5, "slow"), (0, KeyError("k"))])
    task = asyncio.create_task(Hedge(0.01, on=ConnectionError, clock=clock)(backend)())
    await settle()
    clock.advance(0.01)
    with pytest.raises(KeyError):
        await task
    await settle()
    assert backend.cancelled == 1


async def test_caller_cancellation_cancels_every_call(clock: FakeClock) -> None:
    backend = Backend(clock, [(5, "a"), (5, "b")])
    task = asyncio.create_task(Hedge(0.01, clock=clock)(backend)())
    await settle()
    clock.advance(0.01)
    await settle()
    assert backend.started == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle()
    assert backend.cancelled == 2
    assert clock.pending_timers == 0


def test_sync_refused_and_bad_config() -> None:
    with pytest.raises(TypeError, match="only wrap async"):
        Hedge(1)(lambda: 1)
    with pytest.raises(ValueError, match="delay"):
        Hedge(-1)
    with pytest.raises(ValueError, match="max_hedged"):
        Hedge(1, max_hedged=0)
    with pytest.raises(TypeError, match="delay"):
        Hedge("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clock"):
        Hedge(1, clock="now")  # type: ignore[arg-type]


async def test_zero_delay_starts_every_call_at_once(clock: FakeClock) -> None:
    backend = Backend(clock, [(5, "slow"), (3, "mid"), (1, "fast")])
    task = asyncio.create_task(Hedge(0, max_hedged=2, clock=clock)(backend)())
    await settle()
    assert backend.started == 3
    assert clock.now() == 0
    clock.advance(1)
    assert await task == "fast"
    await settle()
    assert backend.cancelled == 2


class CountingBudget:
    def __init__(self, spendable: int) -> None:
        self.spendable = spendable
        self.requests = 0
        self.spent = 0

    def record_request(self) -> None:
        self.requests += 1

    def try_spend(self) -> bool:
        if self.spent >= self.spendable:
            return False
        self.spent += 1
        return True


async def test_budget_bounds_the_extra_calls(clock: FakeClock) -> None:
    budget = CountingBudget(spendable=1)
    hedge = Hedge(0.01, max_hedged=3, budget=budget, clock=clock)
    backend = Backend(clock, [(1, "a"), (1, "b"), (1, "c"), (1, "d")])
    task = asyncio.create_task(hedge(backend)())
    for _ in range(5):
        await settle()
        clock.advance(0.01)
    await settle()
    # One hedge spent, the next refused: no further calls however long it waits.
    assert backend.started == 2
    assert budget.requests == 1
    clock.advance(0.95)  # t = 1: the first call answers
    assert await task == "a"
    assert clock.pending_timers == 0


async def test_refused_budget_after_a_failure_reraises(clock: FakeClock) -> None:
    backend = Backend(clock, [(0, ConnectionError("1")), (0, "never")])
    with pytest.raises(ConnectionError, match="1"):
        await Hedge(10, budget=CountingBudget(spendable=0), clock=clock)(backend)()
    assert backend.started == 1


async def test_retry_budget_is_shared(clock: FakeClock) -> None:
    from resilient import RetryBudget

    budget = RetryBudget(ratio=0.0, min_per_second=0.1, window=10, clock=clock)  # one extra call per 10 s
    hedge = Hedge(0, budget=budget, clock=clock)
    backend = Backend(clock, [(0, "a"), (0, "a"), (0, "b")])
    assert await hedge(backend)() == "a"
    assert backend.started == 2
    assert await hedge(backend)() == "b"
    assert backend.started == 3  # the budget refused the second call's hedge


async def test_quantile_delay_uses_the_fallback_then_the_observed_quantile(clock: FakeClock) -> None:
    quantile = LatencyQuantile(0.9, window=10, floor=0.001, fallback=0.5, min_samples=10)
    hedge = Hedge(quantile, clock=clock)
    assert quantile.current() == 0.5
    # Ten attempts of 10, 20, ..., 100 ms, each answering before the fallback.
    for ms in range(10, 101, 10):
        backend = Backend(clock, [(ms / 1000, "ok")])
        task = asyncio.create_task(hedge(backend)())
        await settle()
        clock.advance(ms / 1000)
        assert await task == "ok"
        assert backend.started == 1
    assert quantile.samples == 10
    assert quantile.current() == pytest.approx(0.1)  # the 90th percentile of the window
    backend = Backend(clock, [(5, "slow"), (0, "fast")])
    task = asyncio.create_task(hedge(backend)())
    await settle()
    clock.advance(0.099)
    await settle()
    assert backend.started == 1
    clock.advance(0.001)
    assert await task == "fast"
    assert backend.started == 2


async def test_quantile_counts_the_cancelled_loser_as_slow(clock: FakeClock) -> None:
    quantile = LatencyQuantile(0.5, window=4, floor=0.0, fallback=0.02, min_samples=1)
    hedge = Hedge(quantile, clock=clock)
    backend = Backend(clock, [(5, "slow"), (0.01, "fast")])
    task = asyncio.create_task(hedge(backend)())
    await settle()
    clock.advance(0.02)
    await settle()
    clock.advance(0.01)
    assert await task == "fast"
    # The hedge answered in 10 ms; the loser had run 30 ms when cancelled.
    assert quantile.samples == 2
    assert quantile.current() == pytest.approx(0.03)


def test_quantile_floor_window_and_parsing() -> None:
    quantile = LatencyQuantile(0.5, window=3, floor=0.05, min_samples=3)
    for seconds in (0.001, 0.002, 0.003, float("nan"), -1.0, float("inf")):
        quantile.observe(seconds)
    assert quantile.samples == 3
    assert quantile.current() == 0.05  # the floor
    for seconds in (1.0, 2.0, 3.0):
        quantile.observe(seconds)
    assert quantile.current() == 2.0  # the old samples slid out of the window
    assert Hedge("p95").quantile is not None
    assert Hedge("p99.9").quantile.quantile == pytest.approx(0.999)  # type: ignore[union-attr]
    assert "LatencyQuantile(0.95" in repr(Hedge("p95"))


def test_quantile_bad_config() -> None:
    with pytest.raises(ValueError, match="delay"):
        Hedge("p100")
    with pytest.raises(TypeError, match="delay"):
        Hedge("fast")
    with pytest.raises(ValueError, match="quantile"):
        LatencyQuantile(1.0)
    with pytest.raises(ValueError, match="quantile"):
        LatencyQuantile(0)
    with pytest.raises(ValueError, match="window"):
        LatencyQuantile(window=1)
    with pytest.raises(ValueError, match="min_samples"):
        LatencyQuantile(window=10, min_samples=11)
    with pytest.raises(ValueError, match="floor"):
        LatencyQuantile(floor=-1)
    with pytest.raises(TypeError, match="budget"):
        Hedge(1, budget=object())  # type: ignore[arg-type]
