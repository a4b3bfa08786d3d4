"""Rate limiting basics: a token bucket that waits or rejects, per-key limits, adaptive throttling.

Run: python examples/ratelimit_basics.py
"""

from __future__ import annotations

import asyncio
import time

from resilient import RateLimitedError
from resilient.ratelimit import KeyedRateLimiter, RateLimiter
from resilient.throttle import AdaptiveThrottle


async def waiting_limiter() -> None:
    # 20 calls per second, bursts of 5: the first 5 go at once, the rest wait their turn.
    limiter = RateLimiter(20, per=1.0, burst=5, name="upstream")

    @limiter
    async def call(i: int) -> float:
        return time.perf_counter()

    start = time.perf_counter()
    times = await asyncio.gather(*(call(i) for i in range(10)))
    offsets = ", ".join(f"{t - start:.2f}" for t in times)
    print(f"wait mode: 10 calls at 20/s with burst 5 started at [{offsets}] s")


async def rejecting_limiter() -> None:
    limiter = RateLimiter(2, per=1.0, mode="reject", name="api")
    for i in range(3):
        try:
            await limiter.acquire()
            print(f"reject mode: call {i} admitted")
        except RateLimitedError as exc:
            print(f"reject mode: call {i} rejected, retry after {exc.retry_after:.2f} s")
    decision = limiter.try_acquire()
    print(f"try_acquire: allowed={decision.allowed} limit={decision.limit} remaining={decision.remaining}")


async def per_user() -> None:
    per_user = KeyedRateLimiter(1, per=1.0, burst=2, mode="reject", key=lambda user: user, max_keys=1000)

    @per_user
    async def handle(user: str) -> str:
        return f"hello {user}"

    outcomes = []
    for user in ["alice", "alice", "alice", "bob"]:
        try:
            outcomes.append(await handle(user))
        except RateLimitedError:
            outcomes.append(f"{user}: 429")
    print(f"per key: {outcomes} ({per_user.keys} buckets in memory)")


async def adaptive() -> None:
    throttle = AdaptiveThrottle(k=2.0, window=10.0, name="flaky")
    sent = 0

    @throttle
    async def overloaded_backend() -> None:
        nonlocal sent
        sent += 1
        raise ConnectionError("503")

    local = 0
    for _ in range(200):
        try:
            await overloaded_backend()
        except RateLimitedError:
            local += 1
        except ConnectionError:
            pass
    print(
        f"adaptive throttle: 200 calls to a dead backend, {sent} sent, {local} rejected locally "
        f"(p={throttle.rejection_probability:.2f})"
    )


def main() -> None:
    asyncio.run(waiting_limiter())
    asyncio.run(rejecting_limiter())
    asyncio.run(per_user())
    asyncio.run(adaptive())


if __name__ == "__main__":
    main()
