"""A breaker with both thresholds: a failure ratio and a run of consecutive failures, whichever trips first."""

from __future__ import annotations

import contextlib

import pytest

from resilient.breaker import CircuitBreaker, CircuitState
from resilient.errors import CircuitOpenError
from resilient.redis import RedisBreakerStore
from resilient.testing import FakeClock
from tests.redis_helpers import RedisServer, redis_server  # noqa: F401 - fixture


async def ok() -> str:
    return "ok"


async def fail() -> None:
    raise ConnectionError("down")


async def drive(cb: CircuitBreaker, outcomes: str) -> None:
    """Call through ``cb``: ``s`` a success, ``f`` a failure."""
    for o in outcomes:
        with contextlib.suppress(ConnectionError):
            await cb(ok if o == "s" else fail)()


def both(store: object | None = None, **kw: object) -> CircuitBreaker:
    return CircuitBreaker(
        "both",
        failure_ratio=0.5,
        minimum_throughput=100,
        consecutive_failures=5,
        sampling_duration=30,
        clock=kw.pop("clock", FakeClock()),  # type: ignore[arg-type]
        store=store,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest) -> object:
    if request.param == "memory":
        return lambda: both()
    server: RedisServer = request.getfixturevalue("redis_server")
    return lambda: both(RedisBreakerStore(server.url, timeout=2.0, sync_interval=0))


async def test_a_run_of_failures_opens_before_the_minimum_throughput(make: object) -> None:
    cb = make()  # type: ignore[operator]
    await drive(cb, "s" * 40 + "ffff")
    assert cb.state is CircuitState.CLOSED  # 4 in a row, 44 calls: neither threshold yet
    await drive(cb, "f")
    assert cb.state is CircuitState.OPEN  # the 5th in a row opens it, long before 100 calls
    with pytest.raises(CircuitOpenError):
        await cb(ok)()


async def test_scattered_failures_open_by_the_ratio(make: object) -> None:
    cb = make()  # type: ignore[operator]
    await drive(cb, "sfff" * 24)  # 96 calls, 75% failures, never 5 in a row
    assert cb.state is CircuitState.CLOSED
    await drive(cb, "sfff")
    assert cb.state is CircuitState.OPEN


async def test_a_success_resets_the_run() -> None:
    cb = both()
    await drive(cb, "ffffsffff")
    assert cb.state is CircuitState.CLOSED
    assert cb.metrics.consecutive_failures == 4


def test_status_names_both_thresholds() -> None:
    status = both().status()
    assert status["mode"] == "ratio or consecutive"
    assert status["threshold"] == {
        "failure_ratio": 0.5,
        "sampling_duration": 30.0,
        "minimum_throughput": 100,
        "consecutive_failures": 5,
    }


def test_one_threshold_alone_keeps_its_mode() -> None:
    assert CircuitBreaker(consecutive_failures=3).status()["mode"] == "consecutive"
    assert CircuitBreaker().status()["mode"] == "ratio"
    assert CircuitBreaker().config.failure_ratio == 0.5
    assert CircuitBreaker(failure_ratio=0.2).status()["threshold"]["failure_ratio"] == 0.2
