"""Quorum mode of the shared breaker: ``RedisBreakerStore(..., quorum=k)``.

Three replicas (three breakers with distinct replica ids over one private
redis-server) on one fake clock: one sick replica opens only its own
circuit; ``k`` sick replicas open it for the fleet; a vote that lapses stops
counting; Redis going away fails open to each replica's own circuit.
"""

from __future__ import annotations

import asyncio

import pytest

from resilient.breaker import CircuitBreaker, CircuitState
from resilient.errors import CircuitOpenError
from resilient.redis import RedisBreakerStore
from resilient.testing import FakeClock
from tests.redis_helpers import LocalCluster, RedisServer, redis_cluster, redis_server  # noqa: F401 - fixtures

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
BREAK = 10.0


def fail() -> None:
    raise ConnectionError("upstream down")


def ok() -> str:
    return "ok"


def fleet(url: str, clock: FakeClock, quorum: int = 2, n: int = 3, name: str = "pay") -> list[CircuitBreaker]:
    """``n`` replicas of one breaker: each its own circuit (2 failures in a row open it), one vote each."""
    return [
        CircuitBreaker(
            name,
            consecutive_failures=2,
            break_duration=BREAK,
            clock=clock,
            store=RedisBreakerStore(
                url, quorum=quorum, replica=f"r{i}", sync_interval=0, timeout=2.0, redis_time=False
            ),
        )
        for i in range(n)
    ]


def sicken(cb: CircuitBreaker) -> None:
    guarded = cb(fail)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            guarded()


def admits(cb: CircuitBreaker) -> bool:
    try:
        cb(ok)()
    except CircuitOpenError:
        return False
    return True


def test_quorum_is_validated_at_construction() -> None:
    url = "redis://127.0.0.1:1/0"
    with pytest.raises(ValueError, match="quorum"):
        RedisBreakerStore(url, quorum=0)
    for bad in ("2", 2.0, True):
        with pytest.raises(TypeError, match="quorum"):
            RedisBreakerStore(url, quorum=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="replica"):
        RedisBreakerStore(url, replica="r1")
    with pytest.raises(TypeError, match="replica"):
        RedisBreakerStore(url, quorum=2, replica="")
    store = RedisBreakerStore(url, quorum=2)
    assert isinstance(store, RedisBreakerStore)
    assert store.quorum == 2
    assert store.replica  # a default id: host, pid and a random part


@pytest.mark.redis
def test_one_sick_replica_opens_only_its_own_circuit(redis_server: RedisServer) -> None:  # noqa: F811
    clock = FakeClock()
    a, b, c = fleet(redis_server.url, clock)
    sicken(a)
    assert a.state is OPEN
    assert not admits(a)  # it protects itself
    assert admits(b)  # the others are not taken off a dependency that works for them
    assert admits(c)
    assert b.store.votes == 1  # type: ignore[attr-defined]
    assert b.state is CLOSED
    assert c.metrics.state is CLOSED
    status = a.status()
    assert status["store"] == "RedisBreakerStore"  # quorum mode is a mode of that store
    assert status["state"] == "open"
    assert a.store.status()["own_state"] == "open"  # type: ignore[attr-defined]
    assert a.store.status()["fleet_open"] is False  # type: ignore[attr-defined]


@pytest.mark.redis
def test_a_quorum_of_sick_replicas_opens_the_fleet(redis_server: RedisServer) -> None:  # noqa: F811
    clock = FakeClock()
    a, b, c = fleet(redis_server.url, clock)
    sicken(a)
    sicken(b)  # the second vote: the fleet's circuit opens
    assert b.store.votes == 2  # type: ignore[attr-defined]
    # A healthy replica learns it at its next round trip (here: its next success, sync_interval=0)...
    assert admits(c)
    assert c.state is OPEN
    # ...and fails fast from then on, its own circuit still closed.
    with pytest.raises(CircuitOpenError):
        c(ok)()
    assert c.store.status()["own_state"] == "closed"  # type: ignore[attr-defined]
    # A replica starting now learns it before its first call (it starts open: no transition to report).
    opened: list[CircuitState] = []
    c2 = CircuitBreaker(
        "pay",
        consecutive_failures=2,
        break_duration=BREAK,
        clock=clock,
        on_open=lambda change: opened.append(change.state),
        store=RedisBreakerStore(redis_server.url, quorum=2, replica="r3", sync_interval=0, redis_time=False),
    )
    assert c2.state is OPEN
    assert not admits(c2)
    assert opened == []


@pytest.mark.redis
def test_lapsed_votes_stop_counting_and_a_recovered_replica_withdraws(redis_server: RedisServer) -> None:  # noqa: F811
    clock = FakeClock()
    a, b, c = fleet(redis_server.url, clock)
    sicken(a)
    sicken(b)
    assert admits(c)  # the fleet is open for c
    assert not admits(c)
    clock.advance(BREAK)  # a's and b's votes lapse with their breaks (nobody called them)
    assert admits(c)  # counted again: 0 fresh votes, c's own closed circuit decides
    assert c.state is CLOSED
    # a probes and recovers: its vote is withdrawn; b probes and fails: its vote is renewed.
    assert admits(a)
    assert a.state is CLOSED
    sicken_probe = b(fail)
    with pytest.raises(ConnectionError):
        sicken_probe()
    assert b.state is OPEN
    assert b.store.votes == 1  # type: ignore[attr-defined]
    assert admits(c)


@pytest.mark.redis
def test_the_fleet_fails_open_to_each_replicas_own_circuit_when_redis_dies(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    a, b, c = fleet(redis_server.url, clock)
    sicken(a)
    sicken(b)
    assert admits(c)
    assert not admits(c)
    redis_server.kill()
    clock.advance(0.5)  # c's fleet view ends: it counts again, and Redis is gone
    assert admits(c)  # fail open: c's own closed circuit decides
    assert c.state is CLOSED
    assert not c.store.using_redis  # type: ignore[attr-defined]
    assert not admits(a)  # a still protects itself
    assert any("cannot use Redis" in r.getMessage() for r in caplog.records)
    # Redis comes back: the next count due after recovery_interval finds it, and a's vote is stated again.
    redis_server.restart()
    clock.advance(1.0)
    for _ in range(3):  # a success's round trip probes Redis (the first may meet a pooled dead connection)
        assert admits(c)
        if c.store.using_redis:  # type: ignore[attr-defined]
            break
        clock.advance(1.0)
    assert c.store.using_redis  # type: ignore[attr-defined]
    # The restarted Redis is empty: a's vote is stated again by its next round trip (b's by its own).
    a.store.refresh()  # type: ignore[attr-defined]
    assert a.store.votes == 1  # type: ignore[attr-defined]


@pytest.mark.redis
async def test_async_replicas_vote_and_count_the_same(redis_server: RedisServer) -> None:  # noqa: F811
    clock = FakeClock()
    a, b, c = fleet(redis_server.url, clock, name="async-pay")

    async def afail() -> None:
        raise ConnectionError("upstream down")

    async def aok() -> str:
        await asyncio.sleep(0)
        return "ok"

    for cb in (a, b):
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await cb(afail)()
    assert await c(aok)() == "ok"
    with pytest.raises(CircuitOpenError):
        await c(aok)()
    clock.advance(BREAK)
    assert await c(aok)() == "ok"


@pytest.mark.redis
def test_quorum_on_a_redis_cluster(redis_cluster: LocalCluster) -> None:  # noqa: F811
    clock = FakeClock()
    a, b, c = fleet(redis_cluster.url, clock, name="cluster-pay")
    sicken(a)
    assert admits(c)
    sicken(b)
    assert admits(c)
    assert not admits(c)
    assert c.store.votes_key.endswith(":votes")  # type: ignore[attr-defined]
    assert "{cluster-pay}" in c.store.votes_key  # type: ignore[attr-defined]


@pytest.mark.redis
def test_a_healthy_replica_counts_the_votes_at_most_every_sync_interval(redis_server: RedisServer) -> None:  # noqa: F811
    clock = FakeClock()
    a, b = fleet(redis_server.url, clock, name="interval-pay", n=2)
    c = CircuitBreaker(
        "interval-pay",
        clock=clock,
        store=RedisBreakerStore(redis_server.url, quorum=2, replica="c", sync_interval=1.0, redis_time=False),
    )
    assert admits(c)  # counted: no votes; the next count is due in 1 s
    sicken(a)
    sicken(b)
    assert admits(c)  # no round trip yet: c's successes are its own business until the count is due
    assert c.state is CLOSED
    clock.advance(1.0)
    assert admits(c)  # this success counts the votes: the fleet is open
    assert c.state is OPEN
    assert not admits(c)
    assert c.metrics.retry_after == 1.0  # it asks again one sync_interval later (the votes last longer)
