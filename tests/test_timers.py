"""The shared timer queue behind every timeout, on a FakeClock."""

from __future__ import annotations

import asyncio

from resilient.testing import FakeClock
from resilient.timers import FIRED, TASK, TimerQueue, arm, expiry


async def hang() -> None:
    await asyncio.Event().wait()


async def test_one_armed_timer_serves_the_whole_queue(clock: FakeClock) -> None:
    queue = TimerQueue(clock, asyncio.get_running_loop())
    tasks = [asyncio.create_task(hang()) for _ in range(3)]
    entries = [expiry(1.0 + i, t) for i, t in enumerate(tasks)]
    for e in entries:
        assert queue.push(e)
    assert clock.pending_timers == 1
    assert len(queue) == 3
    clock.advance(1.0)
    await asyncio.sleep(0)
    assert entries[0][FIRED]
    assert tasks[0].cancelled()
    assert not entries[1][FIRED]
    assert clock.pending_timers == 1  # re-armed for the next entry
    queue.done(entries[1])  # the second call ends first: it never fires
    clock.advance(5)
    await asyncio.sleep(0)
    assert not entries[1][FIRED]
    assert entries[2][FIRED]
    assert len(queue) == 0
    assert clock.pending_timers == 0
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_done_after_the_entry_fired_is_harmless(clock: FakeClock) -> None:
    queue = TimerQueue(clock, asyncio.get_running_loop())
    task = asyncio.create_task(hang())
    entry = expiry(1.0, task)
    queue.push(entry)
    clock.advance(1)
    queue.done(entry)  # the queue is empty by now
    assert len(queue) == 0
    assert entry[TASK] is None
    await asyncio.gather(task, return_exceptions=True)


async def test_an_entry_expiring_before_the_tail_is_refused(clock: FakeClock) -> None:
    queue = TimerQueue(clock, asyncio.get_running_loop())
    task = asyncio.create_task(hang())
    assert queue.push(expiry(5.0, task))
    early = expiry(1.0, task)
    assert not queue.push(early)
    handle = arm(clock, early)
    clock.advance(1)
    assert early[FIRED]
    handle.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_finished_entries_behind_a_long_head_are_compacted(clock: FakeClock) -> None:
    queue = TimerQueue(clock, asyncio.get_running_loop())
    head_task = asyncio.create_task(hang())
    queue.push(expiry(100.0, head_task))
    task = asyncio.current_task()
    assert task is not None
    for i in range(1000):
        e = expiry(100.0 + i, task)
        queue.push(e)
        queue.done(e)
    assert len(queue.entries) < 200
    assert len(queue) == 1
    head_task.cancel()
    await asyncio.gather(head_task, return_exceptions=True)


def test_loop_queues_keep_one_queue_per_loop(clock: FakeClock) -> None:
    from resilient.timers import LoopQueues

    queues = LoopQueues(clock)
    loops = [asyncio.new_event_loop() for _ in range(2)]
    try:
        assert queues.find(loops[0]) is None
        first = queues.get(loops[0])
        assert queues.last is first
        assert first.loop is loops[0]
        assert first.clock is clock
        second = queues.get(loops[1])
        assert second is not first
        assert queues.get(loops[0]) is first
        assert queues.last is first
        assert queues.find(loops[1]) is second
    finally:
        for loop in loops:
            loop.close()
