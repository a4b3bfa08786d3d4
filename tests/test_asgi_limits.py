"""RateLimit(limits=, routes=): chained limits, tiers per key class, per-route limits, on memory and Redis."""

from __future__ import annotations

import logging
from collections.abc import Hashable

import pytest

from resilient.asgi import Rate, RateLimit, Route, Scope, Tiers
from resilient.asgi.limits import MAX_CHAINS
from resilient.redis import RedisRateStore
from resilient.testing import FakeClock
from tests.asgi_helpers import call, headers_of, http_scope, status_of
from tests.redis_helpers import RedisServer, redis_server  # noqa: F401 - fixture


async def ok_app(scope: Scope, receive: object, send: object) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


def tenant_of(scope: Scope) -> str:
    return dict(scope["headers"]).get(b"x-tenant", b"anon").decode()


async def codes(mw: RateLimit, n: int, path: str = "/", tenant: str = "t1", method: str = "GET") -> list[int | None]:
    scope = http_scope(path, headers=[("x-tenant", tenant)], method=method)
    return [status_of(await call(mw, scope)) for _ in range(n)]


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: Rate(0), ValueError, "rate"),
        (lambda: Rate(1, per=-1), ValueError, "per"),
        (lambda: Rate(1, burst=0), ValueError, "burst"),
        (lambda: Rate(1, name="é"), ValueError, "name"),
        (lambda: Route("search", Rate(1)), ValueError, "path"),
        (lambda: Route("/s", []), ValueError, "limits"),
        (lambda: Route("/s", [Rate(1), "x"]), TypeError, r"limits\[1\]"),
        (lambda: Route("/s", [Rate(1), Rate(1)]), ValueError, "same Rate twice"),
        (lambda: Route("/s", Rate(1), methods="GET"), TypeError, "methods"),
        (lambda: Route("/s", Rate(1), methods=[]), ValueError, "methods"),
        (lambda: Tiers("plan", default=Rate(1)), TypeError, "of"),  # type: ignore[arg-type]
        (lambda: Tiers(lambda k: None, default=[]), ValueError, "default"),
        (lambda: RateLimit(ok_app, rate=1, limits=Rate(1)), TypeError, "either limits/routes"),
        (lambda: RateLimit(ok_app, routes=[Rate(1)]), TypeError, "routes"),  # type: ignore[list-item]
        (lambda: RateLimit(ok_app, rate=1, store=lambda: None), TypeError, "store"),  # type: ignore[arg-type,return-value]
        (lambda: RateLimit(ok_app, limits=Rate(1), store="redis"), TypeError, "store"),  # type: ignore[arg-type]
    ],
)
def test_bad_configuration_fails_at_construction_naming_the_parameter(make, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        make()


def test_rates_are_values() -> None:
    assert Rate(10) == Rate(10, per=1.0, burst=10)
    assert len({Rate(10), Rate(10), Rate(10, name="x")}) == 2


# -- chains -------------------------------------------------------------------------------------


async def test_a_chain_admits_only_what_every_limit_admits_and_headers_name_the_closest() -> None:
    clock = FakeClock()
    mw = RateLimit(ok_app, limits=[Rate(5, burst=5), Rate(8, per=3600)], key=tenant_of, clock=clock)
    assert await codes(mw, 5) == [200] * 5
    assert await codes(mw, 1) == [429]  # the per-second bucket is empty
    clock.advance(1.0)
    assert await codes(mw, 3) == [200] * 3  # 8 in the hour now
    sent = await call(mw, http_scope(headers=[("x-tenant", "t1")]))
    assert status_of(sent) == 429  # the hourly limit refuses, though the per-second one has tokens
    headers = headers_of(sent)
    assert headers["ratelimit-policy"] == '"5-per-1s";q=5;w=1, "8-per-3600s";q=8;w=3600'
    assert headers["ratelimit"].startswith('"8-per-3600s";r=0;')
    assert int(headers["retry-after"]) > 60
    assert await codes(mw, 1, tenant="t2") == [200]  # each key has its own chain of buckets


async def test_success_headers_describe_the_limit_closest_to_denial() -> None:
    mw = RateLimit(
        ok_app,
        limits=[Rate(100, name="burst"), Rate(3, per=60, name="minute")],
        key=tenant_of,
        clock=FakeClock(),
        headers_on_success=True,
    )
    sent = await call(mw, http_scope(headers=[("x-tenant", "a")]))
    assert status_of(sent) == 200
    assert headers_of(sent)["ratelimit"].startswith('"minute";r=2;')


async def test_shadow_mode_decides_the_chain_and_serves() -> None:
    mw = RateLimit(ok_app, limits=Rate(1, per=60), key=tenant_of, clock=FakeClock(), enforce=False)
    assert await codes(mw, 3) == [200] * 3
    assert mw.would_reject == 2


# -- tiers --------------------------------------------------------------------------------------


PLANS = {"gold": [Rate(10, burst=10)], "free": [Rate(2, burst=2)]}


def plan(tenant: Hashable) -> list[Rate] | None:
    if tenant == "ops":
        return None  # allow-listed
    if tenant == "broken":
        raise LookupError("plan service down")
    if tenant == "weird":
        return "ten per second"  # type: ignore[return-value]
    return PLANS["gold" if str(tenant).startswith("g") else "free"]


async def test_tiers_give_each_key_class_its_limit_and_none_means_unlimited(caplog: pytest.LogCaptureFixture) -> None:
    mw = RateLimit(ok_app, limits=Tiers(plan, default=Rate(1, per=60)), key=tenant_of, clock=FakeClock())
    assert await codes(mw, 12, tenant="g1") == [200] * 10 + [429] * 2
    assert await codes(mw, 3, tenant="f1") == [200] * 2 + [429]
    assert await codes(mw, 50, tenant="ops") == [200] * 50
    with caplog.at_level(logging.WARNING, logger="resilient.asgi"):
        assert await codes(mw, 2, tenant="broken") == [200, 429]  # the default chain, never unlimited
        assert await codes(mw, 2, tenant="weird") == [200, 429]
        assert await codes(mw, 1, tenant="broken") == [429]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings  # each failure kind logged once
    assert "raised LookupError" in warnings[0]


async def test_a_tiers_function_making_a_new_rate_per_key_cannot_grow_memory() -> None:
    mw = RateLimit(
        ok_app,
        limits=Tiers(lambda t: Rate(1000 + int(str(t)[1:])), default=Rate(1, per=60)),
        key=tenant_of,
        clock=FakeClock(),
    )
    for i in range(MAX_CHAINS + 20):
        await codes(mw, 1, tenant=f"k{i}")
    assert mw.chains is not None
    assert len(mw.chains.limiters()) <= MAX_CHAINS + 1


# -- routes -------------------------------------------------------------------------------------


async def test_routes_have_their_own_limits_and_buckets_first_match_wins() -> None:
    mw = RateLimit(
        ok_app,
        limits=Rate(3, per=60),
        routes=[
            Route("/search", Rate(1, per=60)),
            Route("/upload", Rate(2, per=60), methods={"post"}),
            Route("/health", Tiers(lambda k: None, default=Rate(1))),
        ],
        key=tenant_of,
        clock=FakeClock(),
    )
    assert await codes(mw, 2, path="/search/books") == [200, 429]
    assert await codes(mw, 1, path="/searches") == [200]  # not under /search: the default limit
    assert await codes(mw, 3, path="/upload", method="POST") == [200, 200, 429]
    assert await codes(mw, 3, path="/upload", method="GET") == [200, 200, 429]  # GET: default (1 used above)
    assert await codes(mw, 10, path="/health") == [200] * 10


async def test_with_only_routes_other_requests_are_not_limited() -> None:
    mw = RateLimit(
        ok_app, routes=[Route("/login", Rate(1, per=60), methods=["POST"])], key=tenant_of, clock=FakeClock()
    )
    assert await codes(mw, 5, path="/") == [200] * 5
    assert await codes(mw, 2, path="/login", method="POST") == [200, 429]


# -- shared on Redis ----------------------------------------------------------------------------


async def test_two_replicas_share_a_tiered_chain_on_redis(redis_server: RedisServer) -> None:  # noqa: F811
    stores: list[RedisRateStore] = []

    def store() -> RedisRateStore:
        stores.append(RedisRateStore(redis_server.url, timeout=0.5, prefix="edge:"))
        return stores[-1]

    def replica() -> RateLimit:
        return RateLimit(
            ok_app,
            limits=Tiers(plan, default=Rate(1, per=60)),
            routes=[Route("/search", [Rate(50), Rate(3, per=3600)])],
            key=tenant_of,
            store=store,
            name="edge",
        )

    a, b = replica(), replica()
    # 2 requests of a free tenant's quota, across both replicas: one quota, not one each.
    assert [
        *(await codes(a, 1, tenant="f9")),
        *(await codes(b, 1, tenant="f9")),
        *(await codes(a, 1, tenant="f9")),
    ] == [
        200,
        200,
        429,
    ]
    got = [*(await codes(a, 2, path="/search", tenant="g1")), *(await codes(b, 2, path="/search", tenant="g1"))]
    assert got == [200, 200, 200, 429]  # the hourly link of the route's chain, shared
    for s in stores:
        await s.aclose()
