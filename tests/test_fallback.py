"""Fallback: values, handlers, predicates, base exceptions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resilient import Fallback, Outcome
from resilient.testing import recording


async def test_value_on_exception() -> None:
    @Fallback([])
    async def items() -> list[int]:
        raise ConnectionError

    assert await items() == []


def test_sync_value_on_exception() -> None:
    @Fallback("cached")
    def read() -> str:
        raise OSError

    assert read() == "cached"


async def test_handler_receives_the_outcome() -> None:
    seen: list[Outcome[Any]] = []

    def handler(outcome: Outcome[Any]) -> str:
        seen.append(outcome)
        return "fallback"

    @Fallback(handler=handler)
    async def fail() -> str:
        raise ValueError("bad")

    assert await fail() == "fallback"
    assert isinstance(seen[0].exception, ValueError)
    assert seen[0].result is None


async def test_async_handler() -> None:
    async def handler(outcome: Outcome[Any]) -> int:
        await asyncio.sleep(0)
        return outcome.result + 1

    @Fallback(handler=handler, on_result=lambda r: r < 0)
    async def compute() -> int:
        return -5

    assert await compute() == -4


def test_async_handler_refused_for_sync_functions() -> None:
    async def handler(outcome: Outcome[Any]) -> int:
        return 0

    def compute() -> int:
        return 1

    with pytest.raises(TypeError, match="async handler"):
        Fallback(handler=handler)(compute)


async def test_unmatched_exceptions_propagate() -> None:
    @Fallback(0, on=ConnectionError)
    async def fail() -> int:
        raise KeyError("k")

    with pytest.raises(KeyError):
        await fail()


async def test_good_results_pass_through() -> None:
    @Fallback(0, on_result=lambda r: r is None)
    async def compute() -> int:
        return 7

    assert await compute() == 7


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, asyncio.CancelledError])
async def test_base_exceptions_are_never_handled(exc_type: type[BaseException]) -> None:
    @Fallback(0, on=BaseException)
    async def fail() -> int:
        raise exc_type()

    with pytest.raises(exc_type):
        await fail()


def test_sync_keyboard_interrupt_is_never_handled() -> None:
    @Fallback(0, on=BaseException)
    def fail() -> int:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fail()


async def test_fallback_used_event() -> None:
    @Fallback(0, name="fb")
    async def fail() -> int:
        raise ConnectionError

    with recording() as events:
        await fail()
    (event,) = events.of("fallback_used")
    assert event.exception == "ConnectionError"
    assert event.policy == "fb"


def test_exactly_one_of_value_and_handler() -> None:
    with pytest.raises(TypeError, match="exactly one"):
        Fallback()
    with pytest.raises(TypeError, match="exactly one"):
        Fallback(1, handler=lambda o: 2)
    with pytest.raises(TypeError, match="handler must be callable"):
        Fallback(handler=3)  # type: ignore[arg-type]


def test_none_is_a_valid_value() -> None:
    @Fallback(None)
    def fail() -> int | None:
        raise ValueError

    assert fail() is None


async def test_fallbacks_used_tells_the_caller_which_answers_were_substitutes() -> None:
    from resilient.fallback import fallbacks_used

    @Fallback([], name="recs")
    async def recommendations(fail: bool) -> list[int]:
        if fail:
            raise ConnectionError
        return [1]

    with fallbacks_used() as used:
        assert await recommendations(False) == [1]
    assert used == []
    with fallbacks_used() as used:
        assert await recommendations(True) == []
        assert await asyncio.gather(recommendations(True), recommendations(False)) == [[], [1]]
    assert [u.policy for u in used] == ["recs", "recs"]
    assert isinstance(used[0].exception, ConnectionError)
    assert used[0].operation is not None
    assert used[0].operation.endswith("recommendations")
    # Outside a watch, nothing is recorded (and nothing breaks).
    assert await recommendations(True) == []


def test_fallbacks_used_sees_flagged_results_in_sync_code() -> None:
    from resilient.fallback import fallbacks_used

    @Fallback(0, on_result=lambda r: r < 0)
    def score() -> int:
        return -1

    with fallbacks_used() as used:
        assert score() == 0
    assert len(used) == 1
    assert used[0].exception is None
