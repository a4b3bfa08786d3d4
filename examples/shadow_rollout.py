"""Rolling out a circuit breaker, a bulkhead and an adaptive throttle in shadow mode.

Each policy is built with ``enforce=`` reading a feature flag. While the flag
is off, the policies decide exactly as they would and let every call
through; what they would have rejected shows up as ``would_reject`` events
and counts. Once the numbers look right, flipping the flag enforces them,
with no redeploy. Runs on a FakeClock: no sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from resilient import Bulkhead, CircuitBreaker, Pipeline, RejectedError
from resilient.events import WOULD_REJECT
from resilient.testing import FakeClock, recording
from resilient.throttle import AdaptiveThrottle

flags = {"enforce": False}


def enforce() -> bool:
    return flags["enforce"]


async def main() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("inventory", consecutive_failures=3, break_duration=5, clock=clock, enforce=enforce)
    bulkhead = Bulkhead(2, name="inventory", enforce=enforce)
    throttle = AdaptiveThrottle(k=2, window=30, clock=clock, random=lambda: 0.4, name="inventory", enforce=enforce)
    guarded = Pipeline(throttle, breaker, bulkhead)

    down = {"now": True}
    served = Counter[str]()

    @guarded
    async def fetch(item: int) -> str:
        await asyncio.sleep(0)
        if down["now"]:
            served["failed"] += 1
            raise ConnectionError("inventory is down")
        served["ok"] += 1
        return f"item {item}"

    async def call(item: int) -> None:
        with contextlib.suppress(ConnectionError, RejectedError):  # the upstream's error, or a policy's refusal
            await fetch(item)

    with recording() as rec:
        # An outage, with bursts of 4 concurrent calls: every call still reaches the upstream.
        for burst in range(5):
            await asyncio.gather(*(call(burst * 4 + i) for i in range(4)))
            clock.advance(1)
    would = Counter(e.policy_type for e in rec.events if e.name == WOULD_REJECT)
    print(f"shadow mode: {sum(served.values())} of 20 calls reached the upstream")
    print(f"  would have rejected: {dict(sorted(would.items()))}")
    print(f"  breaker {breaker.effective_state.value}, would_reject={breaker.would_reject}")
    print(f"  bulkhead would_reject={bulkhead.would_reject}, throttle would_reject={throttle.would_reject}")
    assert sum(served.values()) == 20
    assert breaker.would_reject > 0
    assert bulkhead.would_reject > 0

    flags["enforce"] = True  # the numbers look right: enforce, no redeploy
    served.clear()
    for i in range(5):
        await call(100 + i)
    print(f"enforcing: {sum(served.values())} of 5 calls reached the upstream (throttled or failed fast)")
    assert sum(served.values()) <= 1  # at most the breaker's one probe


if __name__ == "__main__":
    asyncio.run(main())
