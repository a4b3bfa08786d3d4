"""Clocks: the system clock and the FakeClock used by every time test."""

from __future__ import annotations

import asyncio

import pytest

from resilient import SYSTEM_CLOCK, Clock
from resilient.testing import FakeClock


def test_system_clock_is_monotonic_and_satisfies_the_protocol() -> None:
    assert isinstance(SYSTEM_CLOCK, Clock)
    a = SYSTEM_CLOCK.now()
    assert SYSTEM_CLOCK.now() >= a
    SYSTEM_CLOCK.sleep(0)


async def test_system_clock_async_sleep() -> None:
    await SYSTEM_CLOCK.asleep(0)


async def test_fake_clock_wakes_sleepers_in_order_on_advance() -> None:
    clock = FakeClock(start=100)
    assert isinstance(clock, Clock)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.asleep(seconds)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper("late", 5)), asyncio.create_task(sleeper("early", 1))]
    await asyncio.sleep(0)
    assert clock.sleepers == 2
    clock.advance(0.5)
    await asyncio.sleep(0)
    assert woke == []
    clock.advance(0.5)
    await asyncio.sleep(0)
    assert woke == ["early"]
    clock.advance(10)
    await asyncio.gather(*tasks)
    assert woke == ["early", "late"]
    assert clock.now() == 111
    assert clock.sleeps == [5, 1]


async def test_auto_advance_moves_time_without_waiting() -> None:
    clock = FakeClock(auto_advance=True)
    await clock.asleep(30)
    await clock.asleep(30)
    assert clock.now() == 60


def test_sync_sleep_advances() -> None:
    clock = FakeClock()
    clock.sleep(2.5)
    assert clock.now() == 2.5
    clock.set(10)
    assert clock.now() == 10
    clock.set(5)  # never backwards
    assert clock.now() == 10


def test_advance_rejects_negative() -> None:
    with pytest.raises(ValueError, match="seconds"):
        FakeClock().advance(-1)


async def test_cancelled_sleeper_does_not_break_advance() -> None:
    clock = FakeClock()
    task = asyncio.create_task(clock.asleep(5))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    clock.advance(10)
    await asyncio.sleep(0)
    assert clock.sleepers == 0
