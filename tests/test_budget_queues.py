"""Why RetryBudget does not fit a queue worker (docs/policies/retry-budget.md, "Which budget fits a queue").

A worker draining the backlog of a down subscriber makes its own calls: the
faster attempts fail, the more calls it makes, and a ratio-of-calls budget
refuses most events their retries. These tests measure the figures the docs
give, on a fake clock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from resilient import GiveUp, Retry, RetryBudget, exponential
from resilient.retry import RetryBudgetLike
from resilient.testing import FakeClock


async def drain(
    backlog: int, budget: RetryBudgetLike | None, clock: FakeClock, workers: int = 50
) -> tuple[collections.Counter[str], int]:
    """Deliver ``backlog`` events to a subscriber that refuses every connection in 1 ms, ``workers`` at a time."""
    reasons: collections.Counter[str] = collections.Counter()
    after_one = 0

    def dead_letter(gave_up: GiveUp) -> None:
        nonlocal after_one
        reasons[gave_up.reason] += 1
        after_one += gave_up.attempts == 1

    async def deliver(event: int) -> None:
        await clock.asleep(0.001)
        raise ConnectionError("refused")

    guarded = Retry(5, backoff=exponential(0.1, jitter=None), budget=budget, on_give_up=dead_letter, clock=clock)(
        deliver
    )
    queue = list(range(backlog))

    async def worker() -> None:
        while queue:
            event = queue.pop()
            with contextlib.suppress(ConnectionError):
                await guarded(event)

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    while not all(task.done() for task in tasks):
        for _ in range(5):
            await asyncio.sleep(0)
        clock.advance(0.001)
    return reasons, after_one


async def test_a_ratio_budget_dead_letters_a_down_subscribers_backlog_in_seconds() -> None:
    clock = FakeClock()
    reasons, after_one = await drain(1000, RetryBudget(clock=clock), clock)
    assert sum(reasons.values()) == 1000
    assert reasons["budget"] >= 950  # nearly every event was refused its retries...
    assert after_one >= 750  # ...most of them before their first retry...
    assert clock.now() < 2.0  # ...and the whole backlog was gone in under 2 s.


async def test_without_the_budget_every_event_gets_its_attempts() -> None:
    clock = FakeClock()
    reasons, after_one = await drain(200, None, clock)
    assert reasons == {"attempts": 200}
    assert after_one == 0
