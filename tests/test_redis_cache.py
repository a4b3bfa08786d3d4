"""RedisCacheStore: one StaleCache for every replica, one upstream call per key across them, failing open."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from resilient.cache import CacheEntry, StaleCache
from resilient.redis import RedisCacheStore
from resilient.testing import FakeClock, recording
from tests.redis_helpers import (  # noqa: F401 - fixtures
    LocalCluster,
    RedisServer,
    eventually,
    redis_cluster,
    redis_server,
    redis_warnings,
)

T = 0.5  # the Redis timeout: generous, the machine may be busy


class Upstream:
    """Counts calls; each one waits for the gate when there is one."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self, item: str) -> dict[str, Any]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return {"item": item, "version": self.calls}


def replica_cache(
    url: str, clock: FakeClock, upstream: Upstream, **store: Any
) -> tuple[StaleCache, Callable[..., Any], RedisCacheStore]:
    """One replica: its own store and cache over the shared Redis, on ``clock`` (``wall=`` too)."""
    s = RedisCacheStore(url, name="prices", timeout=T, wall=clock.now, **store)
    cache = StaleCache(60, stale_ttl=600, store=s, clock=clock)
    return cache, cache(upstream), s


def replica(url: str, clock: FakeClock, upstream: Upstream, **store: Any) -> tuple[Callable[..., Any], RedisCacheStore]:
    """One replica: the cached function and its store."""
    _, fn, s = replica_cache(url, clock, upstream, **store)
    return fn, s


async def settle(condition: Callable[[], bool]) -> None:
    """Wait (real time) for what the replicas' round trips to Redis bring about: I/O, not time logic."""
    await eventually(condition, within=5.0)


@pytest.fixture
async def rclient(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:  # noqa: F811
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def test_bad_options_name_the_parameter(redis_server: RedisServer) -> None:  # noqa: F811
    url = redis_server.url
    for kwargs, error, param in [
        ({"name": ""}, TypeError, "name"),
        ({"near_ttl": -1}, ValueError, "near_ttl"),
        ({"near_max_entries": 0}, ValueError, "near_max_entries"),
        ({"lease_seconds": 0}, ValueError, "lease_seconds"),
        ({"poll_interval": float("nan")}, ValueError, "poll_interval"),
        ({"serializer": object()}, TypeError, "serializer"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"wall": 3}, TypeError, "wall"),
    ]:
        with pytest.raises(error, match=param):
            RedisCacheStore(url, **kwargs)


async def test_a_value_one_replica_fetched_is_fresh_for_the_other(redis_server: RedisServer) -> None:  # noqa: F811
    clock, upstream = FakeClock(start=1000.0), Upstream()
    fa, sa = replica(redis_server.url, clock, upstream)
    fb, sb = replica(redis_server.url, clock, upstream)
    assert await fa("tea") == {"item": "tea", "version": 1}
    clock.advance(30)
    assert await fb("tea") == {"item": "tea", "version": 1}  # from Redis, 30 s old: fresh
    assert upstream.calls == 1
    await sa.aclose()
    await sb.aclose()


async def test_a_cold_key_costs_one_upstream_call_for_the_fleet(redis_server: RedisServer) -> None:  # noqa: F811
    clock, upstream = FakeClock(start=1000.0), Upstream()
    upstream.gate = asyncio.Event()
    fa, sa = replica(redis_server.url, clock, upstream)
    fb, sb = replica(redis_server.url, clock, upstream)
    calls = [asyncio.create_task(f("tea")) for f in (fa, fa, fb, fb, fb)]
    # Whichever replica's SET NX reaches Redis first holds the lease; the other polls.
    await settle(lambda: upstream.calls == 1 and clock.sleeps != [])
    upstream.gate.set()
    # The leader's callers (A's two or B's three) are coalesced locally and finish together.
    done = lambda: {i for i, t in enumerate(calls) if t.done()}  # noqa: E731
    await settle(lambda: done() in ({0, 1}, {2, 3, 4}))  # the leader's value is in Redis
    clock.advance(sb.poll_interval)  # the other replica looks again and finds the leader's value
    await settle(lambda: all(t.done() for t in calls))
    assert [await t for t in calls] == [{"item": "tea", "version": 1}] * 5
    assert upstream.calls == 1
    await sa.aclose()
    await sb.aclose()


@pytest.mark.parametrize("a_stores", ["after B's first look", "before B's first look"])
async def test_an_expired_key_is_refreshed_once_while_both_serve_stale(
    redis_server: RedisServer,  # noqa: F811
    a_stores: str,
) -> None:
    # "before": B's wait re-read the old value from Redis and its near tier kept that copy, so every
    # poll saw it and B called the upstream a second time once A released the lease.
    clock, upstream = FakeClock(start=1000.0), Upstream()
    ca, fa, sa = replica_cache(redis_server.url, clock, upstream)
    cb, fb, sb = replica_cache(redis_server.url, clock, upstream)
    await fa("tea")
    clock.advance(120)  # stale now
    upstream.gate = asyncio.Event()
    assert (await fa("tea"))["version"] == 1  # stale served; A refreshes in the background
    await settle(lambda: upstream.calls == 2)
    assert (await fb("tea"))["version"] == 1  # stale served; B's refresh waits for A's lease
    await settle(lambda: bool(clock.sleeps))
    if a_stores == "after B's first look":
        clock.advance(sb.poll_interval)  # B looks while A still holds the lease: nothing new, B waits on
        await settle(lambda: len(clock.sleeps) == 2)
    upstream.gate.set()
    await settle(lambda: ca.status()["in_flight"] == 0)  # A's refresh has stored its value in Redis
    clock.advance(sb.poll_interval)  # B looks and finds A's value (and calls nothing)
    await settle(lambda: cb.status()["in_flight"] == 0)
    assert upstream.calls == 2
    assert len(sb) == 1  # A's value is in B's near tier at once: a hot key does not go to Redis meanwhile
    assert (await fb("tea"))["version"] == 2
    clock.advance(2)  # past the near tier
    assert (await fb("tea"))["version"] == 2
    assert upstream.calls == 2
    await sa.aclose()
    await sb.aclose()


async def test_when_the_lease_holder_dies_another_replica_calls_after_the_lease(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    clock, upstream = FakeClock(start=1000.0), Upstream()
    fb, sb = replica(redis_server.url, clock, upstream, lease_seconds=5)
    # A dead replica's lease: taken, never released.
    dead = RedisCacheStore(redis_server.url, name="prices", timeout=T, wall=clock.now)
    dead.bind(60, 600, clock)
    key = StaleCache(60).key_for(upstream, "tea")
    assert await dead.lease(key, 5)
    call = asyncio.create_task(fb("tea"))
    await settle(lambda: bool(clock.sleeps))
    assert upstream.calls == 0  # B waits for the holder
    clock.advance(4.5)  # B looks at 4.5 s: the lease holds, B sleeps again
    await settle(lambda: len(clock.sleeps) == 2)
    assert upstream.calls == 0
    clock.advance(0.5)
    await settle(call.done)
    assert (await call)["version"] == 1  # the lease lapsed at 5 s: B called itself
    assert upstream.calls == 1
    assert clock.now() >= 1005.0
    await sb.aclose()
    await dead.aclose()


async def test_entries_expire_in_redis_at_stale_ttl_and_keys_are_namespaced(
    redis_server: RedisServer,  # noqa: F811
    rclient: aioredis.Redis,
) -> None:
    clock, upstream = FakeClock(start=1000.0), Upstream()
    fa, sa = replica(redis_server.url, clock, upstream)
    await fa("tea:{x}")
    keys = [k.decode() for k in await rclient.keys("resilient:cache:*")]
    assert len(keys) == 1
    assert ":" not in keys[0].removeprefix("resilient:cache:prices:")  # the key part is encoded
    ttl_ms = await rclient.pttl(keys[0])
    assert 590_000 < ttl_ms <= 600_000
    await sa.aclose()


async def test_bad_data_in_redis_is_a_miss_logged_once(
    redis_server: RedisServer,  # noqa: F811
    rclient: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, upstream = FakeClock(start=1000.0), Upstream()
    fa, sa = replica(redis_server.url, clock, upstream, near_ttl=0)
    await fa("tea")
    (key,) = await rclient.keys("resilient:cache:*")
    await rclient.set(key, b"not-a-time|{{{")
    with caplog.at_level(logging.WARNING, logger="resilient.redis"):
        clock.advance(1)
        assert (await fa("tea"))["version"] == 2  # a miss: called again, and stored again
        await rclient.set(key, b"1|[")
        assert (await fa("tea"))["version"] == 3
    assert len(redis_warnings(caplog)) == 1
    await sa.aclose()


async def test_a_value_json_cannot_hold_stays_local(redis_server: RedisServer, rclient: aioredis.Redis) -> None:  # noqa: F811
    clock = FakeClock(start=1000.0)
    store = RedisCacheStore(redis_server.url, name="objs", timeout=T, wall=clock.now)
    cache = StaleCache(60, store=store, clock=clock)
    made: list[object] = []

    @cache
    async def thing() -> object:
        made.append(object())
        return made[-1]

    first = await thing()
    assert await thing() is first  # the near tier has it
    assert await rclient.keys("resilient:cache:objs:*") == []
    await store.aclose()


async def test_redis_killed_mid_run_the_near_tier_serves_and_it_recovers(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, upstream = FakeClock(start=1000.0), Upstream()
    fa, sa = replica(redis_server.url, clock, upstream, recovery_interval=1.0)
    await fa("tea")
    redis_server.kill()
    with recording() as seen, caplog.at_level(logging.WARNING, logger="resilient.redis"):
        clock.advance(5)  # past the near tier: the next read asks Redis, which is gone
        assert (await fa("tea"))["version"] == 1  # the near tier serves what it had
        assert not sa.using_redis
        assert (await fa("coffee"))["version"] == 2  # new keys: called, cached locally
        assert (await fa("coffee"))["version"] == 2
        assert upstream.calls == 2
    assert "store_failed_open" in seen.names()
    assert len(redis_warnings(caplog)) == 1
    redis_server.restart()
    clock.advance(2)  # a probe is due
    await fa("coffee")
    await settle(lambda: sa.using_redis)
    await sa.aclose()


async def test_two_replicas_share_a_cache_on_a_redis_cluster(redis_cluster: LocalCluster) -> None:  # noqa: F811
    clock, upstream = FakeClock(start=1000.0), Upstream()
    fa, sa = replica(redis_cluster.url, clock, upstream)
    fb, sb = replica(redis_cluster.url, clock, upstream)
    for item in ("a", "b", "c", "d", "e", "f"):
        await fa(item)
        assert (await fb(item))["version"] == upstream.calls
    assert upstream.calls == 6
    key = StaleCache(60).key_for(upstream, "a")
    assert isinstance(await sb.get(key), CacheEntry)
    await sa.aclose()
    await sb.aclose()
