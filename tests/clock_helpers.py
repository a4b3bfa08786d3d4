"""Driving a pending call with a FakeClock: start it, let it arm its timer, advance."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from resilient.testing import FakeClock

T = TypeVar("T")


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run (a bounded number of steps) until ``condition()`` holds."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def after(clock: FakeClock, seconds: float, call: Awaitable[T]) -> T:
    """Run ``call`` until it waits, advance ``clock`` by ``seconds``, and await it."""
    task = asyncio.ensure_future(call)
    try:
        # A fixed number of loop steps, not "until a timer is armed": a policy's
        # shared timer may already be armed by an earlier call.
        for _ in range(50):
            if task.done():
                break
            await asyncio.sleep(0)
        clock.advance(seconds)
        await until(task.done)  # fails, rather than hangs, if nothing fired
        return task.result()
    finally:
        task.cancel()
