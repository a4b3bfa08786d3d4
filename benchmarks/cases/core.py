"""Foundation cases: floors, Retry, Timeout, Fallback, Pipeline, budgets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from benchmarks.cases import Case, sync_target, target
from resilient import Fallback, Pipeline, Retry, RetryBudget, Timeout


def _bare() -> Callable[[], Any]:
    return target


def _asyncio_timeout() -> Callable[[], Any]:
    async def call() -> int:
        async with asyncio.timeout(10):
            return await target()

    return call


def _semaphore() -> Callable[[], Any]:
    sem = asyncio.Semaphore(10)

    async def call() -> int:
        async with sem:
            return await target()

    return call


CASES = [
    Case("bare await", "floor", _bare),
    Case("bare call (sync)", "floor", lambda: sync_target, kind="sync"),
    Case("asyncio.timeout", "timeout", _asyncio_timeout),
    Case("asyncio.Semaphore", "bulkhead", _semaphore),
    Case("Pipeline() empty", "pipeline", lambda: Pipeline()(target), ours=True),
    Case("Retry(3)", "retry", lambda: Retry(3)(target), ours=True),
    Case("Retry(3) sync", "retry", lambda: Retry(3)(sync_target), kind="sync", ours=True),
    Case("Retry(3, budget=)", "retry", lambda: Retry(3, budget=RetryBudget())(target), ours=True),
    Case("Timeout(10)", "timeout", lambda: Timeout(10)(target), ours=True),
    Case("Fallback(value=0)", "fallback", lambda: Fallback(0)(target), ours=True),
    Case("Pipeline(Retry)", "pipeline", lambda: Pipeline(Retry(3))(target), ours=True),
    Case(
        "Pipeline(Timeout, Retry, Timeout)",
        "pipeline",
        lambda: Pipeline(Timeout(30), Retry(3), Timeout(10))(target),
        ours=True,
    ),
]
