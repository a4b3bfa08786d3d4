"""StaleCache: configuration, fresh/stale/expired windows, stale-if-error, keys, invalidation."""

from __future__ import annotations

import asyncio
import contextvars
import math
from typing import Any

import pytest

from resilient import CircuitOpenError, RateLimitedError
from resilient.cache import (
    CACHE_REFRESH_FAILED,
    CacheEntry,
    CacheLookup,
    MemoryStore,
    StaleCache,
    last_lookup,
)
from resilient.events import CACHE_STALE_HIT
from resilient.testing import FakeClock, recording
from tests.cache_helpers import AsyncDictStore, DictStore, Upstream, no_task_warnings, settle

__all__ = ["no_task_warnings"]  # the fixture is used by name

# -- bad configuration ---------------------------------------------------------


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf])
def test_ttl_must_be_finite_and_positive(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        StaleCache(ttl)


@pytest.mark.parametrize("ttl", ["1", None, True])
def test_ttl_must_be_a_number(ttl: Any) -> None:
    with pytest.raises(TypeError, match="ttl"):
        StaleCache(ttl)


def test_stale_ttl_below_ttl_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"stale_ttl must be >= ttl"):
        StaleCache(10, stale_ttl=5)


@pytest.mark.parametrize("stale_ttl", [0, -3, math.nan])
def test_stale_ttl_must_be_positive(stale_ttl: float) -> None:
    with pytest.raises(ValueError, match="stale_ttl"):
        StaleCache(1, stale_ttl=stale_ttl)


def test_stale_ttl_defaults_to_ttl_and_may_be_infinite() -> None:
    assert StaleCache(5).stale_ttl == 5.0
    assert StaleCache(5, stale_ttl=math.inf).stale_ttl == math.inf
    assert StaleCache(5, stale_ttl=5).stale_ttl == 5.0


@pytest.mark.parametrize("max_entries", [0, -1])
def test_max_entries_must_be_at_least_one(max_entries: int) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        StaleCache(1, max_entries=max_entries)


@pytest.mark.parametrize("max_entries", [1.5, True, "10"])
def test_max_entries_must_be_an_int(max_entries: Any) -> None:
    with pytest.raises(TypeError, match="max_entries"):
        StaleCache(1, max_entries=max_entries)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"key": "user"}, "key"),
        ({"key": int}, "key"),
        ({"on": "ValueError"}, "on"),
        ({"on": (ValueError, 3)}, "on"),
        ({"on_result": 3}, "on_result"),
        ({"store": object()}, "store"),
        ({"clock": object()}, "clock"),
        ({"name": 3}, "name"),
        ({"listeners": [3]}, "listeners"),
    ],
)
def test_bad_arguments_raise_type_error_naming_them(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(TypeError, match=param):
        StaleCache(1, **kwargs)


def test_refresh_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="refresh"):
        StaleCache(1, refresh="eager")  # type: ignore[arg-type]


def test_a_store_mixing_sync_and_async_methods_is_rejected() -> None:
    class Mixed(DictStore):
        async def get(self, key: Any) -> CacheEntry | None:  # type: ignore[override]
            return None

    with pytest.raises(TypeError, match="all synchronous or all async"):
        StaleCache(1, store=Mixed())


def test_a_sync_function_cannot_use_an_async_store() -> None:
    cache = StaleCache(1, store=AsyncDictStore())
    with pytest.raises(TypeError, match="async store"):
        cache.wrap(lambda: 1)
    with pytest.raises(TypeError, match="ainvalidate"):
        cache.invalidate("k")
    with pytest.raises(TypeError, match="aclear"):
        cache.clear()


def test_generator_functions_are_refused() -> None:
    async def agen() -> Any:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        StaleCache(1).wrap(agen)


# -- keys ----------------------------------------------------------------------


async def test_unhashable_arguments_give_a_clear_type_error_naming_key(clock: FakeClock) -> None:
    up = Upstream()
    cached = StaleCache(10, clock=clock)(up)
    with pytest.raises(TypeError, match=r"not hashable.*key=") as info:
        await cached([1, 2])
    assert "cannot cache Upstream()" in str(info.value)
    with pytest.raises(TypeError, match=r"key="):
        await cached(ids=[1, 2])
    assert up.calls == 0


def test_unhashable_arguments_sync_too(clock: FakeClock) -> None:
    cached = StaleCache(10, clock=clock)(lambda ids: len(ids))
    with pytest.raises(TypeError, match=r"key="):
        cached([1, 2])


async def test_a_key_function_makes_unhashable_arguments_cacheable(clock: FakeClock) -> None:
    up = Upstream()
    cached = StaleCache(10, key=lambda ids: tuple(ids), clock=clock)(up)
    assert await cached([1, 2]) == "v1"
    assert await cached([1, 2]) == "v1"
    assert up.calls == 1


async def test_a_key_function_returning_an_unhashable_key_is_reported(clock: FakeClock) -> None:
    cached = StaleCache(10, key=lambda ids: ids, clock=clock)(Upstream())
    with pytest.raises(TypeError, match=r"key= returned an unhashable key"):
        await cached([1])


async def test_keys_depend_on_arguments_and_on_the_function(clock: FakeClock) -> None:
    cache = StaleCache(10, clock=clock)
    calls: list[tuple[str, Any]] = []

    async def a(x: int, *, y: int = 0, z: int = 0) -> str:
        calls.append(("a", (x, y, z)))
        return f"a{x}{y}{z}"

    async def b(x: int) -> str:
        calls.append(("b", x))
        return f"b{x}"

    ca, cb = cache(a), cache(b)
    assert await ca(1) == "a100"
    assert await cb(1) == "b1"
    assert await ca(2) == "a200"
    assert await ca(1, y=1, z=2) == "a112"
    assert await ca(1, z=2, y=1) == "a112"  # keyword order does not matter
    assert await ca(1) == "a100"
    assert len(calls) == 4


async def test_positional_and_keyword_forms_are_different_keys(clock: FakeClock) -> None:
    up = Upstream()
    cached = StaleCache(10, clock=clock)(up)
    await cached(1)
    await cached(x=1)
    await cached((1,), frozenset({("x", 1)}))  # cannot collide with the keyword form
    assert up.calls == 3


async def test_key_for_matches_the_key_used(clock: FakeClock) -> None:
    cache = StaleCache(10, clock=clock)
    up = Upstream()
    cached = cache(up)
    await cached(7, page=2)
    assert cache.key_for(up, 7, page=2) in cache.store  # type: ignore[operator]
    assert cache.key_for(cached, 7, page=2) == cache.key_for(up, 7, page=2)
    custom = StaleCache(10, key=lambda user, **_: f"user:{user}")
    assert custom.key_for(up, 7, page=2) == "user:7"


# -- fresh and stale windows ---------------------------------------------------


async def test_fresh_entries_are_served_without_a_call(clock: FakeClock) -> None:
    up = Upstream()
    cached = StaleCache(10, stale_ttl=60, clock=clock)(up)
    assert contextvars.Context().run(last_lookup) is None  # nothing looked up in a fresh context
    assert await cached(1) == "v1"
    assert last_lookup() == CacheLookup("miss", 0.0)
    up.value = "v2"
    clock.advance(9.5)
    assert await cached(1) == "v1"
    lookup = last_lookup()
    assert lookup is not None
    assert lookup.state == "fresh"
    assert lookup.age == pytest.approx(9.5)
    assert not lookup.stale
    assert up.calls == 1


async def test_stale_while_revalidate_serves_at_once_and_refreshes_once(
    clock: FakeClock, no_task_warnings: None
) -> None:
    up = Upstream()
    cache = StaleCache(10, stale_ttl=60, clock=clock, name="users")
    cached = cache(up)
    await cached(1)
    up.value = "v2"
    up.gate = asyncio.Event()
    clock.advance(15)
    with recording() as rec:
        for _ in range(5):
            assert await cached(1) == "v1"  # at once, while the refresh is blocked
            lookup = last_lookup()
            assert lookup is not None
            assert lookup.stale
            assert lookup.age == pytest.approx(15)
        await settle()
        assert up.calls == 2  # one refresh for five stale hits
        up.gate.set()
        await settle()
    assert await cached(1) == "v2"
    assert last_lookup() == CacheLookup("fresh", 0.0)
    events = rec.of(CACHE_STALE_HIT)
    assert len(events) == 5
    assert events[0].extras == {"reason": "revalidate"}
    assert events[0].duration == pytest.approx(15)
    assert events[0].policy == "users"
    assert events[0].policy_type == "stale_cache"
    status = cache.status()
    assert status["stale_hits"] == 5
    assert status["refreshes"] == 1
    assert status["in_flight"] == 0


async def test_a_failing_background_refresh_is_recorded_never_raised(clock: FakeClock, no_task_warnings: None) -> None:
    up = Upstream()
    cache = StaleCache(10, stale_ttl=60, clock=clock)
    cached = cache(up)
    await cached(1)
    up.error = ConnectionError("down")
    clock.advance(20)
    with recording() as rec:
        assert await cached(1) == "v1"
        await settle()
        assert await cached(1) == "v1"  # still stale, a new refresh starts
        await settle()
    failed = rec.of(CACHE_REFRESH_FAILED)
    assert len(failed) == 2
    assert failed[0].exception == "ConnectionError"
    assert cache.status()["refresh_failures"] == 2
    assert cache.status()["last_refresh_error"] == "ConnectionError"
    assert up.calls == 3


async def test_an_unexpected_refresh_exception_is_recorded_too(clock: FakeClock, no_task_warnings: None) -> None:
    up = Upstream()
    cache = StaleCache(10, stale_ttl=60, on=ConnectionError, clock=clock)
    cached = cache(up)
    await cached(1)
    up.error = KeyError("bug")
    clock.advance(20)
    assert await cached(1) == "v1"
    await settle()
    assert cache.status()["last_refresh_error"] == "KeyError"


async def test_entries_older_than_stale_ttl_are_never_served(clock: FakeClock) -> None:
    up = Upstream()
    cache = StaleCache(10, stale_ttl=60, clock=clock)
    cached = cache(up)
    await cached(1)
    clock.advance(60)
    up.error = ConnectionError("down")
    with pytest.raises(ConnectionError) as info:
        await cached(1)
    assert last_lookup() == CacheLookup("miss", 0.0)
    assert len(cache.store) == 0  # type: ignore[arg-type]
    assert info.value.__notes__ == ["resilient: StaleCache had no value younger than stale_ttl=60 s to serve instead"]


async def test_stale_if_error_inline(clock: FakeClock) -> None:
    up = Upstream()
    cache = StaleCache(10, stale_ttl=60, refresh="inline", clock=clock)
    cached = cache(up)
    await cached(1)
    clock.advance(30)
    up.error = ConnectionError("down")
    with recording() as rec:
        assert await cached(1) == "v1"
    lookup = last_lookup()
    assert lookup is not None
    assert lookup.stale
    assert lookup.age == pytest.approx(30)
    [event] = rec.of(CACHE_STALE_HIT)
    assert event.extras == {"reason": "error"}
    assert event.exception == "ConnectionError"
    assert cache.status()["stale_on_error"] == 1
    up.error = None
    up.value = "v2"
    assert await cached(1) == "v2"  # inline: the caller gets the new value
    assert up.calls == 3


async def test_inline_refresh_serves_stale_to_callers_arriving_meanwhile(clock: FakeClock) -> None:
    up = Upstream()
    cached = StaleCache(10, stale_ttl=60, refresh="inline", clock=clock)(up)
    await cached(1)
    clock.advance(20)
    up.value = "v2"
    up.gate = asyncio.Event()
    leader = asyncio.create_task(cached(1))
    await settle()
    assert await cached(1) == "v1"
    up.gate.set()
    assert await leader == "v2"
    assert up.calls == 2


async def test_an_exception_not_matched_by_on_propagates_despite_a_stale_entry(clock: FakeClock) -> None:
    up = Upstream()
    cached = StaleCache(10, stale_ttl=60, refresh="inline", on=ConnectionError, clock=clock)(up)
    await cached(1)
    clock.advance(20)
    up.error = ValueError("bad request")
    with pytest.raises(ValueError, match="bad request"):
        await cached(1)


@pytest.mark.parametrize("error", [CircuitOpenError("open"), RateLimitedError("slow down")])
async def test_rejections_always_count_as_failures(clock: FakeClock, error: Exception) -> None:
    up = Upstream()
    cached = StaleCache(10, stale_ttl=60, refresh="inline", on=ConnectionError, clock=clock)(up)
    await cached(1)
    clock.advance(20)
    up.error = error
    assert await cached(1) == "v1"


async def test_on_none_still_serves_stale_on_rejections_only(clock: FakeClock) -> None:
    up = Upstream()
    cached = StaleCache(10, stale_ttl=60, refresh="inline", on=None, clock=clock)(up)
    await cached(1)
    clock.advance(20)
    up.error = ConnectionError("x")
    with pytest.raises(ConnectionError):
        await cached(1)
    up.error = CircuitOpenError("open")
    assert await cached(1) == "v1"


async def test_failures_are_never_cached(clock: FakeClock) -> None:
    up = Upstream()
    cached = StaleCache(10, stale_ttl=60, clock=clock)(up)
    up.error = ConnectionError("down")
    with pytest.raises(ConnectionError):
        await cached(1)
    up.error = None
    assert await cached(1) == "v1"
    assert up.calls == 2


async def test_flagged_results_are_not_cached_and_stale_beats_them(clock: FakeClock) -> None:
    up = Upstream()
    up.value = 503
    cached = StaleCache(10, stale_ttl=60, refresh="inline", on_result=lambda r: r >= 500, clock=clock)(up)
    assert await cached(1) == 503  # nothing better: the flagged result itself
    up.value = 200
    assert await cached(1) == 200
    clock.advance(20)
    up.value = 503
    assert await cached(1) == 200
    lookup = last_lookup()
    assert lookup is not None
    assert lookup.stale
    assert up.calls == 3


async def test_a_failure_without_stale_propagates_unchanged(clock: FakeClock) -> None:
    up = Upstream()
    error = ConnectionError("down")
    up.error = error
    cached = StaleCache(10, stale_ttl=60, clock=clock)(up)
    with pytest.raises(ConnectionError) as info:
        await cached(1)
    assert info.value is error


async def test_cancellation_is_never_handled(clock: FakeClock) -> None:
    up = Upstream()
    up.gate = asyncio.Event()
    cached = StaleCache(10, stale_ttl=60, clock=clock)(up)
    task = asyncio.create_task(cached(1))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- invalidate, clear, LRU, stores -------------------------------------------


async def test_invalidate_and_clear(clock: FakeClock) -> None:
    up = Upstream()
    cache = StaleCache(10, clock=clock)
    cached = cache(up)
    await cached(1)
    await cached(2)
    cache.invalidate(cache.key_for(up, 1))
    cache.invalidate("absent")  # no error
    await cached(1)
    await cached(2)
    assert up.calls == 3
    cache.clear()
    await cached(2)
    assert up.calls == 4


async def test_max_entries_evicts_the_least_recently_used(clock: FakeClock) -> None:
    up = Upstream()
    cache = StaleCache(10, max_entries=2, clock=clock)
    cached = cache(up)
    await cached(1)
    await cached(2)
    await cached(1)  # 1 is now the most recent
    await cached(3)  # evicts 2
    assert up.calls == 3
    await cached(1)
    assert up.calls == 3
    await cached(2)
    assert up.calls == 4
    assert cache.status()["entries"] == 2


async def test_a_custom_sync_store_is_used(clock: FakeClock) -> None:
    store = DictStore()
    cache = StaleCache(10, store=store, clock=clock)
    cached = cache(Upstream())
    await cached(1)
    assert list(store.data) == [cache.key_for(cached, 1)]
    assert cache.status()["max_entries"] is None


async def test_an_async_store_works_and_fails_open(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    store = AsyncDictStore()
    up = Upstream()
    cache = StaleCache(10, stale_ttl=60, refresh="inline", store=store, clock=clock)
    cached = cache(up)
    assert await cached(1) == "v1"
    assert await cached(1) == "v1"
    assert up.calls == 1
    clock.advance(20)
    up.error = ConnectionError("down")
    assert await cached(1) == "v1"  # stale-if-error through the async store
    store.fail = True
    up.error = None
    up.value = "v2"
    with caplog.at_level("WARNING", logger="resilient.cache"):
        assert await cached(1) == "v2"  # the store is down: straight to the function
        assert await cached(1) == "v2"
    assert sum("store get failed" in r.getMessage() for r in caplog.records) == 1
    store.fail = False
    await cache.ainvalidate(cache.key_for(up, 1))
    assert store.data == {}
    await cached(1)
    await cache.aclear()
    assert store.data == {}


async def test_ainvalidate_and_aclear_work_with_the_memory_store(clock: FakeClock) -> None:
    up = Upstream()
    cache = StaleCache(10, clock=clock)
    cached = cache(up)
    await cached(1)
    await cache.ainvalidate(cache.key_for(up, 1))
    await cached(1)
    await cache.aclear()
    await cached(1)
    assert up.calls == 3


def test_memory_store() -> None:
    store = MemoryStore(2)
    store.set("a", CacheEntry(1, 0.0))
    store.set("b", CacheEntry(2, 0.0))
    assert store.get("a") is not None
    store.set("c", CacheEntry(3, 0.0))
    assert store.get("b") is None
    assert len(store) == 2
    store.delete("a")
    store.delete("zzz")
    assert "a" not in store
    store.clear()
    assert len(store) == 0
    assert "MemoryStore(max_entries=2" in repr(store)


async def test_run_shares_the_cache_across_one_off_calls(clock: FakeClock) -> None:
    up = Upstream()
    cache = StaleCache(10, clock=clock)
    assert await cache.run(up, 1) == "v1"
    assert await cache.run(up, 1) == "v1"
    assert up.calls == 1


def test_status_and_repr() -> None:
    cache = StaleCache(5, stale_ttl=math.inf, name="c")
    status = cache.status()
    assert status["type"] == "stale_cache"
    assert status["name"] == "c"
    assert status["stale_ttl"] is None
    assert status["max_entries"] == 1024
    assert status["entries"] == 0
    assert repr(cache) == "StaleCache(ttl=5.0, stale_ttl=inf, name='c')"


# -- synchronous functions ------------------------------------------------------


def test_sync_fresh_stale_inline_and_stale_if_error(clock: FakeClock) -> None:
    state: dict[str, Any] = {"calls": 0, "value": "v1", "error": None}

    def load(x: int) -> str:
        state["calls"] += 1
        if state["error"] is not None:
            raise state["error"]
        return f"{state['value']}-{x}"

    cache = StaleCache(10, stale_ttl=60, clock=clock)
    cached = cache(load)
    assert cached(1) == "v1-1"
    assert cached(1) == "v1-1"
    assert state["calls"] == 1
    assert last_lookup() is not None
    assert last_lookup().state == "fresh"
    clock.advance(20)
    state["value"] = "v2"
    assert cached(1) == "v2-1"  # refreshed inline
    clock.advance(20)
    state["error"] = ConnectionError("down")
    with recording() as rec:
        assert cached(1) == "v2-1"  # stale-if-error
    assert rec.of(CACHE_STALE_HIT)[0].extras == {"reason": "error"}
    clock.advance(60)
    with pytest.raises(ConnectionError):
        cached(1)
    state["error"] = None
    assert cache.run_sync(load, 2) == "v2-2"


def test_sync_recursion_on_the_same_key_does_not_deadlock(clock: FakeClock) -> None:
    cache = StaleCache(10, clock=clock)

    @cache
    def fact(n: int) -> int:
        return 1 if n <= 1 else n * fact(n - 1)

    assert fact(5) == 120

    depth = {"n": 0}

    @cache
    def again(n: int) -> int:
        depth["n"] += 1
        return n if depth["n"] > 1 else again(n)

    assert again(3) == 3


async def test_an_entry_that_ages_past_stale_ttl_during_the_call_is_not_served(clock: FakeClock) -> None:
    calls = 0

    async def slow_then_failing() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            return "v1"
        clock.advance(20)  # the call takes 20 s, taking the entry from age 50 to 70
        raise ConnectionError("down")

    cached = StaleCache(10, stale_ttl=60, refresh="inline", clock=clock)(slow_then_failing)
    await cached()
    clock.advance(50)
    with pytest.raises(ConnectionError):
        await cached()


async def test_policy_listeners_receive_the_stale_hit(clock: FakeClock) -> None:
    events: list[Any] = []
    up = Upstream()
    cached = StaleCache(10, stale_ttl=60, refresh="inline", clock=clock, listeners=[events.append])(up)
    await cached(1)
    clock.advance(30)
    up.error = CircuitOpenError("open")
    await cached(1)
    assert [(e.name, e.severity.value, e.exception) for e in events] == [
        (CACHE_STALE_HIT, "warning", "resilient.errors.CircuitOpenError")
    ]


# -- an `on=` predicate that raises (issue 14, item 12) ----------------------


def _broken_on(exc: Exception) -> bool:
    raise RuntimeError("predicate bug")


async def test_a_raising_on_predicate_in_a_background_refresh_is_contained(
    clock: FakeClock, no_task_warnings: None, caplog: pytest.LogCaptureFixture
) -> None:
    up = Upstream()
    cache = StaleCache(10, stale_ttl=60, on=_broken_on, clock=clock, name="users")
    cached = cache(up)
    await cached(1)
    up.error = ConnectionError("down")
    clock.advance(20)
    with recording() as rec, caplog.at_level("WARNING", logger="resilient.cache"):
        assert await cached(1) == "v1"
        await settle()
        assert await cached(1) == "v1"  # the stale value stays; a new refresh starts
        await settle()
    assert up.calls == 3
    # The call's own failure is what is recorded; the predicate's bug is logged.
    assert [e.exception for e in rec.of(CACHE_REFRESH_FAILED)] == ["ConnectionError", "ConnectionError"]
    assert cache.status()["last_refresh_error"] == "ConnectionError"
    assert any("on= predicate raised RuntimeError" in r.getMessage() for r in caplog.records)


async def test_a_raising_on_predicate_still_serves_stale_to_foreground_callers(clock: FakeClock) -> None:
    up = Upstream()
    cached = StaleCache(10, stale_ttl=60, refresh="inline", on=_broken_on, clock=clock)(up)
    await cached(1)
    clock.advance(20)
    up.error = ConnectionError("down")
    up.gate = asyncio.Event()
    leader = asyncio.create_task(cached(1))
    await settle()
    follower = asyncio.create_task(cached(1))  # served stale at once, as always
    await settle()
    up.gate.set()
    # Not RuntimeError("predicate bug"): the failure counts as one, and the stale value beats it.
    assert await leader == "v1"
    assert await follower == "v1"


async def test_a_raising_on_predicate_without_stale_raises_the_call_s_own_exception(
    clock: FakeClock, no_task_warnings: None
) -> None:
    up = Upstream()
    up.error = ConnectionError("down")
    up.gate = asyncio.Event()
    cached = StaleCache(10, stale_ttl=60, on=_broken_on, clock=clock)(up)
    callers = [asyncio.create_task(cached(1)) for _ in range(3)]  # one call, shared
    await settle()
    up.gate.set()
    for caller in callers:
        with pytest.raises(ConnectionError, match="down"):
            await caller
    assert up.calls == 1


def test_a_raising_on_predicate_sync_serves_stale(clock: FakeClock) -> None:
    calls = 0

    def load(x: int) -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ConnectionError("down")
        return "v1"

    cached = StaleCache(10, stale_ttl=60, on=_broken_on, clock=clock)(load)
    assert cached(1) == "v1"
    clock.advance(20)
    assert cached(1) == "v1"
    clock.advance(60)
    with pytest.raises(ConnectionError):
        cached(1)
