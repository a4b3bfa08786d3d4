"""Shadow mode (``enforce=False``) of Bulkhead and AdaptiveConcurrency."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resilient import AdaptiveConcurrency, Bulkhead, BulkheadFullError
from resilient.events import REJECTED, WOULD_REJECT
from resilient.testing import FakeClock, recording


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_shadow_runs_calls_past_capacity_without_a_slot_and_reports_the_would_be_rejections() -> None:
    bh = Bulkhead(1, max_queued=1, name="db", enforce=False)
    gate = asyncio.Event()

    @bh
    async def work() -> str:
        await gate.wait()
        return "done"

    with recording() as rec:
        tasks = [asyncio.create_task(work()) for _ in range(4)]
        await _settle()
        # One holds the slot; the second would have queued; the last two would have been rejected.
        assert bh.running == 1
        assert bh.shadow_queued == 1
        assert bh.queued == 0
        assert bh.would_reject == 2
        gate.set()
        assert await asyncio.gather(*tasks) == ["done"] * 4
    assert rec.names() == [WOULD_REJECT, WOULD_REJECT]
    event = rec.events[0]
    assert event.policy == "db"
    assert event.exception is not None
    assert event.exception.endswith("BulkheadFullError")
    assert event.extras == {"reason": "bulkhead_full", "running": 1, "queued": 1}
    assert bh.rejected == 0
    # Nothing is left held: the calls let through never took a slot.
    assert (bh.running, bh.shadow_queued, bh.available) == (0, 0, 1)
    status = bh.status()
    assert status["would_reject"] == 2
    assert status["enforcing"] is False


async def test_shadow_decides_as_an_enforcing_twin() -> None:
    gate = asyncio.Event()

    async def arrivals(bh: Bulkhead) -> list[bool]:
        @bh
        async def work() -> None:
            await gate.wait()

        outcomes = []
        for _ in range(7):
            task = asyncio.create_task(work())
            await _settle()
            outcomes.append(not (task.done() and isinstance(task.exception(), BulkheadFullError)))
        return outcomes

    enforcing = Bulkhead(2, max_queued=3)
    shadow = Bulkhead(2, max_queued=3, enforce=False)
    admitted = await arrivals(enforcing)
    shadow_admitted = await arrivals(shadow)
    gate.set()
    await _settle()
    assert all(shadow_admitted)
    assert admitted == [True] * 5 + [False] * 2
    assert shadow.would_reject == enforcing.rejected == 2


async def test_a_call_let_through_never_blocks_a_later_one() -> None:
    bh = Bulkhead(1, enforce=False)
    async with bh.acquire():
        async with bh.acquire():  # over capacity: runs without a slot
            assert bh.running == 1
            assert bh.would_reject == 1
        assert bh.running == 1  # leaving the inner block gave back nothing it did not take
    assert bh.running == 0
    async with bh.acquire():
        assert bh.running == 1


def test_shadow_sync_wrapper_and_context_manager() -> None:
    bh = Bulkhead(1, enforce=False)

    @bh
    def inner() -> int:
        return bh.running

    with bh.acquire_sync():
        assert inner() == 1  # would be rejected: runs, holding nothing
        with bh.acquire_sync():
            pass
    assert bh.would_reject == 2
    assert bh.running == 0
    assert inner() == 1


async def test_enforce_callable_is_read_only_when_no_slot_is_free() -> None:
    reads: list[int] = []

    def switch() -> bool:
        reads.append(1)
        return len(reads) > 1

    bh = Bulkhead(1, enforce=switch)

    @bh
    async def work() -> None:
        pass

    for _ in range(5):
        await work()
    assert reads == []
    with recording() as rec:
        async with bh.acquire():
            await work()  # shadow: runs
            with pytest.raises(BulkheadFullError):
                await work()  # enforced
    assert rec.names() == [WOULD_REJECT, REJECTED]


async def test_switch_turned_off_while_queued_lets_a_timed_out_waiter_through() -> None:
    clock = FakeClock()
    enforce = [True]
    bh = Bulkhead(1, max_queued=1, queue_timeout=1.0, clock=clock, enforce=lambda: enforce[0])
    ran = []

    @bh
    async def work(tag: str) -> None:
        ran.append(tag)

    async with bh.acquire():
        task = asyncio.create_task(work("queued"))
        await _settle()
        assert bh.queued == 1
        enforce[0] = False
        with recording() as rec:
            clock.advance(1.0)
            await task
        assert ran == ["queued"]
        assert rec.names() == [WOULD_REJECT]
        assert bh.running == 1  # the block's slot only
    assert bh.running == 0


async def test_adaptive_concurrency_shadow_adapts_only_to_calls_it_would_have_run() -> None:
    lim = AdaptiveConcurrency(algorithm="aimd", initial_limit=2, min_limit=1, max_queued=1, enforce=False)

    @lim
    async def fail() -> None:
        raise ConnectionError

    gate = asyncio.Event()

    @lim
    async def hold() -> None:
        await gate.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await _settle()
    assert lim.running == 2
    with pytest.raises(ConnectionError):
        await fail()  # would have queued (then run): its failure backs the limit off
    assert lim.limit == 1
    assert lim.would_reject == 0
    holders.append(asyncio.create_task(hold()))  # would queue: fills the queue while it runs
    await _settle()
    assert lim.shadow_queued == 1
    with pytest.raises(ConnectionError):
        await fail()  # would have been rejected: says nothing about the backend
    assert lim.would_reject == 1
    assert lim.limit == 1
    gate.set()
    await asyncio.gather(*holders)
    assert lim.running == 0
    assert lim.shadow_queued == 0


async def test_adaptive_concurrency_acquire_in_shadow_mode() -> None:
    lim = AdaptiveConcurrency(algorithm="aimd", initial_limit=1, min_limit=1, enforce=False)
    async with lim.acquire():
        with pytest.raises(ValueError):
            async with lim.acquire():  # would be rejected: runs without a slot, adapts nothing
                raise ValueError
        assert lim.running == 1
        assert lim.limit == 1
    assert lim.running == 0
    assert lim.would_reject == 1


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_enforce_is_validated(bad: Any) -> None:
    with pytest.raises(TypeError, match="enforce"):
        Bulkhead(1, enforce=bad)
    with pytest.raises(TypeError, match="enforce"):
        AdaptiveConcurrency(enforce=bad)
