"""Timeout: expiry, cancellation semantics, deadlines, sync refusal.

A ``FakeClock`` drives every timeout here: the guarded calls wait on the
fake clock (or on an event that never comes) and the test advances time;
nothing sleeps for real.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref

import pytest

import resilient
from resilient import Retry, Timeout, constant, deadline
from resilient.testing import FakeClock, recording
from resilient.timers import TimerQueue
from tests.clock_helpers import after


async def settle() -> None:
    """Let the tasks that are ready run up to their next suspension."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_fast_call_passes_through(clock: FakeClock) -> None:
    @Timeout(1, clock=clock)
    async def fast(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    assert await fast(21) == 42


async def test_slow_call_is_cancelled_and_raises_resilient_timeout(clock: FakeClock) -> None:
    cleaned = asyncio.Event()

    @Timeout(0.02, name="slow", clock=clock)
    async def slow() -> None:
        try:
            await clock.asleep(10)
        finally:
            cleaned.set()

    task = asyncio.create_task(slow())
    await settle()
    clock.advance(0.019)
    await settle()
    assert not task.done()
    clock.advance(0.001)
    with pytest.raises(resilient.TimeoutError) as info:
        await task
    assert isinstance(info.value, TimeoutError)  # the builtin
    assert isinstance(info.value.__cause__, asyncio.CancelledError)
    assert cleaned.is_set()
    assert info.value.timeout == pytest.approx(0.02)
    assert info.value.policy == "slow"
    assert "Timeout 'slow' expired after 0.02 s" in str(info.value)
    # The task is not left with a pending cancellation request.
    assert task.cancelling() == 0


async def test_the_callers_task_is_left_without_a_cancellation_request(clock: FakeClock) -> None:
    @Timeout(1, clock=clock)
    async def slow() -> None:
        await clock.asleep(10)

    async def caller() -> int:
        with pytest.raises(resilient.TimeoutError):
            await slow()
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    task = asyncio.create_task(caller())
    await settle()
    clock.advance(1)
    assert await task == 0


async def test_outer_cancellation_is_never_turned_into_a_timeout(clock: FakeClock) -> None:
    started = asyncio.Event()

    @Timeout(5, clock=clock)
    async def slow() -> None:
        started.set()
        await clock.asleep(10)

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_outer_cancellation_racing_the_timeout_wins(clock: FakeClock) -> None:
    # The timer fires and an outer cancel arrives before the task resumes:
    # the outer cancellation must win, as with asyncio.timeout.
    @Timeout(0.01, clock=clock)
    async def slow() -> None:
        await clock.asleep(10)

    task = asyncio.create_task(slow())
    await settle()
    clock.advance(0.01)  # our timer cancels the task...
    task.cancel()  # ...and so does somebody else, before it resumes
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_timeout_inside_asyncio_timeout_keeps_outer_semantics(clock: FakeClock) -> None:
    @Timeout(5, clock=clock)
    async def slow() -> None:
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0):
            await slow()
    assert not isinstance(info.value, resilient.TimeoutError)


async def test_inner_timeout_inside_taskgroup(clock: FakeClock) -> None:
    @Timeout(0.02, clock=clock)
    async def slow() -> None:
        await clock.asleep(10)

    async def ok() -> int:
        await clock.asleep(0.05)
        return 1

    async def group() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(slow())
            tg.create_task(ok())

    task = asyncio.create_task(group())
    await settle()
    clock.advance(0.02)
    await settle()
    clock.advance(0.05)
    with pytest.raises(ExceptionGroup) as info:
        await task
    assert info.group_contains(resilient.TimeoutError)


async def test_swallowed_cancellation_still_balances_uncancel(clock: FakeClock) -> None:
    @Timeout(0.01, clock=clock)
    async def stubborn() -> str:
        try:
            await clock.asleep(10)
        except asyncio.CancelledError:
            return "swallowed"
        return "finished"

    task = asyncio.create_task(stubborn())
    await settle()
    clock.advance(0.01)
    assert await task == "swallowed"
    assert task.cancelling() == 0


async def test_exception_other_than_cancel_after_firing_propagates(clock: FakeClock) -> None:
    @Timeout(0.01, clock=clock)
    async def converts() -> None:
        try:
            await clock.asleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("converted") from None

    task = asyncio.create_task(converts())
    await settle()
    clock.advance(0.01)
    with pytest.raises(RuntimeError, match="converted"):
        await task
    assert task.cancelling() == 0


async def test_timeout_is_clamped_to_the_deadline(clock: FakeClock) -> None:
    @Timeout(10, clock=clock)
    async def slow() -> None:
        await clock.asleep(10)

    async def caller() -> None:
        with deadline(0.02, clock=clock):
            await slow()

    task = asyncio.create_task(caller())
    await settle()
    clock.advance(0.019)
    await settle()
    assert not task.done()
    clock.advance(0.001)
    with pytest.raises(resilient.TimeoutError, match="deadline") as info:
        await task
    assert info.value.timeout is not None
    assert info.value.timeout <= 0.02
    assert task.cancelling() == 0


async def test_expired_deadline_refuses_to_start_the_call(clock: FakeClock) -> None:
    calls = 0

    @Timeout(10, clock=clock)
    async def work() -> None:
        nonlocal calls
        calls += 1

    with deadline(1, clock=clock):
        clock.advance(2)
        with pytest.raises(resilient.TimeoutError, match="deadline expired"):
            await work()
    assert calls == 0


async def test_attempt_timeout_inside_retry_is_retried(clock: FakeClock) -> None:
    calls = 0

    async def sometimes_slow() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await clock.asleep(10)
        return "ok"

    guarded = resilient.Pipeline(
        Retry(3, backoff=constant(0), on=TimeoutError, clock=clock), Timeout(0.02, clock=clock)
    )(sometimes_slow)
    task = asyncio.create_task(guarded())
    await settle()
    clock.advance(0.02)
    assert await task == "ok"
    assert calls == 2


async def test_timeout_event(clock: FakeClock) -> None:
    @Timeout(0.01, name="t", clock=clock)
    async def slow() -> None:
        await clock.asleep(10)

    with recording() as events:
        task = asyncio.create_task(slow())
        await settle()
        clock.advance(0.01)
        with pytest.raises(TimeoutError):
            await task
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
    with pytest.raises(TypeError, match="seconds must be a finite number > 0"):
        Timeout("1")  # type: ignore[arg-type]


def test_clock_type() -> None:
    with pytest.raises(TypeError, match="clock must be a Clock"):
        Timeout(1, clock=object())  # type: ignore[arg-type]


async def test_many_concurrent_calls_out_of_order_each_get_their_own_expiry(clock: FakeClock) -> None:
    # Calls share one timer queue per Timeout and loop; finishing out of order
    # must neither lose a timeout nor fire one early.
    timeout = Timeout(0.05, clock=clock)
    durations = [0.0, 0.2, 0.01, 0.2, 0.0, 0.03, 0.2, 0.0] * 5

    async def work(d: float) -> float:
        await clock.asleep(d)
        return d

    guarded = timeout(work)
    gathered = asyncio.gather(*(guarded(d) for d in durations), return_exceptions=True)
    await settle()
    for _ in range(30):
        clock.advance(0.01)
        await settle()
    results = await gathered
    for d, r in zip(durations, results, strict=True):
        if d >= 0.2:
            assert isinstance(r, resilient.TimeoutError)
        else:
            assert r == d


async def test_calls_started_later_expire_later(clock: FakeClock) -> None:
    timeout = Timeout(1, clock=clock)

    @timeout
    async def hang() -> None:
        await asyncio.Event().wait()

    first = asyncio.create_task(hang())
    await settle()
    clock.advance(0.5)
    second = asyncio.create_task(hang())
    await settle()
    clock.advance(0.5)
    await settle()
    assert first.done()
    assert not second.done()
    clock.advance(0.5)
    await settle()
    assert second.done()
    for task in (first, second):
        assert isinstance(task.exception(), resilient.TimeoutError)


async def test_timer_queue_stays_bounded_with_a_long_call_at_its_head(clock: FakeClock) -> None:
    timeout = Timeout(5, clock=clock)
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


def _live_queues() -> list[TimerQueue]:
    return [o for o in gc.get_objects() if isinstance(o, TimerQueue)]


def test_one_timeout_object_works_across_event_loops() -> None:
    # Each loop arms its own timers on the policy's clock (a loop that closed
    # leaves its timers behind: they must not fire into it).
    clock = FakeClock()
    timeout = Timeout(0.01, clock=clock)

    @timeout
    async def slow() -> None:
        await asyncio.Event().wait()

    @timeout
    async def fast() -> int:
        return 1

    async def expire() -> None:
        await after(clock, 0.01, slow())

    for _ in range(2):
        assert asyncio.run(fast()) == 1
        with pytest.raises(resilient.TimeoutError):
            asyncio.run(expire())


async def test_cancellation_while_queued_behind_others_propagates(clock: FakeClock) -> None:
    timeout = Timeout(5, clock=clock)
    started = asyncio.Event()

    @timeout
    async def hang() -> None:
        started.set()
        await clock.asleep(10)

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


async def test_set_deadline_publishes_the_limit_inside_and_restores_it_after(clock: FakeClock) -> None:
    seen: list[float | None] = []

    async def inner() -> None:
        seen.append(resilient.remaining())

    await Timeout(5, set_deadline=True, clock=clock)(inner)()
    await Timeout(5, clock=clock)(inner)()
    assert seen == [5.0, None]
    assert resilient.remaining() is None


async def test_set_deadline_keeps_a_nearer_outer_deadline(clock: FakeClock) -> None:
    seen: list[float | None] = []

    async def inner() -> None:
        seen.append(resilient.remaining())

    with deadline(1, clock=clock):
        await Timeout(5, set_deadline=True, clock=clock)(inner)()
        assert resilient.remaining() == 1
    assert seen == [1]


async def test_set_deadline_stops_an_inner_retry_from_outliving_the_timeout() -> None:
    clock = FakeClock(auto_advance=True)
    calls = 0

    async def fail() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError

    guarded = resilient.Pipeline(
        Timeout(10, set_deadline=True, clock=clock), Retry(5, backoff=constant(20), clock=clock)
    )(fail)
    with pytest.raises(ConnectionError) as info:
        await guarded()
    assert calls == 1
    assert "deadline" in info.value.__notes__[0]


async def test_set_deadline_is_reset_when_the_call_fails(clock: FakeClock) -> None:
    async def boom() -> None:
        raise KeyError

    with pytest.raises(KeyError):
        await Timeout(5, set_deadline=True, clock=clock)(boom)()
    assert resilient.remaining() is None


def test_set_deadline_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="set_deadline"):
        Timeout(1, set_deadline="yes")  # type: ignore[arg-type]


# -- timers keep nothing of the caller alive (issue 14, items 2 and 13) -------

_request: contextvars.ContextVar[object] = contextvars.ContextVar("request")


class Big:
    """Stands for a request or response a caller keeps in a contextvar."""

    def __init__(self) -> None:
        self.payload = bytearray(1 << 20)


async def test_the_shared_timer_does_not_pin_the_context_of_the_call_that_armed_it() -> None:
    # The real clock: this is about what the event loop's timer handle holds.
    timeout = Timeout(30)

    @timeout
    async def work() -> int:
        return 1

    refs = []

    async def one_request() -> None:
        big = Big()
        refs.append(weakref.ref(big))
        _request.set(big)
        assert await work() == 1

    # Each request in its own task (own context), as a server runs them.
    for _ in range(5):
        await asyncio.create_task(one_request())
    await settle()  # the loop's last handle refers to the finished task
    gc.collect()
    assert [r() for r in refs] == [None] * 5


async def test_a_clamped_timer_does_not_pin_the_caller_either() -> None:
    timeout = Timeout(30)

    @timeout
    async def work() -> int:
        return 1

    refs = []

    async def one_request() -> None:
        big = Big()
        refs.append(weakref.ref(big))
        _request.set(big)
        with deadline(20):
            assert await work() == 1

    await asyncio.create_task(one_request())
    await settle()
    gc.collect()
    assert [r() for r in refs] == [None]


async def test_timers_fire_in_an_empty_context(clock: FakeClock) -> None:
    seen: list[object] = []
    _request.set("the caller's")
    clock.call_at(1, lambda: seen.append(_request.get("empty")))
    clock.advance(1)
    assert seen == ["empty"]


async def test_run_shares_the_policys_timer_instead_of_leaving_one_per_call() -> None:
    # Timeout.run() and Pipeline.run() wrap on every call; the timer belongs
    # to the policy, so 2,000 runs leave one armed loop timer, not 2,000.
    timeout = Timeout(30)
    pipeline = resilient.Pipeline(Timeout(30), name="p")

    async def work() -> int:
        return 1

    for _ in range(1000):
        assert await timeout.run(work) == 1
        assert await pipeline.run(work) == 1
    loop = asyncio.get_running_loop()
    armed = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]
    assert len(armed) <= 2
    assert len(_live_queues()) >= 1


async def test_run_with_a_fake_clock_leaves_at_most_one_pending_timer(clock: FakeClock) -> None:
    timeout = Timeout(30, clock=clock)

    async def work() -> int:
        return 1

    for _ in range(100):
        assert await timeout.run(work) == 1
    assert clock.pending_timers <= 1


def test_a_timeout_lets_its_closed_loops_go() -> None:
    # Before: each loop's timer queue referred to its loop, so the weak-keyed
    # map of queues never let one go (a loop a test, for a module's Timeout).
    timeout = Timeout(10)

    @timeout
    async def loop_ref() -> weakref.ref[asyncio.AbstractEventLoop]:
        return weakref.ref(asyncio.get_running_loop())

    refs = [asyncio.run(loop_ref()) for _ in range(4)]
    gc.collect()
    assert sum(ref() is not None for ref in refs) <= 1  # the last one, until another loop comes
