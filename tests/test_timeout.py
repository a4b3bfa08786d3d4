"""Timeout: expiry, cancellation semantics, deadlines, sync refusal.

Timeouts use the event loop's real clock, so these tests use short real
times (tens of milliseconds); nothing waits for time logic with a sleep.
"""

from __future__ import annotations

import asyncio

import pytest

import resilient
from resilient import Retry, Timeout, constant, deadline
from resilient.testing import FakeClock, recording


async def test_fast_call_passes_through() -> None:
    @Timeout(1)
    async def fast(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    assert await fast(21) == 42


async def test_slow_call_is_cancelled_and_raises_resilient_timeout() -> None:
    cleaned = asyncio.Event()

    @Timeout(0.02, name="slow")
    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.set()

    with pytest.raises(resilient.TimeoutError) as info:
        await slow()
    assert isinstance(info.value, TimeoutError)  # the builtin
    assert isinstance(info.value.__cause__, asyncio.CancelledError)
    assert cleaned.is_set()
    assert info.value.timeout == pytest.approx(0.02)
    assert info.value.policy == "slow"
    assert "Timeout 'slow' expired after 0.02 s" in str(info.value)
    # The task is not left with a pending cancellation request.
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_outer_cancellation_is_never_turned_into_a_timeout() -> None:
    started = asyncio.Event()

    @Timeout(5)
    async def slow() -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_outer_cancellation_racing_the_timeout_wins() -> None:
    # The timer fires and an outer cancel arrives before the task resumes:
    # the outer cancellation must win, as with asyncio.timeout.
    @Timeout(0.01)
    async def slow() -> None:
        await asyncio.sleep(10)

    async def runner() -> None:
        await slow()

    task = asyncio.create_task(runner())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_timeout_inside_asyncio_timeout_keeps_outer_semantics() -> None:
    @Timeout(5)
    async def slow() -> None:
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0.02):
            await slow()
    assert not isinstance(info.value, resilient.TimeoutError)


async def test_inner_timeout_inside_taskgroup() -> None:
    @Timeout(0.02)
    async def slow() -> None:
        await asyncio.sleep(10)

    async def ok() -> int:
        await asyncio.sleep(0.05)
        return 1

    async def group() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(slow())
            tg.create_task(ok())

    with pytest.raises(ExceptionGroup) as info:
        await group()
    assert info.group_contains(resilient.TimeoutError)


async def test_swallowed_cancellation_still_balances_uncancel() -> None:
    @Timeout(0.01)
    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "swallowed"
        return "finished"

    assert await stubborn() == "swallowed"
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0)  # no stray cancellation pending


async def test_exception_other_than_cancel_after_firing_propagates() -> None:
    @Timeout(0.01)
    async def converts() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("converted") from None

    with pytest.raises(RuntimeError, match="converted"):
        await converts()
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_timeout_is_clamped_to_the_deadline() -> None:
    @Timeout(10)
    async def slow() -> None:
        await asyncio.sleep(10)

    with deadline(0.02), pytest.raises(resilient.TimeoutError, match="deadline") as info:
        await slow()
    assert info.value.timeout is not None
    assert info.value.timeout <= 0.02


async def test_expired_deadline_refuses_to_start_the_call() -> None:
    clock = FakeClock()
    calls = 0

    @Timeout(10)
    async def work() -> None:
        nonlocal calls
        calls += 1

    with deadline(1, clock=clock):
        clock.advance(2)
        with pytest.raises(resilient.TimeoutError, match="deadline expired"):
            await work()
    assert calls == 0


async def test_attempt_timeout_inside_retry_is_retried() -> None:
    calls = 0

    async def sometimes_slow() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)
        return "ok"

    guarded = resilient.Pipeline(Retry(3, backoff=constant(0), on=TimeoutError), Timeout(0.02))(sometimes_slow)
    assert await guarded() == "ok"
    assert calls == 2


async def test_timeout_event() -> None:
    @Timeout(0.01, name="t")
    async def slow() -> None:
        await asyncio.sleep(10)

    with recording() as events, pytest.raises(TimeoutError):
        await slow()
    (event,) = events.of("timeout")
    assert event.policy == "t"
    assert event.duration == pytest.approx(0.01)


def test_sync_functions_are_refused_at_wrap_time() -> None:
    def blocking() -> None:
        return None

    with pytest.raises(TypeError, match="only wrap async functions"):
        Timeout(1)(blocking)
    with pytest.raises(TypeError, match="only wrap async"):
        resilient.Pipeline(Retry(2), Timeout(1))(blocking)


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf")])
def test_bad_seconds(seconds: float) -> None:
    with pytest.raises(ValueError, match="seconds must be a finite number > 0"):
        Timeout(seconds)


def test_seconds_type() -> None:
    with pytest.raises(TypeError, match="seconds must be a number"):
        Timeout("1")  # type: ignore[arg-type]
