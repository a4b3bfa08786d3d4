"""Two replicas, one edge quota per tenant: tiers, chained and per-route limits on Redis.

Starts its own redis-server on a free port of 127.0.0.1 (no persistence) and
two "replicas" of one Starlette app, each behind the same
``RateLimit(limits=Tiers(...), routes=[...], store=...)``. Because every
limit's buckets live in Redis, a tenant's quota is one quota across the
replicas, not one per replica:

* a free tenant gets 3 requests per second *and* 5 per minute (a chain);
* a gold tenant gets 20 per second;
* ``ops`` is allow-listed (not limited at all);
* ``/search`` has its own, smaller quota per tenant (2 per minute).

Requests alternate between the two replicas. Prints what each tenant got.
If redis-server is not installed, it says so and exits 0.

    python examples/asgi_edge_tiers.py
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
from _local_redis import local_redis  # a throwaway redis-server for the example
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route as StarletteRoute

from resilient.asgi import Rate, RateLimit, Route, Scope, Tiers
from resilient.redis import RedisRateStore

FREE = [Rate(3), Rate(5, per=60)]
PLANS = {"gold": [Rate(20)], "free": FREE}


def tenant(scope: Scope) -> str:
    """The client key: the tenant header (a real service reads it from its auth token)."""
    return dict(scope["headers"]).get(b"x-tenant", b"anonymous").decode()


def plan_of(tenant_id: object) -> list[Rate] | None:
    """A tenant's chain of limits, or None when it is allow-listed."""
    if tenant_id == "ops":
        return None
    return PLANS["gold" if str(tenant_id).startswith("gold-") else "free"]


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def replica(redis_url: str, stores: list[RedisRateStore]) -> RateLimit:
    """One replica: every replica builds the same configuration, so they share the same Redis keys."""

    def store() -> RedisRateStore:
        stores.append(RedisRateStore(redis_url, prefix="edge:"))
        return stores[-1]

    app = Starlette(routes=[StarletteRoute("/", hello), StarletteRoute("/search", hello)])
    return RateLimit(
        app,
        key=tenant,
        limits=Tiers(plan_of, default=FREE),
        routes=[Route("/search", Rate(2, per=60, name="search"))],
        store=store,
        name="edge",
    )


async def run(redis_url: str) -> None:
    stores: list[RedisRateStore] = []
    replicas = [replica(redis_url, stores), replica(redis_url, stores)]
    clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=r), base_url="http://edge") for r in replicas]
    try:
        for who, path, n in [("free-1", "/", 8), ("gold-1", "/", 8), ("ops", "/", 30), ("gold-1", "/search", 4)]:
            got: Counter[int] = Counter()
            last = None
            for i in range(n):
                last = await clients[i % 2].get(path, headers={"x-tenant": who})  # alternate the replicas
                got[last.status_code] += 1
            assert last is not None
            print(f"{who:7} {path:8} {n:2} requests over 2 replicas: {dict(sorted(got.items()))}")
            if last.status_code == 429:
                print(f"        RateLimit-Policy: {last.headers['ratelimit-policy']}")
                print(f"        RateLimit:        {last.headers['ratelimit']}")
    finally:
        for client in clients:
            await client.aclose()
        for s in stores:
            await s.aclose()


def main() -> None:
    with local_redis() as url:
        if url is not None:
            print(f"redis-server on {url}")
            asyncio.run(run(url))


if __name__ == "__main__":
    main()
