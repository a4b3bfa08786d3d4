"""Clocks: the system clock and the FakeClock used by every time test."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import weakref

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


# -- timers ------------------------------------------------------------------

_ctx: contextvars.ContextVar[str] = contextvars.ContextVar("ctx", default="empty")


async def test_system_clock_timer_runs_on_the_loop_in_an_empty_context() -> None:
    fired = asyncio.Event()
    seen: list[str] = []
    _ctx.set("caller")

    def callback() -> None:
        seen.append(_ctx.get())
        fired.set()

    SYSTEM_CLOCK.call_at(SYSTEM_CLOCK.now(), callback)
    await fired.wait()
    assert seen == ["empty"]


async def test_system_clock_timer_can_be_cancelled() -> None:
    seen: list[int] = []
    handle = SYSTEM_CLOCK.call_at(SYSTEM_CLOCK.now(), lambda: seen.append(1))
    handle.cancel()
    done = asyncio.Event()
    SYSTEM_CLOCK.call_at(SYSTEM_CLOCK.now(), done.set)
    await done.wait()
    assert seen == []


def test_system_clock_threaded_timer_fires_on_the_timer_thread() -> None:
    fired = threading.Event()
    threads: list[str] = []
    seen: list[str] = []
    _ctx.set("caller")

    def callback() -> None:
        threads.append(threading.current_thread().name)
        seen.append(_ctx.get())
        fired.set()

    SYSTEM_CLOCK.call_at(SYSTEM_CLOCK.now(), callback, threaded=True)
    assert fired.wait(5)
    assert threads == ["resilient-timers"]
    assert seen == ["empty"]


def test_threaded_timers_fire_in_time_order_and_survive_a_raising_callback(caplog: pytest.LogCaptureFixture) -> None:
    order: list[int] = []
    done = threading.Event()
    now = SYSTEM_CLOCK.now()

    def boom() -> None:
        raise RuntimeError("timer bug")

    def last() -> None:
        order.append(3)
        done.set()

    SYSTEM_CLOCK.call_at(now + 0.002, last, threaded=True)
    SYSTEM_CLOCK.call_at(now, lambda: order.append(1), threaded=True)
    SYSTEM_CLOCK.call_at(now + 0.001, boom, threaded=True)
    cancelled = SYSTEM_CLOCK.call_at(now + 0.001, lambda: order.append(99), threaded=True)
    cancelled.cancel()
    assert done.wait(5)
    assert order == [1, 3]
    assert "timer callback" in caplog.text


def test_a_cancelled_timer_lets_go_of_its_callback() -> None:
    class Owner:
        def cb(self) -> None:
            pass  # pragma: no cover

    owner = Owner()
    ref = weakref.ref(owner)
    handle = SYSTEM_CLOCK.call_at(SYSTEM_CLOCK.now() + 3600, owner.cb, threaded=True)
    handle.cancel()
    del owner
    gc.collect()
    assert ref() is None


def test_fake_timers_fire_in_order_as_time_steps_to_each() -> None:
    clock = FakeClock(start=10)
    seen: list[tuple[str, float]] = []
    clock.call_at(13, lambda: seen.append(("c", clock.now())))
    clock.call_at(11, lambda: seen.append(("a", clock.now())))
    # A timer armed by a timer, within the advanced span, fires in the same advance.
    clock.call_at(12, lambda: clock.call_at(12.5, lambda: seen.append(("b", clock.now()))))
    t = clock.call_at(12, lambda: seen.append(("x", clock.now())))
    t.cancel()
    assert clock.pending_timers == 3
    clock.advance(5)
    assert seen == [("a", 11), ("b", 12.5), ("c", 13)]
    assert clock.now() == 15
    assert clock.pending_timers == 0


async def test_fake_timer_armed_on_a_loop_fires_on_that_loop_when_advanced_from_another_thread() -> None:
    clock = FakeClock()
    fired = asyncio.Event()
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def callback() -> None:
        threads.append(threading.get_ident())
        fired.set()

    clock.call_at(1, callback)
    advancer = threading.Thread(target=clock.advance, args=(1,))
    advancer.start()
    advancer.join()
    await fired.wait()
    assert threads == [loop_thread]


def test_fake_threaded_timer_fires_on_the_advancing_thread() -> None:
    clock = FakeClock()
    seen: list[str] = []
    _ctx.set("caller")
    clock.call_at(1, lambda: seen.append(_ctx.get()), threaded=True)
    clock.advance(1)
    assert seen == ["empty"]


def test_no_module_special_cases_the_system_clock() -> None:
    # Issue 15: every policy uses only the clock it was given; the system
    # clock's now() is time.monotonic itself, so binding clock.now costs
    # nothing and an `is SYSTEM_CLOCK` shortcut buys nothing.
    import pathlib
    import re
    import time

    from resilient.clock import SYSTEM_CLOCK

    assert SYSTEM_CLOCK.now is time.monotonic
    root = pathlib.Path(__file__).resolve().parent.parent / "resilient"
    found = [
        f"{path.relative_to(root)}:{n}"
        for path in sorted(root.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bis (not )?SYSTEM_CLOCK\b|\btype\(\w+\) is (not )?SystemClock\b", line)
    ]
    assert found == []
