"""Deadlines: contextvar scope, nesting keeps the earliest, validation."""

from __future__ import annotations

import asyncio
import math

import pytest

from resilient import current_deadline, deadline, remaining
from resilient.testing import FakeClock


def test_no_deadline_by_default() -> None:
    assert remaining() is None
    assert current_deadline() is None


def test_remaining_counts_down_on_the_given_clock(clock: FakeClock) -> None:
    with deadline(5, clock=clock) as d:
        assert remaining() == 5
        clock.advance(2)
        assert remaining() == 3
        assert not d.expired
        clock.advance(4)
        assert remaining() == -1
        assert d.expired
    assert remaining() is None


def test_nested_deadlines_keep_the_earliest(clock: FakeClock) -> None:
    with deadline(2, clock=clock) as outer:
        with deadline(10, clock=clock) as inner:
            assert inner is outer
            assert remaining() == 2
        with deadline(1, clock=clock):
            assert remaining() == 1
        assert remaining() == 2


async def test_deadline_follows_the_task_not_other_tasks(clock: FakeClock) -> None:
    seen: list[float | None] = []

    async def child() -> None:
        seen.append(remaining())

    with deadline(3, clock=clock):
        await asyncio.create_task(child())
    await asyncio.create_task(child())
    assert seen == [3, None]


@pytest.mark.parametrize("bad", [-1, math.nan])
def test_bad_seconds(bad: float) -> None:
    with pytest.raises(ValueError, match="seconds must be a number of seconds >= 0"), deadline(bad):
        pass


def test_bad_type() -> None:
    with pytest.raises(TypeError, match="seconds must be a number"), deadline("3"):  # type: ignore[arg-type]
        pass


async def test_a_lifted_deadline_is_lifted_in_every_context_that_holds_it(clock: FakeClock) -> None:
    # The ASGI request timeout stops applying when the response starts, also
    # for the tasks the handler started before (they hold copies of the
    # context): it lifts its deadline in place.
    release = asyncio.Event()

    async def child() -> float | None:
        await release.wait()
        return remaining()

    with deadline(5, clock=clock) as outer:
        with deadline(10, clock=clock):
            pass
        d = current_deadline()
        assert d is outer
        task = asyncio.create_task(child())
        await asyncio.sleep(0)
        d.lift()
        assert remaining() is None
        assert d.remaining() == math.inf
        assert not d.expired
        release.set()
        assert await task is None
    with deadline(2, clock=clock) as caller, deadline(1, clock=clock) as mine:
        mine.lift(caller)  # now it follows the caller's
        assert remaining() == 2
        clock.advance(1.5)
        assert remaining() == 0.5
        caller.lift()
        mine.lift(caller)
        assert remaining() is None


def test_nothing_narrows_past_a_lifted_deadline(clock: FakeClock) -> None:
    with deadline(5, clock=clock) as d:
        d.lift()
        with deadline(3, clock=clock) as inner:
            assert inner is not d
            assert remaining() == 3


def test_limit_for_cuts_a_limit_to_the_deadline_and_says_so() -> None:
    from resilient.deadline import limit_for

    clock = FakeClock()
    assert limit_for(10.0) == (10.0, False)
    with deadline(3.0, clock=clock):
        assert limit_for(10.0) == (3.0, True)
        assert limit_for(3.0) == (3.0, False)  # a tie is our own limit
        assert limit_for(1.0) == (1.0, False)
        clock.advance(4)
        assert limit_for(1.0) == (0.0, True)  # expired: never below 0
        d = current_deadline()
        assert d is not None
        d.lift()
        assert limit_for(1.0) == (1.0, False)  # a lifted deadline is none
