"""What every Redis store shares: per-loop connections, and failing open on errors that are not outages."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Iterator

import pytest
import redis as sync_redis

from resilient.breaker import CircuitBreaker
from resilient.redis import RedisBreakerStore, RedisRateLimiter
from tests.redis_helpers import RedisServer, redis_server  # noqa: F401 - fixture

T = 2.0

pytestmark = pytest.mark.redis


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[sync_redis.Redis]:  # noqa: F811
    client = sync_redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def connected_clients(admin: sync_redis.Redis) -> int:
    """Connections the server sees, not counting the one asking."""
    return len(admin.client_list()) - 1


# -- one client per event loop, closed with its loop (issue 14 item 25) ----------------------


def test_thirty_event_loops_leave_no_connection_and_no_warning(
    redis_server: RedisServer,  # noqa: F811
    admin: sync_redis.Redis,
) -> None:
    lim = RedisRateLimiter(redis_server.url, rate=1000, burst=1000, name="loops", timeout=T)
    cb = CircuitBreaker(name="loops", store=RedisBreakerStore(redis_server.url, timeout=T, sync_interval=0))
    cb.store.close()  # the sync client made at bind, to count the async ones only  # type: ignore[attr-defined]

    async def ok() -> str:
        return "ok"

    async def use() -> None:
        assert (await lim.try_acquire()).allowed
        assert await cb(ok)() == "ok"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(30):
            asyncio.run(use())
            assert connected_clients(admin) == 0  # each run's connections closed as its loop ended
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert lim.using_redis
    assert cb.store.using_redis  # type: ignore[attr-defined]


def test_a_loop_closed_without_shutdown_asyncgens_leaves_its_client_to_the_collector(
    redis_server: RedisServer,  # noqa: F811
    admin: sync_redis.Redis,
) -> None:
    # The documented limit: nothing can run on a loop closed by hand, so its client is dropped when the
    # next loop makes one, and the collector closes its sockets; the store never fails over it, and its
    # closer never reaches the closed loop (pytest turns an "Exception ignored" into an error).
    lim = RedisRateLimiter(redis_server.url, rate=1000, burst=1000, name="manual", timeout=T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(5):
            loop = asyncio.new_event_loop()
            assert loop.run_until_complete(lim.try_acquire()).allowed
            loop.close()
        gc.collect()
        assert connected_clients(admin) <= 1
        assert lim.using_redis
        asyncio.run(lim.aclose())
        gc.collect()
    assert connected_clients(admin) == 0


async def test_aclose_closes_this_loops_client(redis_server: RedisServer, admin: sync_redis.Redis) -> None:  # noqa: F811
    lim = RedisRateLimiter(redis_server.url, rate=1000, burst=1000, name="aclose", timeout=T)
    assert (await lim.try_acquire()).allowed
    assert connected_clients(admin) == 1
    await lim.aclose()
    assert connected_clients(admin) == 0
    # Usable again afterwards: a new client on demand.
    assert (await lim.try_acquire()).allowed
    assert lim.using_redis
    await lim.aclose()
