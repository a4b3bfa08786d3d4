"""Adaptive limits: a concurrency limit that follows latency, and SRE-style client throttling.

Run: python examples/adaptive_limits.py
"""

from __future__ import annotations

import asyncio
import random

from resilient import AdaptiveConcurrency, AdaptiveThrottle, BulkheadFullError, RateLimitedError
from resilient.concurrency import Gradient2


async def gradient_limit() -> None:
    """The default algorithm: the limit follows the latency the backend shows as its own queue builds."""
    capacity, base = 8, 0.005  # the backend serves 8 calls at once in 5 ms; more queue up inside it
    inflight = 0
    limiter = AdaptiveConcurrency(initial_limit=30, max_limit=100, name="inventory")

    @limiter
    async def inventory() -> None:
        nonlocal inflight
        inflight += 1
        try:
            await asyncio.sleep(base * max(1.0, inflight / capacity))
        finally:
            inflight -= 1

    shed = 0

    async def client(end: float) -> None:
        nonlocal shed
        loop = asyncio.get_running_loop()
        while loop.time() < end:
            try:
                await inventory()
            except BulkheadFullError:
                shed += 1
                await asyncio.sleep(base)

    end = asyncio.get_running_loop().time() + 1.5
    await asyncio.gather(*(client(end) for _ in range(40)))  # 40 callers: five times what it can serve
    algorithm = limiter.algorithm
    assert isinstance(algorithm, Gradient2)
    print(
        f"gradient: limit went from 30 to {limiter.limit} for a backend that serves {capacity} at once "
        f"(baseline {1000 * (algorithm.baseline or 0):.1f} ms, {shed} calls shed)"
    )


async def main() -> None:
    await gradient_limit()

    # AIMD: the limit grows by one per good call and shrinks by 10 % when a
    # call fails or is slower than the threshold.
    limiter = AdaptiveConcurrency(
        algorithm="aimd", initial_limit=10, max_limit=50, latency_threshold=0.02, name="search"
    )
    healthy = True

    @limiter
    async def search() -> str:
        await asyncio.sleep(0.001 if healthy else 0.05)
        return "ok"

    async def burst(n: int) -> int:
        results = await asyncio.gather(*(search() for _ in range(n)), return_exceptions=True)
        return sum(isinstance(r, BulkheadFullError) for r in results)

    for _ in range(20):
        await burst(10)
    print(f"healthy dependency: limit grew to {limiter.limit}")
    healthy = False
    for _ in range(5):
        await burst(10)
    print(f"slow dependency: limit shrank to {limiter.limit}")

    # Google SRE client-side throttling: when the backend rejects most
    # calls, the client rejects some locally instead of sending them.
    throttle = AdaptiveThrottle(k=2.0, random=random.Random(1).random, name="backend")
    rejects_everything = True

    @throttle
    async def call_backend() -> str:
        if rejects_everything:
            raise ConnectionError("backend over capacity")
        return "ok"

    sent = local = 0
    for _ in range(200):
        try:
            await call_backend()
        except RateLimitedError:
            local += 1
        except ConnectionError:
            sent += 1
    print(f"backend rejecting: {sent} calls sent, {local} rejected locally without a request")


if __name__ == "__main__":
    asyncio.run(main())
