"""One rate limiter, two stores, and shadow mode.

1. Shadow mode: a new limit is rolled out with ``enforce=False``: every call
   goes through, and the ones it would have rejected are counted and
   reported as ``would_reject`` events; then the limit is switched on.
2. A shared limit: two "replicas" (two limiters, each with its own
   ``RedisRateStore`` and connections) share one per-client quota on a
   redis-server this example starts on a free port of 127.0.0.1; one replica
   is async code, the other sync code, with the same API.

If redis-server is not installed, part 2 says so and is skipped.

Run: python examples/ratelimit_stores_and_shadow.py
"""

from __future__ import annotations

import asyncio

from _local_redis import local_redis  # a throwaway redis-server for the example

from resilient import RateLimitedError
from resilient.events import WOULD_REJECT, ResilienceEvent
from resilient.ratelimit import KeyedRateLimiter, RateLimiter


async def shadow_mode() -> None:
    flags = {"enforce": False}
    reported: list[ResilienceEvent] = []

    def report(event: ResilienceEvent) -> None:
        if event.name == WOULD_REJECT:
            reported.append(event)

    limiter = RateLimiter(
        5, burst=5, mode="reject", name="partner", enforce=lambda: flags["enforce"], listeners=[report]
    )

    @limiter
    async def call_partner(i: int) -> int:
        return i

    done = [await call_partner(i) for i in range(20)]
    print(
        f"shadow mode: {len(done)} of 20 calls went through; {limiter.would_reject} would have been rejected "
        f"(first retry_after {reported[0].extras['retry_after']:.2f} s)"
    )
    flags["enforce"] = True  # the limit looks right: switch it on
    try:
        await call_partner(20)
    except RateLimitedError as exc:
        print(f"enforcing: rejected, retry after {exc.retry_after:.2f} s")
    else:
        print("enforcing: admitted (a token came back meanwhile)")


def replica(url: str) -> KeyedRateLimiter:
    """The same limiter in every replica: same name, same options, one Redis."""
    from resilient.redis import RedisRateStore

    # 3 requests per client per minute, for the whole fleet.
    return KeyedRateLimiter(3, per=60, burst=3, mode="reject", name="per-client", store=RedisRateStore(url, timeout=1))


async def shared_limit(url: str) -> None:
    a, b = replica(url), replica(url)
    answers = []
    for i in range(6):
        if i % 2 == 0:
            decision = await a.atry_acquire("203.0.113.7")  # replica A: async code
        else:
            decision = b.try_acquire("203.0.113.7")  # replica B: sync code, same API
        answers.append("200" if decision.allowed else f"429 (retry after {decision.retry_after:.0f} s)")
    print(f"two replicas, one quota of 3: {answers}")
    print(f"another client still has its own: {(await a.atry_acquire('198.51.100.1')).allowed}")
    assert a.store.status()["redis_healthy"] is True


def main() -> None:
    asyncio.run(shadow_mode())
    with local_redis("the shared-limit part") as url:
        if url is not None:
            asyncio.run(shared_limit(url))


if __name__ == "__main__":
    main()
