"""StaleCache during an outage: a rejected refresh waits out the rejection's retry_after (issue 17, item 15)."""

from __future__ import annotations

from typing import Any

import pytest

from resilient import CircuitBreaker, Pipeline, RateLimitedError, StaleCache
from resilient.cache import last_lookup
from resilient.events import CACHE_REFRESH_FAILED, CACHE_STALE_HIT
from resilient.testing import FakeClock, RecordingListener
from tests.cache_helpers import settle


class Dependency:
    """Counts the calls that reach it; fails while ``down``."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False

    async def __call__(self, item: int) -> str:
        self.calls += 1
        if self.down:
            raise ConnectionError("dependency down")
        return f"item-{item}"

    def sync(self, item: int) -> str:
        self.calls += 1
        if self.down:
            raise ConnectionError("dependency down")
        return f"item-{item}"


def _setup(refresh: str = "background") -> tuple[FakeClock, Dependency, CircuitBreaker, StaleCache, RecordingListener]:
    clock = FakeClock()
    events = RecordingListener()
    breaker = CircuitBreaker(consecutive_failures=1, break_duration=5, clock=clock)
    cache = StaleCache(1, stale_ttl=600, refresh=refresh, clock=clock, listeners=[events])  # type: ignore[arg-type]
    return clock, Dependency(), breaker, cache, events


async def test_an_open_breaker_is_not_asked_again_before_its_retry_after() -> None:
    clock, dep, breaker, cache, events = _setup()
    fetch = Pipeline(cache, breaker)(dep)
    assert await fetch(1) == "item-1"
    dep.down = True
    clock.advance(2)  # stale now
    assert await fetch(1) == "item-1"  # stale hit; its refresh fails and opens the breaker
    await settle()
    assert breaker.state == "open"
    assert dep.calls == 2
    refreshes_before = cache.status()["refreshes"]
    # 80 calls/s for 4 s while the breaker is open. The first stale hit's refresh meets the open
    # breaker and learns its retry_after; no other refresh starts, and one warning more in all.
    for _ in range(320):
        clock.advance(1 / 80)
        assert await fetch(1) == "item-1"
        await settle(2)
        lookup = last_lookup()
        assert lookup is not None
        assert lookup.stale
    assert cache.status()["refreshes"] == refreshes_before + 1
    failed = events.of(CACHE_REFRESH_FAILED)
    assert [e.exception for e in failed] == ["ConnectionError", "resilient.errors.CircuitOpenError"]
    assert cache.status()["backed_off"] == 319
    backoff_hits = [e for e in events.of(CACHE_STALE_HIT) if e.extras.get("reason") == "backoff"]
    assert len(backoff_hits) == 319
    assert all(e.severity.name == "INFO" for e in backoff_hits)
    assert dep.calls == 2
    # The break is over: the next stale hit refreshes (the half-open probe), which fails and
    # reopens the breaker; the hit after it learns the new retry_after; then quiet again.
    clock.advance(1.1)
    assert await fetch(1) == "item-1"
    await settle()
    assert dep.calls == 3
    for _ in range(40):
        clock.advance(0.1)
        assert await fetch(1) == "item-1"
        await settle(2)
    assert dep.calls == 3
    assert len(events.of(CACHE_REFRESH_FAILED)) == 4
    # Recovery: after the next break the refresh succeeds and the fresh value is served.
    dep.down = False
    clock.advance(2)
    assert await fetch(1) == "item-1"  # stale, refreshing
    await settle()
    assert dep.calls == 4
    assert breaker.state == "closed"
    calls = dep.calls
    assert await fetch(1) == "item-1"
    lookup = last_lookup()
    assert lookup is not None
    assert not lookup.stale
    assert dep.calls == calls


async def test_the_backoff_is_per_key() -> None:
    clock, dep, _breaker, cache, _events = _setup()
    limited = {"key": 1}

    async def call(item: int) -> str:
        if item == limited["key"]:
            raise RateLimitedError("slow down", retry_after=30)
        return await dep(item)

    fetch = cache(call)
    limited["key"] = -1
    assert await fetch(1) == "item-1"
    assert await fetch(2) == "item-2"
    limited["key"] = 1
    clock.advance(2)
    await fetch(1)
    await fetch(2)
    await settle()
    calls = dep.calls
    refreshes = cache.status()["refreshes"]
    clock.advance(2)
    await fetch(1)  # held back: its refresh met a rate limit 2 s ago (retry_after 30)
    await fetch(2)  # refreshed 2 s ago, stale again: refreshes
    await settle()
    assert cache.status()["refreshes"] == refreshes + 1
    assert dep.calls == calls + 1
    clock.advance(30)
    limited["key"] = -1
    await fetch(1)
    await settle()
    assert cache.status()["refreshes"] == refreshes + 2  # key 1 refreshes once its backoff is over


async def test_rejections_without_a_known_retry_after_do_not_hold_refreshes_back() -> None:
    clock, dep, _breaker, cache, _events = _setup()
    state = {"reject": False}

    async def call(item: int) -> str:
        if state["reject"]:
            raise RateLimitedError("no idea when", retry_after=None)
        return await dep(item)

    fetch = cache(call)
    assert await fetch(1) == "item-1"
    state["reject"] = True
    clock.advance(2)
    for _ in range(3):
        await fetch(1)
        await settle()
    assert cache.status()["refreshes"] == 3
    assert cache.status()["backed_off"] == 0


@pytest.mark.parametrize("retry_after", [float("nan"), -1.0, 0.0, float("inf"), 1e12])
async def test_a_hostile_retry_after_is_ignored_or_clamped(retry_after: float) -> None:
    clock, _dep, _breaker, cache, _events = _setup()
    state = {"reject": False}

    async def call(item: int) -> str:
        if state["reject"]:
            raise RateLimitedError("remote said so", retry_after=retry_after)
        return "v"

    fetch = cache(call)
    await fetch(1)
    state["reject"] = True
    clock.advance(2)
    await fetch(1)
    await settle()
    clock.advance(601)  # past stale_ttl: no backoff outlives the entry it protects
    state["reject"] = False
    assert await fetch(1) == "v"
    clock.advance(2)
    await fetch(1)
    await settle()
    assert cache._backoff == {}


async def test_inline_refresh_waits_out_the_break_too() -> None:
    clock, dep, breaker, cache, events = _setup(refresh="inline")
    fetch = Pipeline(cache, breaker)(dep)
    await fetch(1)
    dep.down = True
    clock.advance(2)
    assert await fetch(1) == "item-1"  # the inline call fails: stale-if-error, breaker opens
    for _ in range(50):
        clock.advance(0.05)
        assert await fetch(1) == "item-1"
    assert dep.calls == 2
    warnings = [e for e in events.of(CACHE_STALE_HIT) if e.severity.name == "WARNING"]
    # The failed call's and the first rejection's; the rest were held back (INFO).
    assert [e.exception for e in warnings] == ["ConnectionError", "resilient.errors.CircuitOpenError"]


def test_sync_functions_wait_out_the_break_too() -> None:
    clock, dep, breaker, cache, _events = _setup()
    fetch: Any = Pipeline(cache, breaker)(dep.sync)
    assert fetch(1) == "item-1"
    dep.down = True
    clock.advance(2)
    assert fetch(1) == "item-1"  # refreshed inline, rejected: stale-if-error
    assert breaker.state == "open"
    for _ in range(100):
        clock.advance(0.04)
        assert fetch(1) == "item-1"
    assert dep.calls == 2
    clock.advance(1.1)
    dep.down = False
    assert fetch(1) == "item-1"  # the break is over: refreshed
    assert dep.calls == 3
    assert breaker.state == "closed"


async def test_invalidate_and_clear_forget_backoffs() -> None:
    clock, _dep, _breaker, cache, _events = _setup()
    state = {"reject": False}

    async def call(item: int) -> str:
        if state["reject"]:
            raise RateLimitedError("wait", retry_after=60)
        return "v"

    fetch = cache(call)
    await fetch(1)
    state["reject"] = True
    clock.advance(2)
    await fetch(1)
    await settle()
    assert cache._backoff
    await cache.ainvalidate(cache.key_for(call, 1))
    assert cache._backoff == {}
    with pytest.raises(RateLimitedError):
        await fetch(1)  # a miss, rejected: nothing stale to serve
    assert cache._backoff  # noted again, for when an entry exists
    cache.clear()
    assert cache._backoff == {}
