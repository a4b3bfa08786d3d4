"""Timeout: expiry, cancellation semantics, deadlines, sync refusal.

Timeouts use the event loop's real clock, so these tests use short real
times (tens of milliseconds); nothing waits for time logic with a sleep.
"""

from __future__ import annotations

import asyncio
import gc

import pytest

import resilient
from resilient import Retry, Timeout, constant, deadline
from resilient.testing import FakeClock, recording
from resilient.timeout import _TimerQueue


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


async def test_many_concurrent_calls_out_of_order_each_get_their_own_expiry() -> None:
    # Calls share one timer queue per Timeout and loop; finishing out of order
    # must neither lose a timeout nor fire one early.
    timeout = Timeout(0.05)
    durations = [0.0, 0.2, 0.01, 0.2, 0.0, 0.03, 0.2, 0.0] * 5

    async def work(d: float) -> float:
        await asyncio.sleep(d)
        return d

    guarded = timeout(work)
    results = await asyncio.gather(*(guarded(d) for d in durations), return_exceptions=True)
    for d, r in zip(durations, results, strict=True):
        if d >= 0.2:
            assert isinstance(r, resilient.TimeoutError)
        else:
            assert r == d


async def test_timer_queue_stays_bounded_with_a_long_call_at_its_head() -> None:
    timeout = Timeout(5)
    release = asyncio.Event()

    async def long_call() -> None:
        await release.wait()

    async def quick() -> int:
        return 1

    long_task = asyncio.create_task(timeout(long_call)())
    await asyncio.sleep(0)
    guarded_quick = timeout(quick)
    for _ in range(5000):
        assert await guarded_quick() == 1
    queues = _live_queues()
    assert queues
    assert max(len(q.entries) for q in queues) < 200
    release.set()
    await long_task


def _live_queues() -> list[_TimerQueue]:
    return [o for o in gc.get_objects() if isinstance(o, _TimerQueue)]


def test_one_timeout_object_works_across_event_loops() -> None:
    timeout = Timeout(0.02)

    @timeout
    async def slow() -> None:
        await asyncio.sleep(1)

    @timeout
    async def fast() -> int:
        return 1

    for _ in range(2):
        assert asyncio.run(fast()) == 1
        with pytest.raises(resilient.TimeoutError):
            asyncio.run(slow())


async def test_cancellation_while_queued_behind_others_propagates() -> None:
    timeout = Timeout(5)
    started = asyncio.Event()

    @timeout
    async def hang() -> None:
        started.set()
        await asyncio.sleep(10)

    first = asyncio.create_task(hang())
    second = asyncio.create_task(hang())
    await started.wait()
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second


async def test_set_deadline_publishes_the_limit_inside_and_restores_it_after() -> None:
    seen: list[float | None] = []

    async def inner() -> None:
        seen.append(resilient.remaining())

    await Timeout(5, set_deadline=True)(inner)()
    await Timeout(5)(inner)()
    assert seen[0] is not None
    assert 4.5 < seen[0] <= 5
    assert seen[1] is None
    assert resilient.remaining() is None


async def test_set_deadline_keeps_a_nearer_outer_deadline() -> None:
    seen: list[float | None] = []

    async def inner() -> None:
        seen.append(resilient.remaining())

    with deadline(1):
        await Timeout(5, set_deadline=True)(inner)()
        assert resilient.remaining() is not None
    assert seen[0] is not None
    assert seen[0] <= 1


async def test_set_deadline_stops_an_inner_retry_from_outliving_the_timeout() -> None:
    clock = FakeClock(auto_advance=True)
    calls = 0

    async def fail() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError

    guarded = resilient.Pipeline(Timeout(10, set_deadline=True), Retry(5, backoff=constant(20), clock=clock))(fail)
    with pytest.raises(ConnectionError) as info:
        await guarded()
    assert calls == 1
    assert "deadline" in info.value.__notes__[0]


async def test_set_deadline_is_reset_when_the_call_fails() -> None:
    async def boom() -> None:
        raise KeyError

    with pytest.raises(KeyError):
        await Timeout(5, set_deadline=True)(boom)()
    assert resilient.remaining() is None


def test_set_deadline_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="set_deadline"):
        Timeout(1, set_deadline="yes")  # type: ignore[arg-type]
