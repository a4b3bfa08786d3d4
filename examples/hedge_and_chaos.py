"""Hedging cuts the tail that injected latency creates.

Run: python examples/hedge_and_chaos.py
"""

from __future__ import annotations

import asyncio
import random
import statistics

from resilient import Hedge, Latency, Pipeline


async def backend() -> str:
    await asyncio.sleep(0.001)
    return "ok"


async def measure(fn: object, n: int = 60) -> list[float]:
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(n):
        start = loop.time()
        await fn()  # type: ignore[operator]
        times.append((loop.time() - start) * 1000)
    return times


async def main() -> None:
    rnd = random.Random(5)
    # 20 % of calls get 50 ms of extra latency: a slow tail.
    slow_tail = Latency(0.2, 0.05, random=rnd.random)
    plain = slow_tail(backend)
    hedged = Pipeline(Hedge(0.01, max_hedged=1), Latency(0.2, 0.05, random=rnd.random))(backend)
    for name, fn in (("unprotected", plain), ("hedged", hedged)):
        times = sorted(await measure(fn))
        p50 = statistics.median(times)
        p95 = times[int(len(times) * 0.95) - 1]
        print(f"{name:>12}: p50 {p50:5.1f} ms  p95 {p95:5.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
