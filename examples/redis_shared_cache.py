"""One cache for two replicas: a StaleCache on Redis makes one upstream call per key for the fleet.

Starts its own redis-server on a free port of 127.0.0.1 (no persistence) and
two "replicas" (two caches, each with its own RedisCacheStore, as two
processes would have). Twenty concurrent requests for a cold key, spread
over both replicas, cost one call to the slow upstream: the replica that
misses first takes the key's lease and calls, the other waits for the value
it stores. Then the upstream "dies" and both keep serving the cached price.

If redis-server is not installed, it says so and exits 0.

    python examples/redis_shared_cache.py
"""

from __future__ import annotations

import asyncio

from _local_redis import local_redis  # a throwaway redis-server for the example

from resilient import StaleCache
from resilient.redis import RedisCacheStore

calls = 0
upstream_up = True


async def fetch_price(sku: str) -> dict[str, object]:
    """The slow, flaky upstream both replicas protect."""
    global calls
    calls += 1
    await asyncio.sleep(0.2)
    if not upstream_up:
        raise ConnectionError("pricing service is down")
    return {"sku": sku, "price": 12.5}


def replica(url: str) -> tuple[object, RedisCacheStore]:
    store = RedisCacheStore(url, name="prices", poll_interval=0.02)
    return StaleCache(0.5, stale_ttl=600, store=store)(fetch_price), store


async def run(url: str) -> None:
    global upstream_up
    (a, store_a), (b, store_b) = replica(url), replica(url)
    answers = await asyncio.gather(*[(a if i % 2 else b)("tea") for i in range(20)])  # type: ignore[operator]
    print(
        f"20 concurrent requests over 2 replicas: {len(set(map(str, answers)))} distinct answer, {calls} upstream call"
    )
    upstream_up = False
    await asyncio.sleep(0.6)  # the entry is stale now; the upstream is down
    print("upstream down, entry stale:", await a("tea"), await b("tea"))  # type: ignore[operator]
    await asyncio.sleep(0.3)  # the background refresh: one for the fleet, and it fails
    print(f"upstream calls so far: {calls} (one refresh for both replicas; the stale copy is still served)")
    await store_a.aclose()
    await store_b.aclose()


def main() -> None:
    with local_redis() as url:
        if url is not None:
            asyncio.run(run(url))


if __name__ == "__main__":
    main()
