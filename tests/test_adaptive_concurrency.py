"""AdaptiveConcurrency: the AIMD limit over a Bulkhead (the gradient one: tests/test_adaptive_gradient.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resilient import BulkheadFullError
from resilient.concurrency import AdaptiveConcurrency, Bulkhead
from resilient.testing import FakeClock


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"min_limit": 0}, "min_limit"),
        ({"initial_limit": 0}, "initial_limit"),
        ({"min_limit": 5, "max_limit": 4, "initial_limit": 4}, "max_limit"),
        ({"initial_limit": 50, "max_limit": 10}, "initial_limit"),
        ({"backoff_ratio": 1.0}, "backoff_ratio"),
        ({"backoff_ratio": 0}, "backoff_ratio"),
        ({"latency_threshold": 0}, "latency_threshold"),
        ({"max_queued": -1}, "max_queued"),
    ],
)
def test_bad_config(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ValueError, match=param):
        AdaptiveConcurrency(**kwargs)


async def test_is_a_bulkhead_and_grows_under_load() -> None:
    ac = AdaptiveConcurrency(algorithm="aimd", initial_limit=2, max_limit=5, max_queued=100, name="ac")
    assert isinstance(ac, Bulkhead)

    @ac
    async def work() -> None:
        await asyncio.sleep(0)

    await asyncio.gather(*(work() for _ in range(50)))
    assert ac.limit == 5  # +1 per success while at least half used, capped at max_limit
    assert ac.running == 0
    assert ac.status()["limit"] == 5


async def test_does_not_grow_when_mostly_idle() -> None:
    ac = AdaptiveConcurrency(algorithm="aimd", initial_limit=10)

    async def work() -> None:
        return None

    for _ in range(20):
        await ac.run(work)  # one at a time: 1 * 2 < 10
    assert ac.limit == 10


async def test_failures_shrink_the_limit() -> None:
    ac = AdaptiveConcurrency(algorithm="aimd", initial_limit=10, min_limit=2, backoff_ratio=0.5, on=ConnectionError)

    async def boom() -> None:
        raise ConnectionError("x")

    async def other() -> None:
        raise KeyError("not a drop")

    with pytest.raises(KeyError):
        await ac.run(other)
    assert ac.limit == 10
    with pytest.raises(ConnectionError):
        await ac.run(boom)
    assert ac.limit == 5
    for _ in range(5):
        with pytest.raises(ConnectionError):
            await ac.run(boom)
    assert ac.limit == 2


async def test_slow_calls_count_as_drops(auto_clock: FakeClock) -> None:
    ac = AdaptiveConcurrency(algorithm="aimd", initial_limit=10, latency_threshold=1.0, clock=auto_clock)

    async def slow() -> str:
        await auto_clock.asleep(2)
        return "slow"

    assert await ac.run(slow) == "slow"
    assert ac.limit == 9


async def test_lowered_limit_shrinks_as_calls_finish() -> None:
    ac = AdaptiveConcurrency(algorithm="aimd", initial_limit=4, min_limit=1, backoff_ratio=0.5, max_queued=10)
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    holders = [asyncio.create_task(ac.run(hold)) for _ in range(4)]
    await _settle()

    async def boom() -> None:
        raise OSError("x")

    waiter = asyncio.create_task(ac.run(boom))
    await _settle()
    assert ac.queued == 1
    gate.set()
    await asyncio.gather(*holders)
    with pytest.raises(OSError):
        await waiter
    assert ac.running == 0
    assert ac.queued == 0
    assert ac.limit < 4


async def test_raised_limit_admits_waiters() -> None:
    ac = AdaptiveConcurrency(algorithm="aimd", initial_limit=2, max_limit=10, max_queued=10)
    gates = [asyncio.Event() for _ in range(4)]
    started: list[int] = []

    async def hold(i: int) -> None:
        started.append(i)
        await gates[i].wait()

    tasks = [asyncio.create_task(ac.run(hold, i)) for i in range(4)]
    await _settle()
    assert (ac.running, ac.queued) == (2, 2)
    # One success while the limit is fully used: its slot goes to a waiter, and
    # the limit grows by one, which admits the other waiter too.
    gates[0].set()
    await _settle()
    assert ac.limit == 3
    assert started == [0, 1, 2, 3]
    assert (ac.running, ac.queued) == (3, 0)
    for g in gates:
        g.set()
    await asyncio.gather(*tasks)
    assert ac.running == 0


async def test_rejects_like_a_bulkhead() -> None:
    ac = AdaptiveConcurrency(algorithm="aimd", initial_limit=1, max_limit=1)
    async with ac.acquire():
        with pytest.raises(BulkheadFullError):
            async with ac.acquire():
                pass  # pragma: no cover
    assert ac.running == 0


async def test_cancellation_releases() -> None:
    ac = AdaptiveConcurrency(algorithm="aimd", initial_limit=1, max_queued=1)
    t = asyncio.create_task(ac.run(asyncio.sleep, 10))
    await _settle()
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert ac.running == 0
    assert ac.limit == 1


def test_sync() -> None:
    ac = AdaptiveConcurrency(algorithm="aimd", initial_limit=3, backoff_ratio=0.5)

    def boom() -> None:
        raise ValueError("x")

    with pytest.raises(ValueError, match="x"):
        ac.run_sync(boom)
    assert ac.limit == 1
    assert ac.run_sync(lambda: 5) == 5
    assert ac.limit == 2
    assert "AdaptiveConcurrency(limit=2" in repr(ac)


def test_resize_sets_the_limit_within_its_bounds_and_the_algorithm_goes_on_from_there() -> None:
    ac = AdaptiveConcurrency(algorithm="aimd", initial_limit=2, max_limit=10)
    ac.resize(6)
    assert ac.limit == 6
    with pytest.raises(ValueError, match="max_concurrent"):
        ac.resize(11)
    ac.run_sync(lambda: None)  # 1 * 2 < 6: unchanged
    assert ac.limit == 6
