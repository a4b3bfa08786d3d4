"""Checked by mypy --strict in tests/test_typing.py: what decorated functions' types say."""

from __future__ import annotations

from typing import assert_type

from resilient import Fallback, Outcome, Retry


@Fallback(None)
async def names() -> list[str]:
    return ["a"]


@Fallback([])
def numbers() -> list[int]:
    return [1]


async def fallback_widens_the_return_type() -> None:
    assert_type(await names(), list[str] | None)
    assert_type(numbers(), list[int])  # an empty list adds nothing mypy can tell apart


def handler(outcome: Outcome[object]) -> str:
    return "default"


async def async_handler(outcome: Outcome[object]) -> int:
    return 0


@Fallback(handler=handler)
def label() -> bytes:
    return b""


@Fallback(handler=async_handler)
async def count() -> float:
    return 1.0


@Retry(3)
async def retried(x: int) -> str:
    return str(x)


async def handlers_widen_it_too() -> None:
    assert_type(label(), bytes | str)
    assert_type(await count(), float | int)
    assert_type(await retried(1), str)
