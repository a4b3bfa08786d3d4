"""Hedge: extra calls on slowness or failure; first good outcome wins; losers cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resilient import Hedge
from resilient.testing import recording


class Backend:
    """Each call takes the next (delay, outcome) from a script."""

    def __init__(self, script: list[tuple[float, Any]]) -> None:
        self.script = list(script)
        self.started = 0
        self.cancelled = 0

    async def __call__(self) -> Any:
        delay, outcome = self.script[self.started]
        self.started += 1
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


async def test_fast_call_needs_no_hedge() -> None:
    backend = Backend([(0, "a")])
    assert await Hedge(0.5)(backend)() == "a"
    assert backend.started == 1


async def test_slow_call_is_hedged_and_the_loser_cancelled() -> None:
    backend = Backend([(5, "slow"), (0, "fast")])
    with recording() as events:
        assert await Hedge(0.02, name="h")(backend)() == "fast"
    assert backend.started == 2
    await asyncio.sleep(0)
    assert backend.cancelled == 1
    (event,) = events.of("hedge_fired")
    assert event.attempt == 2


async def test_failure_starts_the_next_hedge_at_once() -> None:
    backend = Backend([(0, ConnectionError("x")), (0, "ok")])
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await Hedge(10)(backend)() == "ok"
    assert loop.time() - start < 5


async def test_all_failing_reraises_the_last_with_a_note() -> None:
    backend = Backend([(0, ConnectionError("1")), (0, ConnectionError("2")), (0, ConnectionError("3"))])
    with pytest.raises(ConnectionError, match="3") as info:
        await Hedge(0.01, max_hedged=2)(backend)()
    assert "all 3 hedged calls failed" in info.value.__notes__[0]


async def test_flagged_results() -> None:
    backend = Backend([(0, 503), (0, 200)])
    assert await Hedge(1, on_result=lambda r: r >= 500)(backend)() == 200
    backend = Backend([(0, 503), (0, 502)])
    assert await Hedge(1, on_result=lambda r: r >= 500)(backend)() == 502


async def test_unhandled_exception_propagates_and_cancels_others() -> None:
    backend = Backend([(5, "slow"), (0, KeyError("k"))])
    with pytest.raises(KeyError):
        await Hedge(0.01, on=ConnectionError)(backend)()
    await asyncio.sleep(0)
    assert backend.cancelled == 1


async def test_caller_cancellation_cancels_every_call() -> None:
    backend = Backend([(5, "a"), (5, "b")])
    task = asyncio.create_task(Hedge(0.01)(backend)())
    while backend.started < 2:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert backend.cancelled == 2


def test_sync_refused_and_bad_config() -> None:
    with pytest.raises(TypeError, match="only wrap async"):
        Hedge(1)(lambda: 1)
    with pytest.raises(ValueError, match="delay"):
        Hedge(0)
    with pytest.raises(ValueError, match="max_hedged"):
        Hedge(1, max_hedged=0)
    with pytest.raises(TypeError, match="delay"):
        Hedge("1")  # type: ignore[arg-type]
