"""RedisRateLimiter / KeyedRedisRateLimiter against a real, private redis-server."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from resilient import RateLimitedError, events
from resilient.deadline import deadline
from resilient.redis import KeyedRedisRateLimiter, RateDecision, RedisRateLimiter
from resilient.testing import FakeClock, recording
from tests.redis_helpers import RedisServer, eventually, redis_server, redis_warnings, run_together  # noqa: F401 - fixture

# Per-operation Redis timeout for tests that are not about slowness: generous, so that a loaded CI
# machine never fails open by accident (the library default is 50 ms).
T = 2.0

pytestmark = pytest.mark.redis


@pytest.fixture
async def rclient(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:  # noqa: F811
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


# -- the algorithm ---------------------------------------------------------------


async def test_burst_then_deny_with_retry_after(redis_server: RedisServer) -> None:  # noqa: F811
    lim = RedisRateLimiter(redis_server.url, rate=10, burst=3, name="api", timeout=T)
    got = [await lim.atry_acquire() for _ in range(4)]
    assert [d.allowed for d in got] == [True, True, True, False]
    assert [d.remaining for d in got[:3]] == [2, 1, 0]
    assert all(d.limit == 3 for d in got)
    denied = got[3]
    assert isinstance(denied, RateDecision)
    # One token comes back every 100 ms.
    assert 0.05 < denied.retry_after <= 0.1
    assert 0.2 < denied.reset <= 0.3
    await asyncio.sleep(denied.retry_after + 0.01)
    assert (await lim.atry_acquire()).allowed
    assert lim.using_redis
    await lim.aclose()


async def test_cost_and_validation(redis_server: RedisServer) -> None:  # noqa: F811
    lim = RedisRateLimiter(redis_server.url, rate=5, burst=5, name="cost", timeout=T)
    assert (await lim.atry_acquire(tokens=4)).remaining == 1
    assert not (await lim.atry_acquire(tokens=2)).allowed
    with pytest.raises(ValueError, match="tokens"):
        await lim.atry_acquire(tokens=6)
    with pytest.raises(ValueError, match="rate"):
        RedisRateLimiter(redis_server.url, rate=0, name="x", timeout=T)
    with pytest.raises(ValueError, match="burst"):
        RedisRateLimiter(redis_server.url, rate=1, burst=0, name="x", timeout=T)
    with pytest.raises(ValueError, match="timeout"):
        RedisRateLimiter(redis_server.url, rate=1, name="x", timeout=0)
    with pytest.raises(TypeError, match="name"):
        RedisRateLimiter(redis_server.url, rate=1, name="", timeout=T)
    with pytest.raises(TypeError, match="client_or_url"):
        RedisRateLimiter(42, rate=1, name="x", timeout=T)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="URL"):
        RedisRateLimiter("localhost:6379", rate=1, name="x", timeout=T)
    await lim.aclose()


async def test_keys_are_namespaced_and_expire(redis_server: RedisServer, rclient: aioredis.Redis) -> None:  # noqa: F811
    lim = KeyedRedisRateLimiter(redis_server.url, rate=20, burst=2, name="per-user", timeout=T, prefix="svc:")
    assert (await lim.atry_acquire("alice")).allowed
    assert (await lim.atry_acquire("alice")).allowed
    assert not (await lim.atry_acquire("alice")).allowed
    # Another key has its own bucket.
    assert (await lim.atry_acquire("bob")).allowed
    keys = sorted(await rclient.keys("*"))
    assert keys == ["svc:rl:per-user:alice", "svc:rl:per-user:bob"]
    # The key lives as long as the bucket needs to refill, no longer.
    pttl = await rclient.pttl("svc:rl:per-user:alice")
    assert 0 < pttl <= 102
    await asyncio.sleep(0.15)
    assert await rclient.keys("*") == []
    await lim.aclose()


async def test_names_and_keys_never_collide(redis_server: RedisServer, rclient: aioredis.Redis) -> None:  # noqa: F811
    # Issue 14 item 24: limiter "login" with the user-chosen key "ip:192.0.2.10" and limiter
    # "login:ip" with key "192.0.2.10" were both "resilient:rl:login:ip:192.0.2.10".
    opts = {"rate": 1, "burst": 1, "timeout": T}
    by_key = KeyedRedisRateLimiter(redis_server.url, name="login", **opts)  # type: ignore[arg-type]
    by_name = KeyedRedisRateLimiter(redis_server.url, name="login:ip", **opts)  # type: ignore[arg-type]
    plain = RedisRateLimiter(redis_server.url, name="login:ip:192.0.2.10", **opts)  # type: ignore[arg-type]
    assert (await by_key.atry_acquire("ip:192.0.2.10")).allowed
    assert (await by_name.atry_acquire("192.0.2.10")).allowed
    assert (await plain.atry_acquire()).allowed
    # The same pairs again: each has its own bucket, now empty.
    assert not (await by_key.atry_acquire("ip:192.0.2.10")).allowed
    assert not (await by_name.atry_acquire("192.0.2.10")).allowed
    # Escapes are escaped too, and braces never make a cluster hash tag.
    odd = KeyedRedisRateLimiter(redis_server.url, name="a%3Ab", **opts)  # type: ignore[arg-type]
    assert (await odd.atry_acquire("{x}")).allowed
    keys = set(await rclient.keys("*"))
    assert len(keys) == 4
    assert "resilient:rl:login:ip%3A192.0.2.10" in keys
    assert "resilient:rl:login%3Aip:192.0.2.10" in keys
    assert "resilient:rl:a%253Ab:%7Bx%7D" in keys
    for lim in (by_key, by_name, plain, odd):
        await lim.aclose()


async def test_two_limiters_with_one_name_share_the_limit(redis_server: RedisServer) -> None:  # noqa: F811
    a = RedisRateLimiter(redis_server.url, rate=1, burst=2, name="shared", timeout=T)
    b = RedisRateLimiter(aioredis.Redis.from_url(redis_server.url), rate=1, burst=2, name="shared", timeout=T)
    c = RedisRateLimiter(redis_server.url, rate=1, burst=2, name="other", timeout=T)
    assert (await a.atry_acquire()).allowed
    assert (await b.atry_acquire()).allowed
    assert not (await a.atry_acquire()).allowed
    assert not (await b.atry_acquire()).allowed
    assert (await c.atry_acquire()).allowed
    for lim in (a, c):
        await lim.aclose()


def test_sync_client_and_sync_policy(redis_server: RedisServer) -> None:  # noqa: F811
    lim = RedisRateLimiter(
        sync_redis.Redis.from_url(redis_server.url), rate=1, burst=2, name="sync", timeout=T, mode="reject"
    )
    calls: list[int] = []

    @lim
    def work(x: int) -> int:
        calls.append(x)
        return x * 2

    assert work(1) == 2
    assert work(2) == 4
    with pytest.raises(RateLimitedError) as info:
        work(3)
    assert calls == [1, 2]
    assert info.value.retry_after is not None
    assert 0.5 < info.value.retry_after <= 1.0
    assert not lim.try_acquire_sync().allowed


async def test_async_client_only_refuses_sync_use(redis_server: RedisServer) -> None:  # noqa: F811
    client = aioredis.Redis.from_url(redis_server.url)
    lim = RedisRateLimiter(client, rate=1, name="a-only", timeout=T)
    with pytest.raises(TypeError, match="sync"):
        lim.try_acquire_sync()
    await client.aclose()


# -- as a policy ---------------------------------------------------------------------


async def test_policy_rejects_with_event_and_waits_within_max_wait(redis_server: RedisServer) -> None:  # noqa: F811
    lim = RedisRateLimiter(redis_server.url, rate=20, burst=1, name="pol", timeout=T, mode="reject")

    @lim
    async def work() -> str:
        return "ok"

    with recording() as rec:
        assert await work() == "ok"
        with pytest.raises(RateLimitedError) as info:
            await work()
    assert info.value.policy == "pol"
    assert [e.name for e in rec.events] == [events.REJECTED]
    assert rec.events[0].extras["backend"] == "redis"

    async def bare() -> str:
        return "ok"

    waiting = RedisRateLimiter(redis_server.url, rate=20, burst=1, name="pol", timeout=T, max_wait=0.2)
    start = time.monotonic()
    assert await waiting.run(bare) == "ok"
    assert time.monotonic() - start >= 0.02
    # A deadline shorter than the wait wins: reject at once.
    with deadline(0.001), pytest.raises(RateLimitedError):
        await waiting.run(bare)
    assert waiting.status()["redis_healthy"] is True
    for lim_ in (lim, waiting):
        await lim_.aclose()


async def test_keyed_policy_uses_the_key_function(redis_server: RedisServer) -> None:  # noqa: F811
    lim = KeyedRedisRateLimiter(
        redis_server.url, rate=1, burst=1, name="tenant", key=lambda tenant, _: tenant, mode="reject", timeout=T
    )

    @lim
    async def work(tenant: str, n: int) -> int:
        return n

    assert await work("a", 1) == 1
    assert await work("b", 2) == 2
    with pytest.raises(RateLimitedError):
        await work("a", 3)
    with pytest.raises(TypeError, match="key="):
        KeyedRedisRateLimiter(redis_server.url, rate=1, name="nokey", timeout=T)(work)
    await lim.aclose()


# -- fail open -------------------------------------------------------------------------


async def test_sigkill_fails_open_with_one_warning_and_recovers_after_restart(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    lim = RedisRateLimiter(redis_server.url, rate=1000, burst=1000, name="down", timeout=T, clock=clock)
    assert (await lim.atry_acquire()).allowed
    redis_server.kill()
    caplog.set_level(logging.INFO, logger="resilient.redis")
    with recording() as rec:
        for _ in range(50):
            assert (await lim.atry_acquire()).allowed  # the call flows on local state
        assert not lim.using_redis
        assert len(redis_warnings(caplog)) == 1
        assert "failing open" in redis_warnings(caplog)[0].getMessage()
        assert [e.name for e in rec.events] == [events.STORE_FAILED_OPEN]
        assert rec.events[0].severity == "warning"

        redis_server.restart()
        # No probe before recovery_interval has passed...
        await lim.atry_acquire()
        await asyncio.sleep(0.05)
        assert not lim.using_redis
        # ...then one, in the background, and the limiter switches back.
        clock.advance(1.0)
        await lim.atry_acquire()
        await eventually(lambda: lim.using_redis)
        assert [e.name for e in rec.events] == [events.STORE_FAILED_OPEN, events.STORE_RECOVERED]
    assert (await lim.atry_acquire()).allowed
    assert len(redis_warnings(caplog)) == 1
    assert lim.status()["outages"] == 1
    await lim.aclose()


async def test_sigstop_slow_redis_times_out_and_recovers_after_sigcont(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    lim = RedisRateLimiter(redis_server.url, rate=1000, burst=1000, name="slow", clock=clock, timeout=0.05)
    assert (await lim.atry_acquire()).allowed
    redis_server.pause()
    caplog.set_level(logging.WARNING, logger="resilient.redis")
    try:
        start = time.monotonic()
        first = await lim.atry_acquire()
        first_took = time.monotonic() - start
        assert first.allowed
        assert first_took < 0.5  # bounded by the 50 ms timeout, plus a loaded machine's slack
        start = time.monotonic()
        for _ in range(100):
            assert (await lim.atry_acquire()).allowed
        # Failed open: no call waits for Redis any more.
        assert time.monotonic() - start < 0.5
        assert len(redis_warnings(caplog)) == 1
        # A probe while still paused fails and changes nothing.
        clock.advance(1.0)
        await lim.atry_acquire()
        await asyncio.sleep(0.15)
        assert not lim.using_redis
    finally:
        redis_server.resume()
    clock.advance(1.0)
    await lim.atry_acquire()
    await eventually(lambda: lim.using_redis)
    assert len(redis_warnings(caplog)) == 1
    await lim.aclose()


def test_sync_fail_open_and_inline_probe(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    clock = FakeClock()
    lim = RedisRateLimiter(redis_server.url, rate=2, burst=2, name="sync-down", timeout=T, clock=clock)
    caplog.set_level(logging.WARNING, logger="resilient.redis")
    redis_server.kill()
    # Local state applies the same limit.
    assert [lim.try_acquire_sync().allowed for _ in range(3)] == [True, True, False]
    assert len(redis_warnings(caplog)) == 1
    redis_server.restart()
    clock.advance(1.0)
    assert lim.try_acquire_sync().allowed  # probed inline, Redis again: a fresh shared bucket
    assert lim.using_redis
    lim.close()


async def test_redis_error_fails_open(redis_server: RedisServer, rclient: aioredis.Redis) -> None:  # noqa: F811
    await rclient.rpush("resilient:rl:wrongtype", "x")  # the script's GET fails with WRONGTYPE
    lim = RedisRateLimiter(redis_server.url, rate=1, burst=1, name="wrongtype", timeout=T)
    with recording() as rec:
        assert (await lim.atry_acquire()).allowed
    assert not lim.using_redis
    assert rec.events[0].exception is not None
    assert "ResponseError" in rec.events[0].exception
    await lim.aclose()


async def test_credentials_never_logged(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    url = f"redis://admin:s3cr3t-pw@127.0.0.1:{redis_server.port}/0?password=s3cr3t-q"
    lim = RedisRateLimiter(url, rate=1, name="auth", timeout=T)
    caplog.set_level(logging.DEBUG, logger="resilient.redis")
    with recording() as rec:
        assert (await lim.atry_acquire()).allowed  # AUTH fails: the server has no such user
    assert not lim.using_redis
    text = " ".join(r.getMessage() for r in caplog.records) + json.dumps([dict(e.extras) for e in rec.events])
    assert "s3cr3t" not in text
    assert f"127.0.0.1:{redis_server.port}" in text
    assert "s3cr3t" not in repr(lim) + json.dumps(lim.status())
    await lim.aclose()


# -- many processes, one limit -------------------------------------------------------------

WORKER = """
    import asyncio, sys, time
    from resilient.redis import RedisRateLimiter

    async def main(url, duration):
        lim = RedisRateLimiter(url, rate=200, burst=5, name="fleet", timeout=0.5)
        await lim.store._conn.aclient().ping()  # connect before the clock starts
        ready()
        admitted = 0
        end = time.monotonic() + duration
        while time.monotonic() < end:
            d = await lim.atry_acquire()
            if d.allowed:
                admitted += 1
            else:
                await asyncio.sleep(min(d.retry_after, max(0.0, end - time.monotonic()), 0.01))
        print(admitted, int(lim.using_redis))
        await lim.aclose()

    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def test_shared_limit_across_four_processes(redis_server: RedisServer) -> None:  # noqa: F811
    rate, duration = 200, 2.0
    # Released together once all four are connected: no start time for a loaded machine to miss.
    results = []
    for out in run_together(WORKER, redis_server.url, str(duration), n=4):
        admitted, used_redis = out.split()
        results.append(int(admitted))
        assert used_redis == "1"
    total = sum(results)
    print("admitted", total, results)
    # The processes start within a few milliseconds of each other: the first burst plus the rate.
    expected = rate * duration
    assert abs(total - expected) <= 0.05 * expected, (total, results)
    # Every process got a share, not one process everything.
    assert min(results) > 0
