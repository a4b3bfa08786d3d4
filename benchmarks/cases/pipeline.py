"""The full pipeline: Timeout + Retry + CircuitBreaker + Bulkhead + RateLimiter, against peers doing the same.

Ours is the order DESIGN.md recommends (outermost first): rate limiter,
total timeout, retry, breaker, bulkhead, attempt timeout. The peer rows
configure the same policies as closely as each library allows.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from benchmarks.cases import Case, sync_target, target
from resilient import CircuitBreaker, Pipeline, Retry, Timeout
from resilient.concurrency import Bulkhead
from resilient.ratelimit import RateLimiter

_HIGH_RATE = 1e9


def _full(attempt_timeout: bool = True) -> Callable[[], Any]:
    policies: list[Any] = [
        RateLimiter(_HIGH_RATE),
        Timeout(30),
        Retry(3),
        CircuitBreaker(),
        Bulkhead(100),
    ]
    if attempt_timeout:
        policies.append(Timeout(10))
    return Pipeline(*policies, name="full")(target)


def _full_sync() -> Callable[[], Any]:
    return Pipeline(RateLimiter(_HIGH_RATE), Retry(3), CircuitBreaker(), Bulkhead(100))(sync_target)


def _pyresilience() -> Callable[[], Any]:
    from pyresilience import (
        BulkheadConfig,
        CircuitBreakerConfig,
        RateLimiterConfig,
        RetryConfig,
        TimeoutConfig,
        resilient,
    )

    return resilient(  # type: ignore[no-any-return]
        retry=RetryConfig(max_attempts=3),
        timeout=TimeoutConfig(seconds=30),
        circuit_breaker=CircuitBreakerConfig(),
        bulkhead=BulkheadConfig(max_concurrent=100),
        rate_limiter=RateLimiterConfig(max_calls=1_000_000_000, period=1.0),
    )(target)


def _tenacity_aiobreaker_semaphore() -> Callable[[], Any]:
    import asyncio

    import aiobreaker
    import tenacity

    breaker = aiobreaker.CircuitBreaker(fail_max=5)
    sem = asyncio.Semaphore(100)

    @tenacity.retry(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_exponential())
    async def call() -> int:
        async with asyncio.timeout(30):
            async with sem:
                return await breaker.call_async(target)  # type: ignore[no-any-return]

    return call


CASES = [
    Case("full pipeline (RL, T, Retry, CB, BH, T)", "pipeline", _full, ours=True),
    Case("full pipeline without attempt Timeout", "pipeline", lambda: _full(False), ours=True),
    Case("full pipeline sync (RL, Retry, CB, BH)", "pipeline", _full_sync, kind="sync", ours=True),
]
if importlib.util.find_spec("pyresilience") is not None:
    CASES.append(Case("pyresilience retry+timeout+CB+bulkhead+RL", "pipeline", _pyresilience))
if importlib.util.find_spec("aiobreaker") is not None and importlib.util.find_spec("tenacity") is not None:
    CASES.append(
        Case("tenacity + asyncio.timeout + Semaphore + aiobreaker", "pipeline", _tenacity_aiobreaker_semaphore)
    )
