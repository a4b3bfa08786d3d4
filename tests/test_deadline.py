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
    with pytest.raises(ValueError, match="seconds must be >= 0"), deadline(bad):
        pass


def test_bad_type() -> None:
    with pytest.raises(TypeError, match="seconds must be a number"), deadline("3"):  # type: ignore[arg-type]
        pass
