"""Bulkhead, rate limiters, adaptive throttle and retry budget, beside their floors and peers.

Floors and peers: ``asyncio.Semaphore`` (in core.py, group "bulkhead"),
``aiolimiter.AsyncLimiter`` (skipped when not installed).
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable
from typing import Any

from benchmarks.cases import Case, sync_target, target
from resilient import Retry, RetryBudget
from resilient.concurrency import AdaptiveConcurrency, Bulkhead
from resilient.ratelimit import KeyedRateLimiter, RateLimiter
from resilient.throttle import AdaptiveThrottle

# Far above what a benchmark loop can reach: every call is under the limit.
_HIGH_RATE = 1e9
_LIVE_KEYS = 10_000


def _bulkhead_acquire() -> Callable[[], Any]:
    bh = Bulkhead(10)

    async def call() -> int:
        async with bh.acquire():
            return await target()

    return call


def _keyed() -> Callable[[], Any]:
    keys = itertools.cycle(range(_LIVE_KEYS))
    kl = KeyedRateLimiter(_HIGH_RATE, key=lambda: next(keys), max_keys=2 * _LIVE_KEYS)
    for k in range(_LIVE_KEYS):
        kl.try_acquire(k)
    return kl(target)


def _keyed_try_acquire() -> Callable[[], Any]:
    keys = itertools.cycle(range(_LIVE_KEYS))
    kl = KeyedRateLimiter(_HIGH_RATE, max_keys=2 * _LIVE_KEYS)
    for k in range(_LIVE_KEYS):
        kl.try_acquire(k)
    try_acquire = kl.try_acquire
    return lambda: try_acquire(next(keys))


def _cycle_floor() -> Callable[[], Any]:
    # What the keyed cases pay for their key source alone.
    keys = itertools.cycle(range(_LIVE_KEYS))

    async def call() -> int:
        next(keys)
        return await target()

    return call


def _aiolimiter() -> Callable[[], Any]:
    from aiolimiter import AsyncLimiter

    limiter = AsyncLimiter(_HIGH_RATE, 1)

    async def call() -> int:
        async with limiter:
            return await target()

    return call


CASES: list[Case] = [
    Case("Bulkhead(10)", "bulkhead", lambda: Bulkhead(10)(target), ours=True),
    Case("Bulkhead(10, max_queued=100)", "bulkhead", lambda: Bulkhead(10, max_queued=100)(target), ours=True),
    Case("async with Bulkhead.acquire()", "bulkhead", _bulkhead_acquire, ours=True),
    Case("AdaptiveConcurrency()", "bulkhead", lambda: AdaptiveConcurrency()(target), ours=True),
    Case("Bulkhead(10) sync", "bulkhead", lambda: Bulkhead(10)(sync_target), kind="sync", ours=True),
    Case("RateLimiter (under limit)", "ratelimit", lambda: RateLimiter(_HIGH_RATE)(target), ours=True),
    Case(
        "RateLimiter reject mode",
        "ratelimit",
        lambda: RateLimiter(_HIGH_RATE, mode="reject")(target),
        ours=True,
    ),
    Case("RateLimiter sync", "ratelimit", lambda: RateLimiter(_HIGH_RATE)(sync_target), kind="sync", ours=True),
    Case("RateLimiter.try_acquire()", "ratelimit", lambda: RateLimiter(_HIGH_RATE).try_acquire, kind="sync", ours=True),
    Case("itertools.cycle key source", "ratelimit", _cycle_floor, note="floor of the keyed cases"),
    Case("KeyedRateLimiter (10k live keys)", "ratelimit", _keyed, ours=True),
    Case("KeyedRateLimiter.try_acquire (10k keys)", "ratelimit", _keyed_try_acquire, kind="sync", ours=True),
    Case("AdaptiveThrottle (healthy)", "ratelimit", lambda: AdaptiveThrottle()(target), ours=True),
    Case(
        "Retry(3, budget=) sync",
        "retry",
        lambda: Retry(3, budget=RetryBudget())(sync_target),
        kind="sync",
        ours=True,
    ),
]

if importlib.util.find_spec("aiolimiter") is not None:
    CASES.append(Case("aiolimiter.AsyncLimiter", "ratelimit", _aiolimiter))
