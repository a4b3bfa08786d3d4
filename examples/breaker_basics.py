"""Circuit breaker basics: open on failures, fail fast, probe, recover; isolate and reset.

A fake dependency goes down for a while; a breaker in front of it opens,
rejects calls in microseconds while it is down, probes it after the break
and closes when it is back. Runs in about a second, no network.
"""

from __future__ import annotations

import asyncio
import time

from resilient.breaker import CircuitBreaker, StateChange
from resilient.errors import CircuitOpenError


class Upstream:
    """A dependency that can be switched down and up, counting the calls it receives."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0

    async def fetch(self, item: int) -> str:
        self.calls += 1
        await asyncio.sleep(0.001)
        if not self.up:
            raise ConnectionError("upstream unavailable")
        return f"item-{item}"


def show(change: StateChange) -> None:
    print(f"    [{change.name}] {change.previous} -> {change.state}")


async def main() -> None:
    upstream = Upstream()
    breaker = CircuitBreaker(
        "upstream",
        failure_ratio=0.5,
        sampling_duration=10,
        minimum_throughput=10,
        break_duration=lambda failed_probes, _last: min(0.1 * 2**failed_probes, 0.4),
        on=ConnectionError,
        on_open=show,
        on_half_open=show,
        on_close=show,
    )
    fetch = breaker(upstream.fetch)

    async def traffic(label: str, n: int, pause: float = 0.0) -> None:
        ok = failed = rejected = 0
        start = time.perf_counter()
        for i in range(n):
            try:
                await fetch(i)
                ok += 1
            except ConnectionError:
                failed += 1
            except CircuitOpenError:
                rejected += 1
            if pause:
                await asyncio.sleep(pause)
        ms = (time.perf_counter() - start) * 1000
        print(
            f"{label:<34} ok={ok:<3} failed={failed:<3} rejected={rejected:<3} "
            f"upstream calls={upstream.calls:<4} state={breaker.state} ({ms:.0f} ms)"
        )

    print("1. healthy upstream")
    await traffic("   20 calls", 20)

    print("2. upstream goes down: the breaker opens once half the calls in its 10 s window failed")
    upstream.up = False
    await traffic("   200 calls", 200)
    m = breaker.metrics
    print(f"   window: {m.calls} calls, {m.failures} failures; rejected calls never reached the upstream")

    print("3. still down: each failed probe doubles the break (0.1 s, 0.2 s, 0.4 s)")
    await traffic("   calls for ~0.8 s", 80, pause=0.01)

    print("4. upstream recovers: the next probe succeeds and the circuit closes")
    upstream.up = True
    await traffic("   calls for ~0.5 s", 50, pause=0.01)

    print("5. manual control: isolate() holds it open, reset() closes it")
    breaker.isolate()
    try:
        await fetch(0)
    except CircuitOpenError as exc:
        print(f"   rejected: {exc} (retry_after={exc.retry_after})")
    breaker.reset()
    await traffic("   after reset()", 5)
    print(f"status: {breaker.status()}")


if __name__ == "__main__":
    asyncio.run(main())
