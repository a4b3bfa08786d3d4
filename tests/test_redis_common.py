"""What every Redis store shares: per-loop connections, and failing open on errors that are not outages."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import warnings
from collections.abc import Iterator

import pytest
import redis as sync_redis

from resilient import events
from resilient.breaker import CircuitBreaker
from resilient.redis import RedisBreakerStore, RedisRateLimiter
from resilient.testing import FakeClock, recording
from tests.redis_helpers import RedisServer, redis_server, redis_warnings, running_redis  # noqa: F401 - fixture

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
        assert (await lim.atry_acquire()).allowed
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
            assert loop.run_until_complete(lim.atry_acquire()).allowed
            loop.close()
        gc.collect()
        assert connected_clients(admin) <= 1
        assert lim.using_redis
        asyncio.run(lim.aclose())
        gc.collect()
    assert connected_clients(admin) == 0


async def test_aclose_closes_this_loops_client(redis_server: RedisServer, admin: sync_redis.Redis) -> None:  # noqa: F811
    lim = RedisRateLimiter(redis_server.url, rate=1000, burst=1000, name="aclose", timeout=T)
    assert (await lim.atry_acquire()).allowed
    assert connected_clients(admin) == 1
    await lim.aclose()
    assert connected_clients(admin) == 0
    # Usable again afterwards: a new client on demand.
    assert (await lim.atry_acquire()).allowed
    assert lim.using_redis
    await lim.aclose()


# -- configuration errors stay visible (issue 14 item 26) ----------------------------------------

ADMIN = ("admin", "admin-pw")


@pytest.fixture
def acl_server() -> Iterator[RedisServer]:
    """A server where the default user is off, ``app`` may not run scripts and ``admin`` may do anything."""
    extra = (
        "--user", "default", "off",
        "--user", "admin", "on", ">admin-pw", "~*", "&*", "+@all",
        "--user", "app", "on", ">app-pw", "~*", "&*", "+@all", "-eval", "-evalsha",
    )  # fmt: skip
    with running_redis(extra=extra, user=ADMIN[0], password=ADMIN[1]) as server:
        yield server


def url_as(server: RedisServer, user: str, password: str) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


def warning_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in redis_warnings(caplog)]


def test_a_refused_password_warns_at_a_bounded_rate_and_shows_in_status(
    acl_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    url = url_as(acl_server, "app", "wrong-pw")
    caplog.set_level(logging.WARNING, logger="resilient.redis")
    with recording() as rec:
        lim = RedisRateLimiter(url, rate=1000, burst=1000, name="auth", timeout=T, clock=clock, mode="reject")
        # The breaker fails open at bind already: reading the shared state is refused.
        cb = CircuitBreaker(name="auth", clock=clock, store=RedisBreakerStore(url, timeout=T, recovery_interval=1.0))
        guarded = cb(lambda: "ok")
        for second in range(121):
            assert lim.try_acquire_sync().allowed  # still failing open: never a failed call
            assert guarded() == "ok"
            if second < 120:
                clock.advance(1.0)  # one probe per recovery_interval for each
        texts = warning_texts(caplog)
        # One warning each at the first failure, then one a minute while it lasts (t=60, t=120).
        assert len(texts) == 6, texts
        assert all("AuthenticationError" in t and "configuration" in t for t in texts)
        assert [e.name for e in rec.events if e.name.startswith("store_")] == [events.STORE_FAILED_OPEN] * 2
    for status in (lim.status(), cb.store.status()):  # type: ignore[attr-defined]
        assert status["failed_open"] is True
        assert status["configuration_error"] is True
        assert status["error"].startswith("AuthenticationError")
        assert status["outages"] == 1
        assert "wrong-pw" not in json.dumps(status)
    assert "wrong-pw" not in " ".join(texts)


def test_an_acl_that_forbids_scripts_stays_failed_open_and_recovers_when_fixed(
    acl_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    url = url_as(acl_server, "app", "app-pw")
    lim = RedisRateLimiter(url, rate=1000, burst=1000, name="acl", timeout=T, clock=clock, mode="reject")
    caplog.set_level(logging.INFO, logger="resilient.redis")
    with recording() as rec:
        for _ in range(30):
            assert lim.try_acquire_sync().allowed
            clock.advance(1.0)
        # The probe runs what calls run (not a PING the ACL allows), so the limiter does not flap
        # between "recovered" and "failed open" every second.
        assert len(warning_texts(caplog)) == 1
        assert "NoPermissionError" in warning_texts(caplog)[0]
        assert lim.status()["outages"] == 1
        assert not lim.using_redis
        admin = sync_redis.Redis(port=acl_server.port, username=ADMIN[0], password=ADMIN[1])
        admin.acl_setuser("app", enabled=True, commands=["+eval", "+evalsha"])
        admin.close()
        assert lim.try_acquire_sync().allowed  # the due probe gets through: Redis again
        assert lim.using_redis
        assert [e.name for e in rec.events if e.name.startswith("store_")] == [
            events.STORE_FAILED_OPEN,
            events.STORE_RECOVERED,
        ]
    status = lim.status()
    assert (status["error"], status["configuration_error"], status["failed_open"]) == (None, False, False)
    lim.close()


def test_an_outage_stays_one_warning_however_long(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    clock = FakeClock()
    lim = RedisRateLimiter(redis_server.url, rate=1000, burst=1000, name="out", timeout=T, clock=clock)
    assert lim.try_acquire_sync().allowed
    caplog.set_level(logging.WARNING, logger="resilient.redis")
    redis_server.kill()
    for _ in range(150):
        assert lim.try_acquire_sync().allowed
        clock.advance(1.0)
    assert len(warning_texts(caplog)) == 1
    status = lim.status()
    assert status["configuration_error"] is False
    assert status["error"] == "ConnectionError"
    redis_server.restart()
    assert lim.try_acquire_sync().allowed
    assert lim.using_redis
    assert len(warning_texts(caplog)) == 1
    lim.close()
