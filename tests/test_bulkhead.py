"""Bulkhead: limits, FIFO queue, queue timeout, rejection, cancellation, threads."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import pytest

from resilient import BulkheadFullError, Pipeline, RejectedError, deadline
from resilient.concurrency import Admission, Bulkhead
from resilient.events import REJECTED
from resilient.policy import live_policies
from resilient.testing import FakeClock, recording


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- configuration -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_concurrent": -1}, "max_concurrent"),
        ({"max_concurrent": 1, "max_queued": -1}, "max_queued"),
        ({"max_concurrent": 1, "queue_timeout": 0}, "queue_timeout"),
        ({"max_concurrent": 1, "queue_timeout": -1.0}, "queue_timeout"),
        ({"max_concurrent": 1, "queue_timeout": float("nan")}, "queue_timeout"),
    ],
)
def test_bad_values_name_the_parameter(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ValueError, match=param):
        Bulkhead(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_concurrent": 1.5}, "max_concurrent"),
        ({"max_concurrent": True}, "max_concurrent"),
        ({"max_concurrent": 1, "max_queued": "3"}, "max_queued"),
        ({"max_concurrent": 1, "queue_timeout": "1"}, "queue_timeout"),
    ],
)
def test_bad_types_name_the_parameter(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(TypeError, match=param):
        Bulkhead(**kwargs)


def test_infinite_queue_timeout_means_none() -> None:
    assert Bulkhead(1, queue_timeout=float("inf")).queue_timeout is None


# -- behaviour ---------------------------------------------------------------


async def test_at_most_max_concurrent_run() -> None:
    bh = Bulkhead(3, max_queued=100)
    running = 0
    peak = 0

    @bh
    async def work() -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        running -= 1
        return 1

    results = await asyncio.gather(*(work() for _ in range(50)))
    assert sum(results) == 50
    assert peak == 3
    assert bh.running == 0
    assert bh.queued == 0
    assert bh.rejected == 0


async def test_rejects_at_once_when_full_and_no_queue() -> None:
    bh = Bulkhead(1, name="db")
    gate = asyncio.Event()

    @bh
    async def work() -> None:
        await gate.wait()

    t = asyncio.create_task(work())
    await _settle()
    with recording() as rec, pytest.raises(BulkheadFullError) as info:
        await work()
    err = info.value
    assert isinstance(err, RejectedError)
    assert err.policy == "db"
    assert err.running == 1
    assert err.queued == 0
    assert "'db'" in str(err)
    assert bh.rejected == 1
    events = rec.of(REJECTED)
    assert len(events) == 1
    assert events[0].policy == "db"
    assert events[0].policy_type == "bulkhead"
    assert events[0].extras["reason"] == "bulkhead_full"
    gate.set()
    await t
    assert bh.running == 0


async def test_no_event_on_success() -> None:
    bh = Bulkhead(2)
    with recording() as rec:
        await bh.run(asyncio.sleep, 0)
    assert rec.events == []


async def test_queue_is_fifo() -> None:
    bh = Bulkhead(1, max_queued=10)
    gate = asyncio.Event()
    order: list[int] = []

    @bh
    async def work(i: int) -> None:
        if i == 0:
            await gate.wait()
        order.append(i)

    tasks = [asyncio.create_task(work(i)) for i in range(6)]
    await _settle()
    assert bh.running == 1
    assert bh.queued == 5
    gate.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4, 5]


async def test_new_call_does_not_jump_the_queue() -> None:
    bh = Bulkhead(1, max_queued=5)
    gate = asyncio.Event()
    order: list[str] = []

    async def holder() -> None:
        async with bh.acquire():
            await gate.wait()
            order.append("holder")

    async def queued(tag: str) -> None:
        async with bh.acquire():
            order.append(tag)

    h = asyncio.create_task(holder())
    await _settle()
    q = asyncio.create_task(queued("queued"))
    await _settle()
    gate.set()
    # Released by the holder and handed to the queued waiter, not to a newcomer.
    await h
    late = asyncio.create_task(queued("late"))
    await asyncio.gather(q, late)
    assert order == ["holder", "queued", "late"]


async def test_queue_full_rejects() -> None:
    bh = Bulkhead(1, max_queued=2)
    gate = asyncio.Event()

    @bh
    async def work() -> None:
        await gate.wait()

    tasks = [asyncio.create_task(work()) for _ in range(3)]
    await _settle()
    with pytest.raises(BulkheadFullError) as info:
        await work()
    assert info.value.running == 1
    assert info.value.queued == 2
    gate.set()
    await asyncio.gather(*tasks)
    assert bh.status() == {
        "max_concurrent": 1,
        "max_queued": 2,
        "queue_timeout": None,
        "running": 0,
        "queued": 0,
        "rejected": 1,
    }


async def test_queue_timeout_with_fake_clock(clock: FakeClock) -> None:
    bh = Bulkhead(1, max_queued=1, queue_timeout=5.0, clock=clock, name="q")
    gate = asyncio.Event()

    @bh
    async def work() -> str:
        await gate.wait()
        return "ok"

    first = asyncio.create_task(work())
    await _settle()
    waiter = asyncio.create_task(work())
    await _settle()
    assert bh.queued == 1
    clock.advance(4.9)
    await _settle()
    assert not waiter.done()
    with recording() as rec:
        clock.advance(0.2)
        await _settle()
        assert waiter.done()
        with pytest.raises(BulkheadFullError, match="waited 5 s"):
            waiter.result()
    assert rec.names() == [REJECTED]
    assert bh.queued == 0
    assert bh.rejected == 1
    gate.set()
    assert await first == "ok"
    assert bh.running == 0


async def test_queue_timeout_real_clock() -> None:
    # The system clock's loop timer (no timing asserted: that is FakeClock's job).
    bh = Bulkhead(1, max_queued=1, queue_timeout=0.001)
    async with bh.acquire():
        with pytest.raises(BulkheadFullError, match="waited"):
            async with bh.acquire():
                pass  # pragma: no cover
    assert bh.running == 0
    assert bh.queued == 0


def test_sync_queue_timeout_runs_on_the_fake_clock(clock: FakeClock) -> None:
    bh = Bulkhead(1, max_queued=1, queue_timeout=5.0, clock=clock)
    errors: list[BaseException] = []

    def queued() -> None:
        try:
            with bh.acquire_sync():
                pass  # pragma: no cover
        except BulkheadFullError as exc:
            errors.append(exc)

    with bh.acquire_sync():
        thread = threading.Thread(target=queued)
        thread.start()
        for _ in range(1000):
            if bh.queued:
                break
            time.sleep(0.001)
        assert bh.queued == 1
        clock.advance(4.9)
        thread.join(0.05)
        assert thread.is_alive()  # not before its time
        clock.advance(0.1)
        thread.join(5)
        assert not thread.is_alive()
    assert len(errors) == 1
    assert "waited 5 s" in str(errors[0])
    assert bh.running == 0
    assert bh.queued == 0
    assert clock.pending_timers == 0


def test_sync_queue_timeout_real_clock_on_the_timer_thread() -> None:
    bh = Bulkhead(1, max_queued=1, queue_timeout=0.001)
    with bh.acquire_sync(), pytest.raises(BulkheadFullError, match="waited"), bh.acquire_sync():
        pass  # pragma: no cover
    assert bh.running == 0
    assert bh.queued == 0


async def test_sync_wait_inside_a_running_loop_does_not_wait_on_that_loop() -> None:
    # Sync code called from a coroutine blocks its loop: its queue timer must
    # not be a loop timer, or it would never fire.
    bh = Bulkhead(1, max_queued=1, queue_timeout=0.001)
    with bh.acquire_sync(), pytest.raises(BulkheadFullError), bh.acquire_sync():
        pass  # pragma: no cover


async def test_granted_before_timeout_runs(clock: FakeClock) -> None:
    bh = Bulkhead(1, max_queued=1, queue_timeout=5.0, clock=clock)
    async with bh.acquire():
        waiter = asyncio.create_task(bh.run(asyncio.sleep, 0, "done"))
        await _settle()
        clock.advance(1)
    assert await waiter == "done"
    clock.advance(10)  # the timer is gone: nothing fires later
    await _settle()
    assert bh.running == 0
    assert bh.rejected == 0


async def test_queued_wait_is_capped_by_deadline(clock: FakeClock) -> None:
    bh = Bulkhead(1, max_queued=1, queue_timeout=30, clock=clock)

    async def queued() -> None:
        with deadline(0.02, clock=clock):
            async with bh.acquire():
                pass  # pragma: no cover

    async with bh.acquire():
        waiter = asyncio.create_task(queued())
        await _settle()
        clock.advance(0.02)
        with pytest.raises(BulkheadFullError, match=r"waited 0\.02 s"):
            await waiter
    assert bh.running == 0
    assert bh.queued == 0


async def test_exception_releases_the_slot() -> None:
    bh = Bulkhead(1)

    @bh
    async def boom() -> None:
        raise ValueError("x")

    for _ in range(3):
        with pytest.raises(ValueError, match="x"):
            await boom()
    assert bh.running == 0


async def test_cancelled_runner_releases_and_hands_over() -> None:
    bh = Bulkhead(1, max_queued=1)
    started = asyncio.Event()

    @bh
    async def slow() -> None:
        started.set()
        await asyncio.sleep(10)

    runner = asyncio.create_task(slow())
    await started.wait()
    waiter = asyncio.create_task(bh.run(asyncio.sleep, 0, "second"))
    await _settle()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert await waiter == "second"
    assert bh.running == 0


async def test_cancelled_waiter_leaves_the_queue() -> None:
    bh = Bulkhead(1, max_queued=1)
    async with bh.acquire():
        waiter = asyncio.create_task(bh.run(asyncio.sleep, 0))
        await _settle()
        assert bh.queued == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert bh.queued == 0
        assert bh.running == 1
    assert bh.running == 0


async def test_waiter_cancelled_after_being_granted_gives_slot_on() -> None:
    bh = Bulkhead(1, max_queued=2)
    gate = asyncio.Event()
    holder = asyncio.create_task(bh.run(gate.wait))
    await _settle()
    w1 = asyncio.create_task(bh.run(asyncio.sleep, 0, "w1"))
    w2 = asyncio.create_task(bh.run(asyncio.sleep, 0, "w2"))
    await _settle()
    gate.set()
    await holder  # the release hands the slot to w1 (its future is resolved) ...
    w1.cancel()  # ... but w1 is cancelled before it runs: the slot must go to w2
    with pytest.raises(asyncio.CancelledError):
        await w1
    assert await w2 == "w2"
    assert bh.running == 0
    assert bh.queued == 0


async def test_timeout_outside_bulkhead() -> None:
    bh = Bulkhead(1, max_queued=5)
    gate = asyncio.Event()
    holder = asyncio.create_task(bh.run(gate.wait))
    await _settle()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await bh.run(asyncio.sleep, 0)
    assert bh.queued == 0
    gate.set()
    await holder
    assert bh.running == 0


async def test_acquire_context_manager_is_shared_and_reusable() -> None:
    bh = Bulkhead(2)
    assert bh.acquire() is bh.acquire()
    async with bh.acquire():
        async with bh.acquire():
            assert bh.running == 2
            with pytest.raises(BulkheadFullError):
                async with bh.acquire():
                    pass  # pragma: no cover
        assert bh.running == 1
    assert bh.running == 0


async def test_shared_between_functions_and_in_pipeline() -> None:
    bh = Bulkhead(1, name="shared")
    gate = asyncio.Event()

    @bh
    async def a() -> None:
        await gate.wait()

    @Pipeline(bh)
    async def b() -> None:
        return None

    t = asyncio.create_task(a())
    await _settle()
    with pytest.raises(BulkheadFullError):
        await b()
    gate.set()
    await t
    await b()
    assert bh in live_policies()


def test_repr() -> None:
    assert "max_concurrent=2" in repr(Bulkhead(2, name="r"))


# -- cancellation fuzz -------------------------------------------------------


async def test_cancellation_fuzz_leaks_no_slot() -> None:
    """Thousands of calls with random cancels, timeouts and errors: no slot leaks."""
    rng = random.Random(1234)
    bh = Bulkhead(4, max_queued=8, queue_timeout=0.003)
    peak = 0
    running = 0

    @bh
    async def work(kind: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            if kind == 0:
                raise ValueError("boom")
            for _ in range(kind):
                await asyncio.sleep(0)
            if kind == 3:
                await asyncio.sleep(0.001)
        finally:
            running -= 1

    async def one(i: int) -> None:
        kind = rng.randrange(5)
        action = rng.random()
        try:
            if action < 0.3:
                async with asyncio.timeout(rng.choice((0, 0.0005, 0.002))):
                    await work(kind)
            else:
                await work(kind)
        except (ValueError, TimeoutError, BulkheadFullError):
            pass

    pending: set[asyncio.Task[None]] = set()
    for i in range(3000):
        t = asyncio.create_task(one(i))
        pending.add(t)
        t.add_done_callback(pending.discard)
        if rng.random() < 0.2:
            victim = rng.choice(tuple(pending))
            victim.cancel()
        if i % 7 == 0:
            await asyncio.sleep(0)
        if i % 97 == 0:
            await asyncio.sleep(0.001)
    await asyncio.gather(*pending, return_exceptions=True)
    assert peak <= 4
    assert bh.running == 0
    assert bh.queued == 0
    assert bh.rejected > 0


# -- threads -----------------------------------------------------------------


def test_sync_bulkhead_with_threads() -> None:
    bh = Bulkhead(3, max_queued=100, name="threads")
    lock = threading.Lock()
    running = 0
    peak = 0

    @bh
    def work() -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.002)
        with lock:
            running -= 1
        return 1

    results: list[int] = []

    def worker() -> None:
        for _ in range(5):
            results.append(work())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 40
    assert peak == 3
    assert bh.running == 0
    assert bh.queued == 0


def test_sync_rejects_and_times_out() -> None:
    bh = Bulkhead(1, max_queued=1, queue_timeout=0.02)
    inside = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with bh.acquire_sync():
            inside.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(5)
    with pytest.raises(BulkheadFullError, match="waited"), bh.acquire_sync():
        pass  # pragma: no cover
    assert bh.queued == 0
    release.set()
    holder.join()
    assert bh.running == 0
    assert bh.run_sync(lambda: 7) == 7


def test_sync_queue_full_rejects_at_once() -> None:
    bh = Bulkhead(1)
    with bh.acquire_sync(), pytest.raises(BulkheadFullError):
        bh.run_sync(lambda: None)
    assert bh.running == 0


def test_sync_exception_releases() -> None:
    bh = Bulkhead(1)

    def boom() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        bh.run_sync(boom)
    assert bh.running == 0


async def test_thread_release_wakes_async_waiter() -> None:
    bh = Bulkhead(1, max_queued=1)
    inside = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with bh.acquire_sync():
            inside.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    await asyncio.to_thread(inside.wait, 5)
    waiter = asyncio.create_task(bh.run(asyncio.sleep, 0, "woken"))
    await _settle()
    assert bh.queued == 1
    release.set()
    assert await asyncio.wait_for(waiter, 5) == "woken"
    await asyncio.to_thread(holder.join)
    assert bh.running == 0


# -- the public steps: enter / leave / resize -----------------------------------


async def test_enter_and_leave_hold_one_slot() -> None:
    bh = Bulkhead(1, name="db")
    how = await bh.enter()
    assert how is Admission.SLOT
    assert (bh.running, bh.available) == (1, 0)
    with pytest.raises(BulkheadFullError):
        await bh.enter()
    assert bh.leave(how) is True
    assert bh.running == 0


async def test_leave_says_whether_an_enforcing_bulkhead_would_have_run_the_call() -> None:
    bh = Bulkhead(1, max_queued=1, enforce=False)
    held = await bh.enter()
    queued = await bh.enter()  # would have queued
    rejected = await bh.enter()  # would have been rejected
    assert (held, queued, rejected) == (Admission.SLOT, Admission.SHADOW_QUEUED, Admission.SHADOW_REJECTED)
    assert [bh.leave(rejected), bh.leave(queued), bh.leave(held)] == [False, True, True]
    assert (bh.running, bh.shadow_queued, bh.would_reject) == (0, 0, 1)


def test_enter_sync_and_leave() -> None:
    bh = Bulkhead(1)
    how = bh.enter_sync()
    with pytest.raises(BulkheadFullError):
        bh.enter_sync()
    assert bh.leave(how)
    assert bh.running == 0


async def test_resize_up_admits_waiters_at_once_and_down_takes_effect_as_calls_end() -> None:
    bh = Bulkhead(1, max_queued=5)
    gate = asyncio.Event()
    started: list[int] = []

    async def hold(i: int) -> None:
        started.append(i)
        await gate.wait()

    tasks = [asyncio.create_task(bh.run(hold, i)) for i in range(3)]
    await _settle()
    assert (bh.running, bh.queued) == (1, 2)
    bh.resize(3)
    await _settle()
    assert started == [0, 1, 2]
    assert (bh.running, bh.queued) == (3, 0)
    bh.max_concurrent = 1  # the property is the same step
    assert bh.running == 3  # nothing is interrupted
    gate.set()
    await asyncio.gather(*tasks)
    assert (bh.running, bh.available) == (0, 1)


def test_resize_validates() -> None:
    bh = Bulkhead(2)
    with pytest.raises(ValueError, match="max_concurrent"):
        bh.resize(0)
    with pytest.raises(TypeError, match="max_concurrent"):
        bh.max_concurrent = 2.5  # type: ignore[assignment]
    with pytest.raises(ValueError, match="max_queued"):
        bh.max_queued = -1
    assert bh.max_concurrent == 2
