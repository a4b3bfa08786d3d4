"""RedisRateStore, RedisRateLimiter, KeyedRedisRateLimiter against a real, private redis-server."""

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
from resilient.ratelimit import AsyncRateStore, KeyedRateLimiter, RateLimiter
from resilient.redis import KeyedRedisRateLimiter, RateDecision, RedisRateLimiter, RedisRateStore
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
    # Real time on purpose: this is the store's test of the server clock path (Redis TIME, the
    # default). The other tests that wait run on a FakeClock (redis_time=False).
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
    await asyncio.sleep(denied.retry_after + 0.01)  # on Redis TIME, which only real time moves
    assert (await lim.atry_acquire()).allowed
    assert lim.using_redis
    await lim.aclose()


@pytest.mark.parametrize("keyed", [False, True])
async def test_the_limiters_take_redis_time_false_and_run_on_their_clock(
    redis_server: RedisServer,  # noqa: F811
    keyed: bool,
) -> None:
    # Both limiters pass redis_time= to their store (they had no such option): a FakeClock drives
    # the shared bucket, so a token comes back exactly when the clock says so.
    clock = FakeClock(start=50.0)
    opts = {"rate": 10, "burst": 2, "timeout": T, "clock": clock, "redis_time": False}
    if keyed:
        lim: RedisRateLimiter | KeyedRedisRateLimiter = KeyedRedisRateLimiter(redis_server.url, name="rt-k", **opts)
        args: tuple[str, ...] = ("tenant",)
    else:
        lim = RedisRateLimiter(redis_server.url, name="rt", **opts)
        args = ()
    got = [await lim.atry_acquire(*args) for _ in range(3)]  # type: ignore[arg-type]
    assert [d.allowed for d in got] == [True, True, False]
    assert got[2].retry_after == pytest.approx(0.1)
    clock.advance(0.099)
    assert not (await lim.atry_acquire(*args)).allowed  # type: ignore[arg-type]
    clock.advance(0.001)
    assert (await lim.atry_acquire(*args)).allowed  # type: ignore[arg-type]
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
    # Not the library's time logic: redis-server expires the key (PX) on its own clock, which no
    # FakeClock reaches.
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


async def test_sync_client_only_refuses_async_use_naming_the_client(redis_server: RedisServer) -> None:  # noqa: F811
    # atry_acquire() raised RateLimitKeyError ("the key None is not hashable"): the client check ran inside the
    # step's key-error guard.
    client = sync_redis.Redis.from_url(redis_server.url)
    lim = RateLimiter(1, name="s-only", store=RedisRateStore(client, timeout=T))
    with pytest.raises(TypeError, match="sync client only"):
        await lim.atry_acquire()
    with pytest.raises(TypeError, match="sync client only"):
        await lim.acquire()
    assert lim.try_acquire().allowed  # the sync side works
    client.close()


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

    clock = FakeClock()
    waiting = RedisRateLimiter(redis_server.url, rate=20, burst=1, name="pol", timeout=T, max_wait=0.2, clock=clock)
    call = asyncio.create_task(waiting.run(bare))
    await eventually(lambda: bool(clock.sleeps))  # not time logic: its round trips to Redis
    # The bucket's one token comes back 50 ms after it was taken (on Redis TIME, so a little less is left).
    clock.advance(0.05)
    await eventually(call.done)
    assert call.result() == "ok"
    assert len(clock.sleeps) == 1
    assert 0.02 <= clock.sleeps[0] <= 0.05
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
        await asyncio.sleep(0.05)  # not time logic: room for a (wrongly started) probe's real round trip
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
        # The probe times out on the loop's own timer (the Redis timeout), which a FakeClock does not
        # drive: wait, in real time, for it to end.
        await eventually(lambda: lim.store.failopen._probe_task.done())  # type: ignore[attr-defined]
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
            else:  # real time: four processes share the limit on Redis TIME, no clock to fake
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


# -- RedisRateStore: the one RateLimiter / KeyedRateLimiter on Redis ---------------------


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_rate_limiter_over_a_redis_store_sync_and_async_share_one_bucket(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    store = RedisRateStore(redis_server.url, timeout=T)
    rl = RateLimiter(10, burst=3, mode="reject", name="one-api", store=store)
    assert rl.store is store
    assert isinstance(store, AsyncRateStore)
    assert (await rl.atry_acquire()).allowed  # async round trip
    assert rl.try_acquire().allowed  # blocking round trip, the same bucket
    assert (await rl.atry_acquire()).remaining == 0
    with recording() as rec:
        denied = await rl.atry_acquire()
        with pytest.raises(RateLimitedError):
            await rl.run(_ok)
        with pytest.raises(RateLimitedError):
            rl.run_sync(lambda: "never")
    assert not denied.allowed
    assert 0.05 < denied.retry_after <= 0.1
    assert rec.names() == [events.REJECTED] * 3
    assert {e.extras["backend"] for e in rec.events} == {"redis"}
    assert rl.rejected == 3
    assert rl.status()["redis_healthy"] is True
    await store.aclose()


async def _ok() -> str:
    return "ok"


async def test_keyed_rate_limiter_over_a_redis_store(redis_server: RedisServer, rclient: aioredis.Redis) -> None:  # noqa: F811
    store = RedisRateStore(redis_server.url, timeout=T, prefix="edge:")
    kl = KeyedRateLimiter(1, burst=1, name="per-client", store=store, mode="reject")
    assert (await kl.atry_acquire("10.0.0.1")).allowed
    assert not (await kl.atry_acquire("10.0.0.1")).allowed
    assert kl.try_acquire("10.0.0.2").allowed
    assert sorted(await rclient.keys("edge:*")) == ["edge:rl:per-client:10.0.0.1", "edge:rl:per-client:10.0.0.2"]
    await store.aclose()


def test_a_redis_store_needs_a_name_and_one_limiter(redis_server: RedisServer) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="name"):
        RateLimiter(1, store=RedisRateStore(redis_server.url))
    store = RedisRateStore(redis_server.url, name="shared")
    RateLimiter(1, store=store)
    with pytest.raises(RuntimeError, match="already bound"):
        RateLimiter(1, store=store)
    with pytest.raises(TypeError, match="name"):
        RedisRateStore(redis_server.url, name="")
    with pytest.raises(ValueError, match="timeout"):
        RedisRateStore(redis_server.url, timeout=0)
    with pytest.raises(TypeError, match="redis_time"):
        RedisRateStore(redis_server.url, redis_time="no")  # type: ignore[arg-type]


async def test_redis_waiters_reserve_their_turns_in_order_and_a_cancelled_one_gives_it_back(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    clock = FakeClock(start=100.0)
    store = RedisRateStore(redis_server.url, timeout=T, redis_time=False)
    rl = RateLimiter(1, burst=1, clock=clock, name="queue", store=store)
    await rl.acquire()
    first = asyncio.create_task(rl.acquire())
    second = asyncio.create_task(rl.acquire())
    for _ in range(20):
        await _settle()
        if len(clock.sleeps) == 2:
            break
        await asyncio.sleep(0.01)  # not time logic: the waiters' round trips to Redis
    assert sorted(clock.sleeps) == pytest.approx([1.0, 2.0])  # reserved in Redis, no polling
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    # The last turn went back: a newcomer waits for it, not for the one after.
    third = asyncio.create_task(rl.acquire())
    for _ in range(20):
        await _settle()
        if len(clock.sleeps) == 3:
            break
        await asyncio.sleep(0.01)  # not time logic: the round trips to Redis
    assert clock.sleeps[-1] == pytest.approx(2.0)
    clock.advance(2)
    await asyncio.gather(first, third)
    await store.aclose()


async def test_redis_shadow_mode_lets_the_call_through(redis_server: RedisServer) -> None:  # noqa: F811
    lim = RedisRateLimiter(redis_server.url, rate=1, burst=1, name="shadow", timeout=T, mode="reject", enforce=False)
    with recording() as rec:
        assert await lim.run(_ok) == "ok"
        assert await lim.run(_ok) == "ok"
        assert (await lim.atry_acquire()).allowed
    assert rec.names() == [events.WOULD_REJECT] * 2
    assert rec.events[0].extras["backend"] == "redis"
    assert (lim.rejected, lim.would_reject) == (0, 2)
    await lim.aclose()


async def test_redis_limiters_old_async_try_acquire_is_deprecated(redis_server: RedisServer) -> None:  # noqa: F811
    lim = RedisRateLimiter(redis_server.url, rate=1, burst=1, name="old", timeout=T)
    keyed = KeyedRedisRateLimiter(redis_server.url, rate=1, burst=1, name="old-keyed", timeout=T)
    with pytest.warns(DeprecationWarning, match="atry_acquire"):
        assert (await lim.try_acquire()).allowed
    with pytest.warns(DeprecationWarning, match="atry_acquire"):
        assert (await keyed.try_acquire("k")).allowed
    assert not (await keyed.atry_acquire("k")).allowed
    assert not keyed.try_acquire_sync("k").allowed
    assert isinstance(lim, RateLimiter)
    assert isinstance(keyed, KeyedRateLimiter)
    # The first wave's attributes and status() fields are still there.
    assert (lim.prefix, lim.timeout, lim.rate, lim.burst, lim.mode) == ("resilient:", T, 1.0, 1, "wait")
    status = keyed.status()
    assert (status["type"], status["name"], status["key"]) == (
        "KeyedRedisRateLimiter",
        "old-keyed",
        "resilient:rl:old-keyed",
    )
    await lim.aclose()
    await keyed.aclose()


async def test_a_failed_open_redis_store_decides_locally_with_the_same_api(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    clock = FakeClock()
    store = RedisRateStore(redis_server.url, timeout=T, fallback_rate=2)
    kl = KeyedRateLimiter(100, burst=2, name="down-keyed", clock=clock, store=store, mode="reject")
    redis_server.kill()
    with recording() as rec:
        got = [(await kl.atry_acquire("k")).allowed for _ in range(3)]
    assert got == [True, True, False]
    assert store.backend == "local"
    assert rec.names() == [events.STORE_FAILED_OPEN, events.REJECTED]
    assert rec.events[1].extras["backend"] == "local"
    assert kl.keys == 1
