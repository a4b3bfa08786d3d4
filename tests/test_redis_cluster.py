"""Every Redis store on a Redis Cluster: three masters the tests start, one killed mid-run.

The cluster (:class:`tests.redis_helpers.LocalCluster`) runs without
replicas and with ``cluster-require-full-coverage no``: a killed master
takes its slots away and the other masters keep serving theirs, so each test
knows which stores an outage reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncNode
from redis.asyncio.cluster import RedisCluster as AsyncCluster
from redis.cluster import ClusterNode as SyncNode
from redis.cluster import RedisCluster as SyncCluster
from redis.crc import key_slot

from resilient import events
from resilient.breaker import CircuitBreaker, CircuitState
from resilient.errors import CircuitOpenError
from resilient.ratelimit import KeyedRateLimiter, RateLimiter
from resilient.redis import RedisBreakerStore, RedisRateStore
from resilient.testing import FakeClock, recording
from tests.redis_helpers import LocalCluster, RedisServer, redis_cluster, redis_warnings  # noqa: F401 - fixture

pytestmark = pytest.mark.redis

# Generous per-operation timeout for tests that are not about slowness (the default is 50 ms).
T = 2.0
# Every async test body runs under this bound: a hang fails the test instead of the suite.
BOUND = 60.0


async def ok() -> str:
    return "ok"


async def fail() -> None:
    raise ConnectionError("upstream down")


def slot(key: str) -> int:
    return key_slot(key.encode())


def name_on(cluster: LocalCluster, server: RedisServer, key_of: Callable[[str], str], avoid: str = "") -> str:
    """A name whose key (``key_of(name)``) the master ``server`` serves."""
    for i in range(1000):
        name = f"{avoid}n{i}"
        if cluster.owner(key_of(name)) is server:
            return name
    raise AssertionError(f"no name found for {server}")


def breaker_key(name: str) -> str:
    return f"resilient:cb:{{{name}}}:state"


def limiter_key(name: str) -> str:
    return f"resilient:rl:{name}"


async def until_healthy(healthy: Callable[[], bool], clock: FakeClock, call: Callable[[], Awaitable[object]]) -> None:
    """Let probes run (one per clock second, started by ``call``) until ``healthy()``; bounded in real time.

    A master that comes back answers CLUSTERDOWN for about two seconds before it serves its slots.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while not healthy():
        if loop.time() > end:
            raise AssertionError("the store did not recover within 30 s")
        clock.advance(1.0)
        with contextlib.suppress(CircuitOpenError):
            await call()
        await asyncio.sleep(0.05)


# -- URLs and clients ----------------------------------------------------------------------


def test_a_cluster_url_lists_every_node_and_never_logs_credentials() -> None:
    store = RedisRateStore("redis+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/0?ssl_cert_reqs=none")
    assert repr(store) == (
        "RedisRateStore('redis+cluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002', name=None, prefix='resilient:')"
    )
    tls = RedisBreakerStore("rediss+cluster://h1,h2:7001", name="x")
    assert tls._conn.where == "rediss+cluster://h1:6379,h2:7001"
    assert tls._conn.cluster


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis+cluster://h1:7000,,h2:7001", "client_or_url: '' is not a host"),
        ("redis+cluster://h1:70x0", "client_or_url: 'h1:70x0' is not a host"),
        ("redis+cluster://h1:7000/1", "client_or_url: a Redis Cluster has database 0 only"),
        ("cluster://h1:7000", "client_or_url must be a redis://"),
    ],
)
def test_a_bad_cluster_url_fails_at_construction_naming_the_parameter(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RedisRateStore(url)


def test_a_sync_client_must_be_a_sync_client() -> None:
    client = AsyncCluster(startup_nodes=[AsyncNode("127.0.0.1", 1)])
    with pytest.raises(TypeError, match=r"sync_client must be a redis\.Redis or redis\.cluster\.RedisCluster"):
        RedisBreakerStore(client, sync_client=client)  # type: ignore[arg-type]


# -- the stores on a cluster -------------------------------------------------------------------


def test_a_breakers_keys_share_one_slot_and_names_spread_over_the_masters(
    redis_cluster: LocalCluster,  # noqa: F811
) -> None:
    owners = set()
    for i in range(40):
        cb = CircuitBreaker(name=f"svc:{i}{{x}}", store=RedisBreakerStore(redis_cluster.url, timeout=T))
        keys = cb.store.keys  # type: ignore[attr-defined]
        assert len({slot(k) for k in keys}) == 1, keys  # one slot: the script never crosses slots
        owners.add(redis_cluster.owner(keys[0]).port)
        assert cb.store.using_redis  # type: ignore[attr-defined]
        cb.store.close()  # type: ignore[attr-defined]
    assert len(owners) == 3  # breakers of different names use every master


async def test_two_replicas_share_one_circuit_on_a_cluster(redis_cluster: LocalCluster) -> None:  # noqa: F811
    async with asyncio.timeout(BOUND):
        a = CircuitBreaker(
            name="pay", consecutive_failures=3, break_duration=30, store=RedisBreakerStore(redis_cluster.url, timeout=T)
        )
        b = CircuitBreaker(
            name="pay", consecutive_failures=3, break_duration=30, store=RedisBreakerStore(redis_cluster.url, timeout=T)
        )
        assert await b(ok)() == "ok"
        for _ in range(3):
            with pytest.raises(ConnectionError):
                await a(fail)()
        assert a.state is CircuitState.OPEN
        b.store.refresh()  # type: ignore[attr-defined]
        with pytest.raises(CircuitOpenError):
            await b(ok)()  # the other replica fails fast: one circuit for the fleet
        b.reset()  # manual control (the sync cluster client) reaches every replica
        assert a.store.refresh().state is CircuitState.CLOSED  # type: ignore[attr-defined]
        assert a.store.using_redis
        assert b.store.using_redis
        for cb in (a, b):
            await cb.store.aclose()  # type: ignore[attr-defined]


async def test_a_shared_limit_holds_across_replicas_and_keys_on_every_master(
    redis_cluster: LocalCluster,  # noqa: F811
) -> None:
    async with asyncio.timeout(BOUND):
        one = RateLimiter(
            1, per=3600, burst=5, mode="reject", store=RedisRateStore(redis_cluster.url, name="api", timeout=T)
        )
        two = RateLimiter(
            1, per=3600, burst=5, mode="reject", store=RedisRateStore(redis_cluster.url, name="api", timeout=T)
        )
        allowed = [(await lim.atry_acquire()).allowed for lim in (one, two) * 5]
        assert allowed.count(True) == 5  # one bucket for both, wherever its slot is
        assert two.try_acquire().allowed is False  # the sync path sees the same bucket

        keyed = KeyedRateLimiter(
            1, per=3600, burst=2, mode="reject", store=RedisRateStore(redis_cluster.url, name="tenant", timeout=T)
        )
        tenants = [f"t{i}" for i in range(30)]
        assert {redis_cluster.owner(f"resilient:rl:tenant:{t}").port for t in tenants} == {
            s.port for s in redis_cluster.servers
        }  # the keys of one limiter spread over the masters: no hot shard
        for t in tenants:
            assert [(await keyed.atry_acquire(t)).allowed for _ in range(3)] == [True, True, False]
        for lim in (one, two, keyed):
            assert lim.store.using_redis  # type: ignore[attr-defined]
            await lim.store.aclose()  # type: ignore[attr-defined]


async def test_given_cluster_clients_are_used_as_they_are(redis_cluster: LocalCluster) -> None:  # noqa: F811
    async with asyncio.timeout(BOUND):
        aclient = AsyncCluster(startup_nodes=[AsyncNode("127.0.0.1", s.port) for s in redis_cluster.servers])
        sclient = SyncCluster(startup_nodes=[SyncNode("127.0.0.1", s.port) for s in redis_cluster.servers])
        try:
            store = RedisBreakerStore(aclient, sync_client=sclient, timeout=T)
            cb = CircuitBreaker(name="given", consecutive_failures=2, store=store)
            assert store._conn.where.startswith("redis+cluster://127.0.0.1:")
            assert await cb(ok)() == "ok"
            cb.trip()
            assert cb.state is CircuitState.OPEN
            assert sclient.hget(breaker_key("given"), "st") == b"open"
            lim = RateLimiter(
                1, per=3600, burst=1, mode="reject", name="given", store=RedisRateStore(sclient, timeout=T)
            )
            assert [lim.try_acquire().allowed for _ in range(2)] == [True, False]
            assert store.using_redis
            assert lim.store.using_redis
            await store.aclose()  # given clients stay open
            assert await aclient.ping()
        finally:
            await aclient.aclose()
            sclient.close()


async def test_the_first_call_waits_for_the_clusters_layout_instead_of_failing_open(
    redis_cluster: LocalCluster,  # noqa: F811
) -> None:
    # A replica's first call reads the cluster's layout (CLUSTER SLOTS, COMMAND), which takes longer
    # than one operation's timeout on a loaded machine: it used to time out and fail open on start.
    class SlowLayout(AsyncCluster):
        async def initialize(self) -> AsyncCluster:
            await asyncio.sleep(0.3)  # the layout takes longer than the store's 0.15 s per operation
            return await super().initialize()

    async with asyncio.timeout(BOUND):
        client = SlowLayout(startup_nodes=[AsyncNode("127.0.0.1", s.port) for s in redis_cluster.servers])
        try:
            lim = RateLimiter(10, mode="reject", name="layout", store=RedisRateStore(client, timeout=0.15))
            with recording() as rec:
                assert (await lim.atry_acquire()).allowed
            assert lim.store.using_redis  # type: ignore[attr-defined]
            assert rec.of(events.STORE_FAILED_OPEN) == []
        finally:
            await client.aclose()


async def test_a_plain_url_to_a_cluster_node_is_a_configuration_error_that_says_so(
    redis_cluster: LocalCluster,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with asyncio.timeout(BOUND):
        server = redis_cluster.servers[0]
        other = next(s for s in redis_cluster.servers if s is not server)
        name = name_on(redis_cluster, other, limiter_key)
        lim = RateLimiter(10, mode="reject", store=RedisRateStore(server.url, name=name, timeout=T))
        assert (await lim.atry_acquire()).allowed  # fails open: the call goes on
        status = lim.store.status()  # type: ignore[attr-defined]
        assert status["failed_open"]
        assert status["configuration_error"]
        assert status["error"].startswith("MovedError: ")
        assert "redis+cluster://" in status["error"]
        assert "redis+cluster://" in redis_warnings(caplog)[0].getMessage()
        await lim.store.aclose()  # type: ignore[attr-defined]


# -- a master killed mid-run -------------------------------------------------------------------


async def test_a_killed_master_fails_its_stores_open_the_others_stay_shared_and_all_recover(
    redis_cluster: LocalCluster,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with asyncio.timeout(BOUND * 2):
        victim = redis_cluster.servers[0]
        survivor = redis_cluster.servers[1]
        clock = FakeClock()
        cb_name = name_on(redis_cluster, victim, breaker_key)
        cb = CircuitBreaker(
            name=cb_name,
            consecutive_failures=3,
            break_duration=30,
            clock=clock,
            store=RedisBreakerStore(redis_cluster.url, timeout=T, sync_interval=0),
        )
        gone = RateLimiter(
            1, per=3600, burst=3, mode="reject", clock=clock,
            store=RedisRateStore(redis_cluster.url, name=name_on(redis_cluster, victim, limiter_key), timeout=T),
        )  # fmt: skip
        kept = RateLimiter(
            1, per=3600, burst=3, mode="reject", clock=clock,
            store=RedisRateStore(redis_cluster.url, name=name_on(redis_cluster, survivor, limiter_key), timeout=T),
        )  # fmt: skip
        guarded = cb(ok)
        assert await guarded() == "ok"
        assert (await gone.atry_acquire()).allowed
        assert (await kept.atry_acquire()).allowed
        caplog.set_level(logging.INFO, logger="resilient.redis")

        victim.kill()
        with recording() as rec:
            for _ in range(20):
                assert await guarded() == "ok"  # an outage of its master never fails a call
            assert not cb.store.using_redis  # type: ignore[attr-defined]
            await gone.atry_acquire()
            assert not gone.store.using_redis  # type: ignore[attr-defined]
            # The survivor's slots are still served: that limit stays shared, and exact.
            assert [(await kept.atry_acquire()).allowed for _ in range(3)] == [True, True, False]
            assert kept.store.using_redis  # type: ignore[attr-defined]
            # Failed open, the breaker still protects this replica: failures open it locally.
            for _ in range(3):
                with pytest.raises(ConnectionError):
                    await cb(fail)()
            assert cb.state is CircuitState.OPEN
            assert len(rec.of(events.STORE_FAILED_OPEN)) == 2  # one per store, not one per call
            assert len(redis_warnings(caplog)) == 2

            redis_cluster.restart(victim)
            await until_healthy(lambda: cb.store.using_redis, clock, guarded)  # type: ignore[attr-defined]
            await until_healthy(lambda: gone.store.using_redis, clock, gone.atry_acquire)  # type: ignore[attr-defined]
            assert len(rec.of(events.STORE_RECOVERED)) == 2
        # Redis' state is authoritative again: the restarted master lost the circuit (no persistence),
        # so it is a fresh, closed one, shared again.
        assert cb.state is CircuitState.CLOSED
        assert await guarded() == "ok"
        assert cb.store.using_redis
        assert kept.store.using_redis
        assert len(redis_warnings(caplog)) == 2
        for lim in (gone, kept):
            await lim.store.aclose()  # type: ignore[attr-defined]
        await cb.store.aclose()  # type: ignore[attr-defined]


def test_a_killed_master_fails_a_sync_limiter_open_and_it_recovers(redis_cluster: LocalCluster) -> None:  # noqa: F811
    victim = redis_cluster.servers[2]
    clock = FakeClock()
    name = name_on(redis_cluster, victim, limiter_key)
    lim = RateLimiter(
        1, per=3600, burst=2, mode="reject", clock=clock, store=RedisRateStore(redis_cluster.url, name=name, timeout=T)
    )
    assert lim.try_acquire().allowed
    victim.kill()
    with recording() as rec:
        assert lim.try_acquire().allowed  # failed open: the local bucket (full) answers
        assert not lim.store.using_redis  # type: ignore[attr-defined]
        redis_cluster.restart(victim)
        for _ in range(60):  # a probe per clock second; the restarted master needs ~2 s of real time
            clock.advance(1.0)
            lim.try_acquire()
            if lim.store.using_redis:  # type: ignore[attr-defined]
                break
            time.sleep(0.1)  # real time for the restarted process, not time logic
        assert lim.store.using_redis  # type: ignore[attr-defined]
        assert rec.names()[-1] == events.STORE_RECOVERED
    lim.store.close()  # type: ignore[attr-defined]


def test_clients_from_the_url_are_cluster_clients(redis_cluster: LocalCluster) -> None:  # noqa: F811
    store = RedisRateStore(redis_cluster.url, name="kinds", timeout=T)
    assert isinstance(store._conn.sclient(), SyncCluster)
    assert not isinstance(store._conn.sclient(), sync_redis.Redis)
    store.close()

    async def aclient() -> object:
        client = store._conn.aclient()
        await store._conn.aclose()
        return client

    made = asyncio.run(aclient())
    assert isinstance(made, AsyncCluster)
    assert not isinstance(made, aioredis.Redis)
