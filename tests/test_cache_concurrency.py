"""StaleCache: request coalescing, cancellation, background refresh tasks, invalidate races, threads."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import traceback
from typing import Any

from resilient.cache import CacheEntry, CacheLookup, SharedCacheStore, StaleCache, last_lookup
from resilient.deadline import deadline, remaining
from resilient.testing import FakeClock
from tests.cache_helpers import AsyncDictStore, Upstream, no_task_warnings, settle

__all__ = ["no_task_warnings"]


async def test_a_thousand_concurrent_callers_on_a_cold_key_make_one_call(
    clock: FakeClock, no_task_warnings: None
) -> None:
    up = Upstream()
    up.gate = asyncio.Event()
    cache = StaleCache(10, clock=clock)
    cached = cache(up)
    tasks = [asyncio.create_task(cached("hot")) for _ in range(1000)]
    await settle()
    assert up.calls == 1
    assert cache.status()["in_flight"] == 1
    up.gate.set()
    assert await asyncio.gather(*tasks) == ["v1"] * 1000
    assert up.calls == 1
    assert cache.status()["in_flight"] == 0
    assert cache.status()["misses"] == 1000
    assert cache.status()["coalesced"] == 999
    assert await cached("hot") == "v1"
    assert up.calls == 1


async def test_coalesced_callers_all_get_the_failure_without_growing_tracebacks(
    clock: FakeClock, no_task_warnings: None
) -> None:
    up = Upstream()
    up.gate = asyncio.Event()
    up.error = ConnectionError("down")
    cached = StaleCache(10, clock=clock)(up)
    tasks = [asyncio.create_task(cached("k")) for _ in range(200)]
    await settle()
    up.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(r is up.error for r in results)
    assert up.calls == 1
    # Re-raised from the shared outcome, not chained 200 times onto one traceback.
    assert len(traceback.extract_tb(up.error.__traceback__)) < 20
    up.error = None
    assert await cached("k") == "v1"  # the failure was not cached


async def test_cancelling_one_waiter_does_not_cancel_the_shared_call(clock: FakeClock, no_task_warnings: None) -> None:
    up = Upstream()
    up.gate = asyncio.Event()
    cached = StaleCache(10, clock=clock)(up)
    first = asyncio.create_task(cached("k"))  # the one that started the call
    others = [asyncio.create_task(cached("k")) for _ in range(3)]
    await settle()
    first.cancel()
    others[0].cancel()
    await settle()
    assert first.cancelled()
    assert others[0].cancelled()
    assert up.cancelled == 0
    up.gate.set()
    assert await asyncio.gather(*others[1:]) == ["v1", "v1"]
    assert up.calls == 1


async def test_when_every_waiter_is_cancelled_the_call_is_cancelled(clock: FakeClock, no_task_warnings: None) -> None:
    up = Upstream()
    up.gate = asyncio.Event()
    cache = StaleCache(10, clock=clock)
    cached = cache(up)
    tasks = [asyncio.create_task(cached("k")) for _ in range(3)]
    await settle()
    for t in tasks:
        t.cancel()
    await settle()
    assert up.cancelled == 1
    assert cache.status()["in_flight"] == 0
    up.gate.set()
    assert await cached("k") == "v1"  # a new call, not the cancelled one
    assert up.calls == 2


async def test_a_caller_arriving_while_the_last_waiter_is_cancelled_starts_a_new_call(clock: FakeClock) -> None:
    up = Upstream()
    up.gate = asyncio.Event()
    cached = StaleCache(10, clock=clock)(up)
    first = asyncio.create_task(cached("k"))
    await settle()
    first.cancel()
    late = asyncio.create_task(cached("k"))  # runs before the cancelled call has finished unwinding
    await settle()
    up.gate.set()
    assert await late == "v1"
    assert up.calls == 2


async def test_background_refresh_runs_once_per_key(clock: FakeClock, no_task_warnings: None) -> None:
    up = Upstream()
    cache = StaleCache(10, stale_ttl=100, clock=clock)
    cached = cache(up)
    await asyncio.gather(cached(1), cached(2))
    clock.advance(50)
    up.gate = asyncio.Event()
    for _ in range(10):
        await asyncio.gather(cached(1), cached(2))
    await settle()
    assert up.calls == 4  # 2 initial + 1 refresh per key
    up.gate.set()
    await settle()
    assert cache.status()["in_flight"] == 0


async def test_a_miss_joins_a_running_background_refresh(clock: FakeClock) -> None:
    up = Upstream()
    cache = StaleCache(10, stale_ttl=20, clock=clock)
    cached = cache(up)
    await cached(1)
    clock.advance(15)
    up.gate = asyncio.Event()
    up.value = "v2"
    assert await cached(1) == "v1"  # stale, refresh started and blocked
    clock.advance(10)  # now past stale_ttl: a miss
    waiter = asyncio.create_task(cached(1))
    await settle()
    assert up.calls == 2
    up.gate.set()
    assert await waiter == "v2"
    assert up.calls == 2


async def test_background_refresh_keeps_a_strong_reference(clock: FakeClock, no_task_warnings: None) -> None:
    up = Upstream()
    cache = StaleCache(10, stale_ttl=100, clock=clock)
    cached = cache(up)
    await cached(1)
    clock.advance(20)
    up.gate = asyncio.Event()
    up.value = "v2"
    await cached(1)
    await settle()
    gc.collect()
    up.gate.set()
    await settle()
    assert await cached(1) == "v2"
    assert last_lookup() == CacheLookup("fresh", 0.0)


async def test_background_refresh_is_not_bound_by_the_callers_deadline(clock: FakeClock) -> None:
    seen: list[float | None] = []
    calls = 0

    async def load() -> int:
        nonlocal calls
        calls += 1
        seen.append(remaining())
        return calls

    cached = StaleCache(10, stale_ttl=100, clock=clock)(load)
    with deadline(5):
        await cached()  # a foreground miss sees the caller's deadline
        clock.advance(20)
        assert await cached() == 1
        await settle()
    assert seen[0] is not None
    assert seen[1] is None  # the refresh serves no particular request


async def test_a_refresh_racing_an_invalidate_does_not_resurrect_the_value(
    clock: FakeClock, no_task_warnings: None
) -> None:
    up = Upstream()
    cache = StaleCache(10, stale_ttl=100, clock=clock)
    cached = cache(up)
    await cached(1)
    clock.advance(20)
    up.gate = asyncio.Event()
    up.value = "old-from-refresh"
    assert await cached(1) == "v1"  # refresh started
    await settle()
    cache.invalidate(cache.key_for(up, 1))
    up.gate.set()
    await settle()
    assert cache.status()["entries"] == 0
    up.gate = None
    up.value = "after-invalidate"
    assert await cached(1) == "after-invalidate"


async def test_a_miss_racing_clear_returns_to_its_waiters_but_is_not_stored(clock: FakeClock) -> None:
    up = Upstream()
    up.gate = asyncio.Event()
    cache = StaleCache(10, clock=clock)
    cached = cache(up)
    waiter = asyncio.create_task(cached(1))
    await settle()
    cache.clear()
    up.gate.set()
    assert await waiter == "v1"
    assert cache.status()["entries"] == 0
    up.gate = None
    await cached(1)
    assert up.calls == 2


async def test_a_new_flight_after_invalidate_is_not_clobbered_by_the_old_one(clock: FakeClock) -> None:
    gates = [asyncio.Event(), asyncio.Event()]
    values = iter(["old", "new"])
    calls = 0

    async def load() -> str:
        nonlocal calls
        gate = gates[calls]
        calls += 1
        value = next(values)
        await gate.wait()
        return value

    cache = StaleCache(10, clock=clock)
    cached = cache(load)
    old = asyncio.create_task(cached())
    await settle()
    cache.invalidate(cache.key_for(load))
    new = asyncio.create_task(cached())
    await settle()
    gates[1].set()
    assert await new == "new"
    gates[0].set()
    assert await old == "old"
    assert await cached() == "new"
    assert calls == 2


async def test_an_invalidate_during_an_async_store_write_is_honoured(clock: FakeClock) -> None:
    class SlowWrites(AsyncDictStore):
        def __init__(self) -> None:
            super().__init__()
            self.writing = asyncio.Event()
            self.release = asyncio.Event()

        async def set(self, key: Any, entry: Any) -> None:
            self.writing.set()
            await self.release.wait()
            await super().set(key, entry)

    store = SlowWrites()
    up = Upstream()
    cache = StaleCache(10, store=store, clock=clock)
    cached = cache(up)
    waiter = asyncio.create_task(cached(1))
    await store.writing.wait()
    await cache.ainvalidate(cache.key_for(up, 1))
    store.release.set()
    assert await waiter == "v1"
    await settle()
    assert store.data == {}


async def test_the_lookup_is_visible_to_the_awaiting_caller_only(clock: FakeClock) -> None:
    cached = StaleCache(10, clock=clock)(Upstream())

    async def child() -> CacheLookup | None:
        await cached(1)
        return last_lookup()

    before = last_lookup()  # sync tests may have set it in the context this test's loop copied
    assert await asyncio.create_task(child()) == CacheLookup("miss", 0.0)
    assert last_lookup() == before


# -- threads -------------------------------------------------------------------


def test_threads_on_a_cold_key_make_one_call() -> None:
    calls = 0
    release = threading.Event()

    def load(key: str) -> str:
        nonlocal calls
        calls += 1
        release.wait(5)
        return key.upper()

    cache = StaleCache(10, clock=FakeClock())
    cached = cache(load)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(cached("k"))) for _ in range(8)]
    for t in threads:
        t.start()
    # Until the seven others wait on the leader's flight (counted as coalesced just before they wait).
    deadline_at = time.monotonic() + 5
    while (calls == 0 or cache.status()["coalesced"] < 7) and time.monotonic() < deadline_at:
        time.sleep(0.001)
    assert calls == 1
    assert cache.status()["coalesced"] == 7
    release.set()
    for t in threads:
        t.join(5)
    assert results == ["K"] * 8
    assert calls == 1


def test_threads_share_a_failure_and_serve_stale_while_one_refreshes() -> None:
    clock = FakeClock()
    calls = 0
    release = threading.Event()
    mode = {"fail": False, "block": False}

    def load() -> str:
        nonlocal calls
        calls += 1
        if mode["block"]:
            release.wait(5)
        if mode["fail"]:
            raise ConnectionError("down")
        return f"v{calls}"

    cached = StaleCache(10, stale_ttl=100, clock=clock)(load)
    assert cached() == "v1"
    clock.advance(20)
    mode["block"] = True
    leader_result: list[str] = []
    leader = threading.Thread(target=lambda: leader_result.append(cached()))
    leader.start()
    deadline_at = time.monotonic() + 5
    while calls < 2 and time.monotonic() < deadline_at:
        time.sleep(0.001)
    assert cached() == "v1"  # another thread refreshes: stale at once
    release.set()
    leader.join(5)
    assert leader_result == ["v2"]
    assert calls == 2


class _RefusingShared(SharedCacheStore):
    """A shared store where another process holds the lease and stores its value as it refuses ours."""

    lease_seconds = 10.0
    poll_interval = 0.05

    def __init__(self) -> None:
        self.data: dict[Any, CacheEntry] = {}
        self.held = False
        self.clock: Any = None

    def bind(self, ttl: float, stale_ttl: float, clock: Any) -> None:
        self.clock = clock

    async def get(self, key: Any) -> CacheEntry | None:
        return self.data.get(key)

    async def set(self, key: Any, entry: CacheEntry) -> None:
        self.data[key] = entry

    async def delete(self, key: Any) -> None:
        self.data.pop(key, None)

    async def clear(self) -> None:
        self.data.clear()

    async def lease(self, key: Any, seconds: float) -> bool:
        if not self.held:
            return True
        # The holder stores its fresh value and releases right after refusing us.
        self.data[key] = CacheEntry("theirs", self.clock.now())
        self.held = False
        return False

    async def release(self, key: Any) -> None:
        pass


async def test_a_fresh_value_read_after_a_refused_lease_is_used_not_called_again(clock: FakeClock) -> None:
    # The value read right after the refusal was taken as "the old one" when the holder had
    # already stored: the next look saw nothing newer, took the lapsed lease and called again.
    store = _RefusingShared()
    upstream = Upstream()
    cached = StaleCache(60, stale_ttl=600, store=store, clock=clock)(upstream)
    assert await cached("k") == "v1"
    clock.advance(120)  # stale
    store.held = True
    assert await cached("k") == "v1"  # stale served; the refresh finds the lease taken
    await settle()
    clock.advance(store.poll_interval)
    await settle()
    assert upstream.calls == 1
    assert await cached("k") == "theirs"
