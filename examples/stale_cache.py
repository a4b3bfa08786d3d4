"""StaleCache: keep answering while the dependency is down, and never stampede it.

A pretend price service (in-process, no network) goes through a normal
period, an outage and a recovery. The cache sits outside Retry, the
breaker-like rejection and the per-attempt timeout, as in a real pipeline.

Run: python examples/stale_cache.py   (about one second)
"""

from __future__ import annotations

import asyncio

from resilient import Pipeline, Retry, Timeout
from resilient.cache import StaleCache, last_lookup
from resilient.events import ResilienceEvent


class PriceService:
    """A dependency that can be slow, down, or fine."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False
        self.version = 1

    async def price(self, sku: str) -> str:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.down:
            raise ConnectionError("price service unreachable")
        return f"{sku}: 9.99 (v{self.version})"


def show(label: str, value: str) -> None:
    lookup = last_lookup()
    how = f"{lookup.state}, age {lookup.age:.2f} s" if lookup else "?"
    print(f"{label:<38} -> {value:<22} [{how}]")


async def main() -> None:
    service = PriceService()
    events: list[ResilienceEvent] = []
    cache = StaleCache(ttl=0.2, stale_ttl=5.0, name="prices", listeners=[events.append])
    price = Pipeline(
        cache,
        Retry(2, on=ConnectionError),
        Timeout(0.5),
        name="price-api",
    )(service.price)

    print("1,000 concurrent requests for a cold key:")
    results = await asyncio.gather(*(price("sku-1") for _ in range(1000)))
    print(f"  {len(set(results))} distinct answer, {service.calls} call to the service\n")

    show("fresh hit", await price("sku-1"))

    await asyncio.sleep(0.25)  # past ttl: stale, refreshed in the background
    service.version = 2
    show("stale (refresh starts in background)", await price("sku-1"))
    await asyncio.sleep(0.05)
    show("after the refresh", await price("sku-1"))

    service.down = True
    await asyncio.sleep(0.25)
    for i in range(3):
        show(f"outage, request {i + 1}", await price("sku-1"))
        await asyncio.sleep(0.05)
    try:
        await price("sku-2")
    except ConnectionError as exc:
        print(f"{'outage, never-cached key':<38} -> raises {type(exc).__name__}")

    service.down = False
    service.version = 3
    await asyncio.sleep(0.05)
    await price("sku-1")  # stale hit; its background refresh now succeeds
    await asyncio.sleep(0.05)
    show("recovered", await price("sku-1"))

    status = cache.status()
    print(
        f"\nstatus: hits={status['hits']} stale_hits={status['stale_hits']} misses={status['misses']} "
        f"(coalesced {status['coalesced']}) "
        f"refreshes={status['refreshes']} refresh_failures={status['refresh_failures']}"
    )
    print("events:", ", ".join(sorted({e.name for e in events})))
    print(f"service calls in all: {service.calls}")


if __name__ == "__main__":
    asyncio.run(main())
