"""Cache stores: chosen by type, called without the policy's lock, and a model test of the contract."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from resilient.cache import AsyncCacheStore, CacheEntry, CacheStore, MemoryStore, StaleCache, store_kind
from resilient.testing import FakeClock
from tests.cache_helpers import AsyncDictStore, DictStore
from tests.redis_helpers import cluster_url, redis_url  # noqa: F401 - fixtures

# -- chosen by type ----------------------------------------------------------


def test_stores_are_told_apart_by_their_base_class() -> None:
    assert store_kind(MemoryStore()) == "sync"
    assert store_kind(DictStore()) == "sync"
    assert store_kind(AsyncDictStore()) == "async"
    assert not StaleCache(1, store=DictStore())._store_async
    assert StaleCache(1, store=AsyncDictStore())._store_async


def test_a_registered_store_is_chosen_by_type_without_a_warning(recwarn: pytest.WarningsRecorder) -> None:
    class Registered:
        async def get(self, key: Hashable) -> CacheEntry | None:
            return None

        async def set(self, key: Hashable, entry: CacheEntry) -> None: ...

        async def delete(self, key: Hashable) -> None: ...

        async def clear(self) -> None: ...

    AsyncCacheStore.register(Registered)
    assert store_kind(Registered()) == "async"
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


def test_a_duck_typed_store_still_works_with_a_deprecation_warning() -> None:
    class Duck:
        def __init__(self) -> None:
            self.data: dict[Hashable, CacheEntry] = {}

        def get(self, key: Hashable) -> CacheEntry | None:
            return self.data.get(key)

        def set(self, key: Hashable, entry: CacheEntry) -> None:
            self.data[key] = entry

        def delete(self, key: Hashable) -> None:
            self.data.pop(key, None)

        def clear(self) -> None:
            self.data.clear()

    with pytest.warns(DeprecationWarning, match=r"Duck derives from neither.*subclass resilient\.cache\.CacheStore"):
        cache = StaleCache(10, store=Duck())
    calls: list[int] = []

    @cache
    def f(x: int) -> int:
        calls.append(x)
        return x

    assert f(1) == f(1) == 1
    assert calls == [1]


def test_a_store_contradicting_its_base_class_is_refused() -> None:
    class Liar(CacheStore):
        async def get(self, key: Hashable) -> CacheEntry | None:  # type: ignore[override]
            return None

        def set(self, key: Hashable, entry: CacheEntry) -> None: ...

        def delete(self, key: Hashable) -> None: ...

        def clear(self) -> None: ...

    with pytest.raises(TypeError, match="is a CacheStore but get is async"):
        StaleCache(1, store=Liar())


def test_a_store_missing_methods_is_refused() -> None:
    class Half:
        def get(self, key: Hashable) -> None:
            return None

    with pytest.raises(TypeError, match=r"store must be a CacheStore or an AsyncCacheStore"):
        StaleCache(1, store=Half())


def test_an_abstract_store_cannot_be_built_half_written() -> None:
    class Incomplete(CacheStore):
        def get(self, key: Hashable) -> CacheEntry | None:
            return None

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


# -- no user code under the policy's lock -------------------------------------


class _Watching(DictStore):
    """A store that records, on every call, whether the policy's lock was held."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: StaleCache | None = None
        self.held: list[tuple[str, bool]] = []

    def _see(self, op: str) -> None:
        assert self.cache is not None
        self.held.append((op, self.cache._lock.locked()))

    def get(self, key: Any) -> CacheEntry | None:
        self._see("get")
        return super().get(key)

    def set(self, key: Any, entry: CacheEntry) -> None:
        self._see("set")
        super().set(key, entry)

    def delete(self, key: Any) -> None:
        self._see("delete")
        super().delete(key)

    def clear(self) -> None:
        self._see("clear")
        super().clear()


class _AsyncWatching(AsyncDictStore):
    def __init__(self) -> None:
        super().__init__()
        self.cache: StaleCache | None = None
        self.held: list[tuple[str, bool]] = []

    def _see(self, op: str) -> None:
        assert self.cache is not None
        self.held.append((op, self.cache._lock.locked()))

    async def get(self, key: Any) -> CacheEntry | None:
        self._see("get")
        return await super().get(key)

    async def set(self, key: Any, entry: CacheEntry) -> None:
        self._see("set")
        await super().set(key, entry)

    async def delete(self, key: Any) -> None:
        self._see("delete")
        await super().delete(key)

    async def clear(self) -> None:
        self._see("clear")
        await super().clear()


async def test_a_sync_store_is_never_called_under_the_policys_lock() -> None:
    clock = FakeClock()
    store = _Watching()
    cache = StaleCache(1, stale_ttl=2, store=store, clock=clock)
    store.cache = cache
    sync_f = cache(lambda x: x)

    async def async_f(x: int) -> int:
        return x

    guarded = cache(async_f)
    sync_f(1)
    await guarded(2)
    clock.advance(3)  # too old: deleted when read
    sync_f(1)
    await guarded(2)
    cache.invalidate(cache.key_for(async_f, 2))
    await cache.ainvalidate("nothing")
    cache.clear()
    await cache.aclear()
    assert {op for op, _ in store.held} == {"get", "set", "delete", "clear"}
    assert not any(held for _, held in store.held), store.held


async def test_an_async_store_is_never_called_under_the_policys_lock() -> None:
    store = _AsyncWatching()
    cache = StaleCache(1, store=store)
    store.cache = cache

    async def f(x: int) -> int:
        return x

    guarded = cache(f)
    await guarded(1)
    await guarded(1)
    await cache.ainvalidate(cache.key_for(f, 1))
    await cache.aclear()
    assert {op for op, _ in store.held} == {"get", "set", "delete", "clear"}
    assert not any(held for _, held in store.held), store.held


def test_an_invalidation_racing_a_write_wins() -> None:
    """The write and its re-check happen outside the lock: an invalidation between them undoes the write."""
    cache: StaleCache

    class Racing(DictStore):
        def set(self, key: Any, entry: CacheEntry) -> None:
            super().set(key, entry)
            cache.invalidate(key)  # lands after the write, before the re-check

    store = Racing()
    cache = StaleCache(10, store=store)
    calls: list[int] = []

    @cache
    def f(x: int) -> int:
        calls.append(x)
        return x

    assert f(1) == 1
    assert store.data == {}  # the invalidated value was not kept
    assert f(1) == 1
    assert calls == [1, 1]


# -- the contract, as a model -------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "d", "e", ("t", 1)])


class _StoreMachine(RuleBasedStateMachine):
    """Any store against the contract; an LRU store also against the exact LRU model.

    The contract: ``get`` returns the last entry ``set`` for the key, or
    ``None`` (a bounded store may have evicted it), and never an entry that
    ``delete`` or ``clear`` removed. ``run`` drives sync and async stores alike.
    """

    make_store: Callable[[], Any]
    capacity: int | None = None  # set for stores with exact LRU semantics
    is_async = False
    # A store that serializes (Redis) hands back an equal entry, not the same object.
    by_value = False
    # A store that never evicts or expires must return exactly the last entry set.
    exact = False

    @initialize()
    def start(self) -> None:
        self.store = self.make_store()
        self.loop = asyncio.new_event_loop() if self.is_async else None
        self.last: dict[Hashable, CacheEntry] = {}
        self.lru: OrderedDict[Hashable, CacheEntry] = OrderedDict()
        self.serial = 0

    def teardown(self) -> None:
        if getattr(self, "loop", None) is not None:
            self.loop.close()  # type: ignore[union-attr]

    def run(self, result: Any) -> Any:
        if self.loop is not None:
            return self.loop.run_until_complete(result)
        return result

    @rule(key=KEYS)
    def put(self, key: Hashable) -> None:
        self.serial += 1
        entry = CacheEntry(self.serial, float(self.serial))
        self.run(self.store.set(key, entry))
        self.last[key] = entry
        self.lru[key] = entry
        self.lru.move_to_end(key)
        if self.capacity is not None and len(self.lru) > self.capacity:
            self.lru.popitem(last=False)

    def same(self, got: CacheEntry | None, expected: CacheEntry | None) -> bool:
        if got is None or expected is None or not self.by_value:
            return got is expected
        return got.value == expected.value and got.stored_at == pytest.approx(expected.stored_at, abs=1e-6)

    def check(self, got: CacheEntry | None, key: Hashable) -> None:
        expected = self.last.get(key)
        if self.exact:
            assert self.same(got, expected), (key, got, expected)
        else:
            assert got is None or self.same(got, expected), (key, got, expected)

    @rule(key=KEYS)
    def read(self, key: Hashable) -> None:
        got = self.run(self.store.get(key))
        self.check(got, key)
        if self.capacity is not None:
            assert self.same(got, self.lru.get(key))
            if key in self.lru:
                self.lru.move_to_end(key)

    @rule(key=KEYS)
    def remove(self, key: Hashable) -> None:
        self.run(self.store.delete(key))
        self.last.pop(key, None)
        self.lru.pop(key, None)

    @rule()
    def wipe(self) -> None:
        self.run(self.store.clear())
        self.last.clear()
        self.lru.clear()

    @invariant()
    def bounded(self) -> None:
        if self.capacity is not None and hasattr(self, "store"):
            assert len(self.store) <= self.capacity


class MemoryStoreMachine(_StoreMachine):
    capacity = 3
    make_store = staticmethod(lambda: MemoryStore(3))


class DictStoreMachine(_StoreMachine):
    make_store = staticmethod(DictStore)


class AsyncDictStoreMachine(_StoreMachine):
    is_async = True
    make_store = staticmethod(AsyncDictStore)


_SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestMemoryStoreModel = MemoryStoreMachine.TestCase
TestMemoryStoreModel.settings = _SETTINGS
TestDictStoreModel = DictStoreMachine.TestCase
TestDictStoreModel.settings = _SETTINGS
TestAsyncDictStoreModel = AsyncDictStoreMachine.TestCase
TestAsyncDictStoreModel.settings = _SETTINGS


# -- the same model on Redis: RedisCacheStore, one store per replica over one server ----------

_NAMES = itertools.count()


def _on_redis(url: str) -> type[_StoreMachine]:
    """The contract machine on a RedisCacheStore, plus a second replica's store reading the same keys."""
    from resilient.redis import RedisCacheStore

    class RedisCacheStoreMachine(_StoreMachine):
        is_async = True
        by_value = True
        exact = True  # near_ttl=0 and no expiry (stale_ttl=inf): every read is Redis' answer

        def make_store(self) -> Any:
            self.clock = FakeClock(start=1000.0)
            name = f"model-{next(_NAMES)}"
            stores = [RedisCacheStore(url, name=name, near_ttl=0, timeout=5.0, wall=self.clock.now) for _ in range(2)]
            for store in stores:
                store.bind(60, math.inf, self.clock)
            self.replicas = stores
            return stores[0]

        @rule(key=KEYS)
        def read_on_the_other_replica(self, key: Hashable) -> None:
            # Shared: what one replica stored or removed, the other sees.
            self.check(self.run(self.replicas[1].get(key)), key)

        @invariant()
        def on_redis(self) -> None:
            # A store that failed open would pass on its near tier alone: not what is under test.
            assert all(store.using_redis for store in getattr(self, "replicas", ()))

        def teardown(self) -> None:
            if getattr(self, "loop", None) is not None:
                for store in getattr(self, "replicas", ()):
                    self.run(store.aclose())
            super().teardown()

    return RedisCacheStoreMachine


@pytest.mark.redis
def test_redis_cache_store_matches_the_model(redis_url: str) -> None:  # noqa: F811
    run_state_machine_as_test(_on_redis(redis_url), settings=_SETTINGS)


@pytest.mark.redis
def test_redis_cache_store_on_a_cluster_matches_the_model(cluster_url: str) -> None:  # noqa: F811
    run_state_machine_as_test(_on_redis(cluster_url), settings=settings(_SETTINGS, max_examples=25))
