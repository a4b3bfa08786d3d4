"""Hedge: extra calls on slowness or failure; first good outcome wins; losers cancelled.

A ``FakeClock`` drives the hedging delay and the backend's latencies.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resilient import Hedge
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
        Hedge(0)
    with pytest.raises(ValueError, match="max_hedged"):
        Hedge(1, max_hedged=0)
    with pytest.raises(TypeError, match="delay"):
        Hedge("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clock"):
        Hedge(1, clock="now")  # type: ignore[arg-type]
