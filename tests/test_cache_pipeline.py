"""StaleCache in a pipeline: outside Retry, the breaker and the timeouts, serving stale on their failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resilient import CircuitOpenError, Pipeline, Retry, Timeout
from resilient import TimeoutError as ResilientTimeoutError
from resilient.breaker import CircuitBreaker
from resilient.cache import CACHE_REFRESH_FAILED, StaleCache, last_lookup
from resilient.events import CACHE_STALE_HIT, EventSite
from resilient.policy import AsyncFn, AsyncWrapped, Policy
from resilient.testing import FakeClock, recording
from tests.cache_helpers import Upstream, no_task_warnings, settle

__all__ = ["no_task_warnings"]


class Hang:
    """An upstream that answers until told to hang (until a Timeout on the fake clock ends it)."""

    def __init__(self) -> None:
        self.calls = 0
        self.hang = False

    async def __call__(self, key: str) -> str:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        return f"{key}-{self.calls}"


async def test_an_expired_inner_timeout_serves_the_stale_value(clock: FakeClock) -> None:
    up = Hang()
    cache = StaleCache(10, stale_ttl=300, refresh="inline", clock=clock)
    get = Pipeline(cache, Timeout(0.02, clock=clock))(up)
    assert await get("a") == "a-1"
    clock.advance(60)
    up.hang = True
    with recording() as rec:

        async def get_and_look() -> tuple[str, Any]:
            return await get("a"), last_lookup()  # last_lookup() reads the calling task's context

        call = asyncio.create_task(get_and_look())
        await settle()
        clock.advance(0.02)  # the inner timeout expires
        value, lookup = await call
        assert value == "a-1"
    assert lookup is not None
    assert lookup.stale
    assert lookup.age == pytest.approx(60.02)  # served when the timeout ended the call
    [event] = rec.of(CACHE_STALE_HIT)
    assert event.exception == "resilient.errors.TimeoutError"
    assert event.extras == {"reason": "error"}
    # no stale value for a cold key: the timeout propagates
    cold = asyncio.create_task(get("b"))
    await settle()
    clock.advance(0.02)
    with pytest.raises(ResilientTimeoutError):
        await cold


async def test_a_timeout_in_a_background_refresh_never_reaches_a_caller(
    clock: FakeClock, no_task_warnings: None
) -> None:
    up = Hang()
    cache = StaleCache(10, stale_ttl=300, clock=clock)
    get = Pipeline(cache, Timeout(0.02, clock=clock))(up)
    await get("a")
    clock.advance(60)
    up.hang = True
    with recording() as rec:
        assert await get("a") == "a-1"  # at once
        await settle()
        clock.advance(0.02)  # the refresh times out in the background
        await settle()
    [failed] = rec.of(CACHE_REFRESH_FAILED)
    assert failed.exception == "resilient.errors.TimeoutError"
    assert cache.status()["in_flight"] == 0


class Rejecting(Policy):
    """Stands in for any inner policy that refuses calls (breaker, bulkhead, limiter)."""

    policy_type = "rejecting"

    def __init__(self) -> None:
        super().__init__()
        self.open = False

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.open:
                raise CircuitOpenError("open", policy="simulated")
            return await fn(*args, **kwargs)

        return call


async def test_a_rejection_under_retry_serves_the_stale_value(clock: FakeClock) -> None:
    up = Upstream()
    rejecting = Rejecting()
    get = Pipeline(
        StaleCache(10, stale_ttl=300, refresh="inline", on=ConnectionError, clock=clock),
        Retry(3, on=ConnectionError, clock=clock),
        rejecting,
    )(up)
    assert await get(1) == "v1"
    clock.advance(30)
    rejecting.open = True
    assert await get(1) == "v1"
    assert last_lookup() is not None
    assert last_lookup().stale


async def test_an_open_circuit_breaker_serves_the_stale_value(auto_clock: FakeClock) -> None:
    clock = auto_clock
    up = Upstream()
    breaker = CircuitBreaker("users-api", consecutive_failures=2, break_duration=30, clock=clock)
    cache = StaleCache(10, stale_ttl=300, refresh="inline", clock=clock)
    get = Pipeline(cache, Retry(2, on=ConnectionError, clock=clock), breaker)(up)
    assert await get(1) == "v1"
    clock.advance(20)
    up.error = ConnectionError("down")
    assert await get(1) == "v1"  # two failed attempts: stale-if-error, and the breaker opens
    assert breaker.state.value == "open"
    calls = up.calls
    with recording() as rec:
        assert await get(1) == "v1"  # rejected by the open breaker: stale again, no call made
    assert up.calls == calls
    [event] = rec.of(CACHE_STALE_HIT)
    assert event.exception == "resilient.errors.CircuitOpenError"
    with pytest.raises(CircuitOpenError):
        await get(2)  # nothing cached for 2: the rejection propagates


async def test_background_refreshes_hit_the_open_breaker_cheaply(auto_clock: FakeClock) -> None:
    clock = auto_clock
    up = Upstream()
    breaker = CircuitBreaker(consecutive_failures=1, break_duration=60, clock=clock)
    cache = StaleCache(10, stale_ttl=300, clock=clock)
    get = Pipeline(cache, breaker)(up)
    await get(1)
    clock.advance(20)
    breaker.isolate()
    for _ in range(5):
        assert await get(1) == "v1"
        await settle()
    assert up.calls == 1
    assert cache.status()["last_refresh_error"] == "CircuitOpenError"


def test_sync_pipeline_with_retry(clock: FakeClock) -> None:
    calls = 0

    def load(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ConnectionError("down")
        return x * 10

    get = Pipeline(StaleCache(10, stale_ttl=300, clock=clock), Retry(2, on=ConnectionError, clock=clock))(load)
    assert get(4) == 40
    clock.advance(30)
    assert get(4) == 40
    assert calls == 3


async def test_the_unhashable_error_names_the_guarded_function_inside_a_pipeline(clock: FakeClock) -> None:
    async def get_users(ids: list[int]) -> list[str]:
        return []

    cached = Pipeline(StaleCache(10, clock=clock), Timeout(1))(get_users)
    with pytest.raises(TypeError, match=r"cannot cache test_the_unhashable.*get_users\(\).*key="):
        await cached([1])
