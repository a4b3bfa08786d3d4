"""Keyed: one policy per key, bounded memory, state never lost under a call, untrusted keys."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Hashable
from typing import Any

import pytest

from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Keyed,
    Pipeline,
    Policy,
    PolicyKeyError,
    ResilienceError,
    Retry,
)
from resilient.registry import Registry
from resilient.testing import FakeClock


def _breakers(**kwargs: Any) -> tuple[Keyed, list[Hashable]]:
    """A Keyed of consecutive-failure breakers, and the list of keys its factory saw."""
    built: list[Hashable] = []

    def factory(key: Hashable) -> CircuitBreaker:
        built.append(key)
        return CircuitBreaker(consecutive_failures=1, break_duration=60, clock=kwargs.get("clock"))

    return Keyed(factory, key=lambda k, *_, **__: k, **kwargs), built


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- configuration -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"max_keys": 0}, ValueError, "max_keys"),
        ({"max_keys": 1.5}, TypeError, "max_keys"),
        ({"idle_ttl": 0}, ValueError, "idle_ttl"),
        ({"idle_ttl": float("nan")}, ValueError, "idle_ttl"),
        ({"key": "tenant"}, TypeError, "key"),
        ({"clock": object()}, TypeError, "clock"),
    ],
)
def test_bad_options_name_the_parameter(kwargs: dict[str, Any], error: type[Exception], param: str) -> None:
    options: dict[str, Any] = {"key": lambda x: x, **kwargs}
    with pytest.raises(error, match=param):
        Keyed(lambda _k: Retry(2), **options)


def test_factory_must_be_callable() -> None:
    with pytest.raises(TypeError, match="factory"):
        Keyed(CircuitBreaker(), key=lambda x: x)  # type: ignore[arg-type]


# -- one policy per key ------------------------------------------------------


async def test_one_policy_per_key_built_on_first_use() -> None:
    keyed, built = _breakers()

    @keyed
    async def call(key: str, fail: bool = False) -> str:
        if fail:
            raise ConnectionError(key)
        return key

    assert built == []
    assert await call("a") == "a"
    assert await call("a") == "a"
    assert await call("b") == "b"
    assert built == ["a", "b"]
    with pytest.raises(ConnectionError):
        await call("a", fail=True)
    with pytest.raises(CircuitOpenError):
        await call("a")
    assert await call("b") == "b"  # b's breaker is its own
    breaker_a = keyed.get("a")
    assert isinstance(breaker_a, CircuitBreaker)
    assert breaker_a.state is CircuitState.OPEN
    assert keyed.get("c") is None  # get() never builds
    assert built == ["a", "b"]


def test_sync_functions_and_two_functions_share_a_keys_policy() -> None:
    keyed, built = _breakers()

    @keyed
    def first(key: str) -> str:
        raise ConnectionError(key)

    @keyed
    def second(key: str) -> str:
        return key

    with pytest.raises(ConnectionError):
        first("x")
    with pytest.raises(CircuitOpenError):  # the breaker of "x" opened through first()
        second("x")
    assert second("y") == "y"
    assert built == ["x", "y"]
    assert len(keyed) == 2


async def test_inside_a_pipeline_with_a_pipeline_per_key() -> None:
    attempts: list[str] = []
    keyed = Keyed(
        lambda key: Pipeline(CircuitBreaker(consecutive_failures=2, break_duration=60), name=f"p-{key}"),
        key=lambda key: key,
    )
    retry = Retry(3, backoff=lambda _attempt: 0.0, on=ConnectionError)

    @Pipeline(retry, keyed)
    async def call(key: str) -> str:
        attempts.append(key)
        raise ConnectionError(key)

    # Two failures open that key's breaker; the third attempt is rejected by it.
    with pytest.raises(CircuitOpenError):
        await call("k")
    assert attempts == ["k", "k"]
    inner = keyed.get("k")
    assert isinstance(inner, Pipeline)
    assert isinstance(inner[0], CircuitBreaker)
    assert inner[0].state is CircuitState.OPEN


# -- bounded memory ----------------------------------------------------------


def test_least_recently_used_key_goes_first_and_its_state_with_it() -> None:
    keyed, built = _breakers(max_keys=3)

    @keyed
    def call(key: str, fail: bool = False) -> str:
        if fail:
            raise ConnectionError(key)
        return key

    with pytest.raises(ConnectionError):
        call("a", fail=True)  # a's breaker opens
    call("b")
    call("c")
    with pytest.raises(CircuitOpenError):
        call("a")  # a is now the most recently used
    call("d")  # pushes out b, the least recently used
    assert keyed.get("b") is None
    assert keyed.get("a") is not None
    assert len(keyed) == 3
    assert keyed.evicted == 1
    with pytest.raises(CircuitOpenError):
        call("a")
    for key in "efghij":
        call(key)  # a, no longer used, is pushed out in its turn (CLOCK: after one second chance)
    assert keyed.get("a") is None
    assert call("a") == "a"  # a fresh, closed breaker: the open state went with the key
    assert built.count("a") == 2


def test_a_million_distinct_keys_stay_within_max_keys() -> None:
    class Passthrough(Policy):  # this test is about the table, not the policy
        def build_sync(self, fn: Callable[..., Any], site: Any) -> Callable[..., Any]:
            return fn

    inner = Passthrough()
    keyed = Keyed(lambda _k: inner, key=lambda k: k, max_keys=1000)
    table = keyed._table
    acquire, release = table.acquire, table.release
    peak = 0
    no_kwargs: dict[str, Any] = {}
    for i in range(1_000_000):
        release(acquire((i,), no_kwargs))
        if i % 50_000 == 0:
            peak = max(peak, len(table.ring), len(table.direct) + len(table.hashed))
    assert peak <= 1000
    assert len(keyed) == 1000
    assert len(table.direct) == 1000
    assert keyed.evicted == 1_000_000 - 1000
    assert keyed.get(999_999) is inner
    assert keyed.get(0) is None


def test_wrapped_calls_with_many_keys_stay_bounded() -> None:
    keyed = Keyed(lambda _k: Retry(2), key=lambda k: k, max_keys=50)

    @keyed
    def call(key: int) -> int:
        return key

    for i in range(20_000):
        assert call(i) == i
        assert len(keyed._table.ring) <= 50
    assert len(keyed) == 50


def test_idle_ttl_forgets_idle_keys() -> None:
    clock = FakeClock()
    keyed, built = _breakers(idle_ttl=10, clock=clock)

    @keyed
    def call(key: str, fail: bool = False) -> str:
        if fail:
            raise ConnectionError(key)
        return key

    with pytest.raises(ConnectionError):
        call("a", fail=True)
    call("b")
    clock.advance(9)
    with pytest.raises(CircuitOpenError):
        call("a")  # used again within the TTL: kept, still open
    clock.advance(9)  # b idle 18 s, a idle 9 s
    assert len(keyed) == 1
    assert keyed.get("b") is None
    assert keyed.get("a") is not None
    clock.advance(11)
    assert call("a") == "a"  # idle past the TTL: a fresh breaker
    assert built == ["a", "b", "a"]


async def test_idle_ttl_counts_from_the_end_of_the_last_call() -> None:
    clock = FakeClock()
    keyed, built = _breakers(idle_ttl=10, clock=clock)
    gate = asyncio.Event()

    @keyed
    async def call(key: str, wait: bool = False) -> str:
        if wait:
            await gate.wait()
        return key

    slow = asyncio.create_task(call("a", wait=True))
    await _settle()
    clock.advance(60)  # a long call: the key is in use, not idle
    assert len(keyed) == 1
    assert await call("a") == "a"
    gate.set()
    await slow
    clock.advance(5)
    assert await call("a") == "a"
    assert built == ["a"]


# -- never lose a probe or a permit ------------------------------------------


async def test_a_key_holding_a_half_open_probe_is_not_evicted() -> None:
    clock = FakeClock()
    keyed, built = _breakers(max_keys=2, clock=clock)
    gate = asyncio.Event()

    @keyed
    async def call(key: str, mode: str = "ok") -> str:
        if mode == "fail":
            raise ConnectionError(key)
        if mode == "wait":
            await gate.wait()
        return key

    with pytest.raises(ConnectionError):
        await call("a", "fail")
    breaker = keyed.get("a")
    assert isinstance(breaker, CircuitBreaker)
    clock.advance(61)
    probe = asyncio.create_task(call("a", "wait"))  # the half-open probe, held open
    await _settle()
    assert breaker.metrics.probes_in_flight == 1
    for i in range(100):  # a flood of other keys
        await call(f"k{i}")
    assert keyed.get("a") is breaker
    assert len(keyed) == 2
    gate.set()
    assert await probe == "a"
    assert breaker.state is CircuitState.CLOSED  # the probe's outcome reached its own breaker
    assert built.count("a") == 1


async def test_a_key_holding_a_bulkhead_permit_is_not_evicted() -> None:
    keyed = Keyed(lambda _k: Bulkhead(1), key=lambda k, *_: k, max_keys=1)
    gate = asyncio.Event()

    @keyed
    async def call(key: str, wait: bool = False) -> str:
        if wait:
            await gate.wait()
        return key

    held = asyncio.create_task(call("a", True))
    await _settle()
    # More keys in flight than max_keys: the table grows past it only for them.
    others = [asyncio.create_task(call(f"k{i}", True)) for i in range(3)]
    await _settle()
    assert len(keyed._table.ring) == 4
    with pytest.raises(BulkheadFullError):
        await call("a")  # a's bulkhead (and its one slot, taken) is still there
    gate.set()
    await asyncio.gather(held, *others)
    assert len(keyed) == 1  # back within max_keys once the calls are done


async def test_cancelled_calls_hand_their_key_back() -> None:
    keyed = Keyed(lambda _k: Bulkhead(1), key=lambda k: k, max_keys=1)

    @keyed
    async def call(key: str) -> str:
        await asyncio.sleep(3600)
        return key

    task = asyncio.create_task(call("a"))
    await _settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    entry = keyed._table.get("a")
    assert entry is not None
    assert len(entry) == 2  # its two placeholders: no holder
    bulkhead = keyed.get("a")
    assert isinstance(bulkhead, Bulkhead)
    assert bulkhead.status()["running"] == 0


def test_threads_share_keys_without_losing_or_leaking_entries() -> None:
    keyed = Keyed(lambda _k: Bulkhead(64), key=lambda k: k, max_keys=8)
    errors: list[BaseException] = []

    @keyed
    def call(key: int) -> int:
        return key

    def worker(seed: int) -> None:
        try:
            for i in range(3000):
                key = (i * 7 + seed) % 20
                assert call(key) == key
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    table = keyed._table
    assert len(keyed) <= 8
    assert all(e.alive and len(e) == 2 for e in table.entries())
    assert len(table.direct) == len(table.ring)


# -- untrusted keys ----------------------------------------------------------


class _Key:
    """A key whose hash and equality are user code (and may misbehave)."""

    def __init__(self, value: int, keyed: Keyed | None = None, *, hash_raises: bool = False, eq_raises: bool = False):
        self.value = value
        self.keyed = keyed
        self.hash_raises = hash_raises
        self.eq_raises = eq_raises
        self.saw_lock_held: list[bool] = []

    def _check_lock(self) -> None:
        if self.keyed is not None:
            self.saw_lock_held.append(self.keyed._table.lock.locked())

    def __hash__(self) -> int:
        self._check_lock()
        if self.hash_raises:
            raise RuntimeError("no hash today")
        return 42  # every _Key collides

    def __eq__(self, other: object) -> bool:
        self._check_lock()
        if self.eq_raises:
            raise RuntimeError("no comparison today")
        return isinstance(other, _Key) and other.value == self.value


def test_unhashable_key_is_a_policy_key_error_and_the_call_is_not_made() -> None:
    calls: list[object] = []
    keyed = Keyed(lambda _k: Retry(2), key=lambda k: k, name="tenants")

    @keyed
    def call(key: object) -> object:
        calls.append(key)
        return key

    with pytest.raises(PolicyKeyError, match=r"tenants.*not hashable") as info:
        call(["a", "list"])
    assert isinstance(info.value, ResilienceError)
    assert info.value.reason == "unhashable"
    assert info.value.policy == "tenants"
    assert isinstance(info.value.__cause__, TypeError)
    assert calls == []
    assert len(keyed) == 0
    assert not keyed._table.lock.locked()


def test_key_function_errors_are_policy_key_errors() -> None:
    keyed = Keyed(lambda _k: Retry(2), key=lambda request: request["tenant"])

    @keyed
    def call(request: dict[str, str]) -> str:
        return "ran"

    with pytest.raises(PolicyKeyError, match="key function raised KeyError") as info:
        call({})
    assert info.value.reason == "key_function"
    assert isinstance(info.value.__cause__, KeyError)
    assert call({"tenant": "t"}) == "ran"


async def test_keys_that_raise_never_run_under_the_lock_nor_leave_it_held() -> None:
    keyed = Keyed(lambda _k: Retry(2), key=lambda k: k, max_keys=4)

    @keyed
    async def call(key: object) -> str:
        return "ran"

    good = _Key(1, keyed)
    assert await call(good) == "ran"
    other = _Key(2, keyed)  # same hash: compared with good's entry, then added beside it
    assert await call(other) == "ran"
    assert len(keyed) == 2
    assert keyed.get(_Key(1)) is not keyed.get(_Key(2))

    bad_hash = _Key(3, keyed, hash_raises=True)
    with pytest.raises(PolicyKeyError, match="raised RuntimeError") as info:
        await call(bad_hash)
    assert info.value.reason == "key_error"

    good.eq_raises = True  # the stored key's __eq__ is the one the lookup runs
    bad_eq = _Key(1, keyed)
    with pytest.raises(PolicyKeyError, match="no comparison today"):
        await call(bad_eq)
    good.eq_raises = False

    assert not keyed._table.lock.locked()
    for key in (good, other, bad_hash, bad_eq):
        assert key.saw_lock_held
        assert not any(key.saw_lock_held)
    # Evicting among colliding keys keeps the others.
    for i in range(10, 14):
        await call(i)
    assert keyed.get(_Key(1)) is None
    assert len(keyed) == 4


def test_huge_or_broken_reprs_are_cut_in_errors_and_status() -> None:
    class Ugly:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no eq")

        def __hash__(self) -> int:
            return 7

    keyed = Keyed(lambda _k: Retry(2), key=lambda k: k)
    call = keyed(lambda key: key)
    long_key = "x" * 10_000
    assert call(long_key) == long_key
    status = keyed.status()
    assert len(status["worst"][0]["key"]) <= 80
    ugly = Ugly()
    assert call(ugly) is ugly  # never compared (same object), never repr'd
    json.dumps(keyed.status())
    with pytest.raises(PolicyKeyError, match="the key <Ugly object> raised RuntimeError: no eq"):
        call(Ugly())


# -- factory errors ----------------------------------------------------------


def test_factory_errors_surface_with_the_key_and_nothing_is_kept() -> None:
    attempts: list[str] = []

    def factory(key: str) -> Policy:
        attempts.append(key)
        if len(attempts) == 1:
            raise ValueError("no config for this tenant yet")
        return Retry(2)

    keyed = Keyed(factory, key=lambda k: k, name="tenants")
    call = keyed(lambda key: key)
    with pytest.raises(ValueError, match="no config") as info:
        call("t1")
    assert any("factory('t1') raised" in note and "tenants" in note for note in info.value.__notes__)
    assert len(keyed) == 0
    assert call("t1") == "t1"  # not cached: the next call builds again
    assert attempts == ["t1", "t1"]


def test_factory_returning_a_non_policy_is_a_type_error() -> None:
    keyed = Keyed(lambda _k: "not a policy", key=lambda k: k)  # type: ignore[arg-type,return-value]
    call = keyed(lambda key: key)
    with pytest.raises(TypeError, match="factory must return a Policy, got 'not a policy' for the key 'k'"):
        call("k")
    assert len(keyed) == 0


# -- status ------------------------------------------------------------------


def test_status_shows_the_worst_keys_first_and_bounded() -> None:
    keyed = Keyed(
        lambda _k: CircuitBreaker(consecutive_failures=3, break_duration=60), key=lambda k, *_: k, name="subs"
    )

    @keyed
    def call(key: str, failures: int = 0) -> str:
        if failures:
            raise ConnectionError(key)
        return key

    for i in range(30):
        call(f"ok-{i}")
    for _ in range(3):
        with pytest.raises(ConnectionError):
            call("down", 1)
    with pytest.raises(ConnectionError):
        call("flaky", 1)
    status = keyed.status(limit=3)
    json.dumps(status)
    assert status["type"] == "keyed"
    assert status["name"] == "subs"
    assert status["keys"] == 32
    assert status["open"] == 1
    assert status["in_use"] == 0
    assert [w["key"] for w in status["worst"]] == ["'down'", "'flaky'", "'ok-29'"]
    assert status["worst"][0]["status"]["state"] == "open"
    assert len(keyed.status(limit=5)["worst"]) == 5


def test_registry_builds_keyed_policies_and_keeps_their_state_across_reloads() -> None:
    config = {
        "deliveries": [
            {"type": "retry", "attempts": 2, "backoff": {"type": "constant", "delay": 0}, "on": ["ConnectionError"]},
            {
                "type": "keyed",
                "name": "per-subscriber",
                "key": {"kwarg": "url"},
                "max_keys": 100,
                "policies": [{"type": "circuit_breaker", "consecutive_failures": 1, "break_duration": 60}],
            },
        ]
    }
    registry = Registry(config)

    @registry.policy("deliveries")
    def deliver(*, url: str) -> str:
        if url == "down":
            raise ConnectionError(url)
        return url

    assert deliver(url="up") == "up"
    with pytest.raises(CircuitOpenError):
        deliver(url="down")  # attempt 1 fails, attempt 2 meets the open breaker
    keyed = registry.pipeline("deliveries")[1]
    assert isinstance(keyed, Keyed)
    registry.configure(config)  # unchanged spec: same object, same state
    assert registry.pipeline("deliveries")[1] is keyed
    with pytest.raises(CircuitOpenError):
        deliver(url="down")
    status = registry.status()["deliveries"][1]
    assert status["type"] == "keyed"
    assert status["open"] == 1


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"type": "keyed", "key": {"arg": 0}}, "'policies' must be a non-empty list"),
        ({"type": "keyed", "key": {"arg": -1}, "policies": [{"type": "retry"}]}, "option 'key' must be"),
        ({"type": "keyed", "key": "nowhere.at_all:fn", "policies": [{"type": "retry"}]}, "cannot import"),
        ({"type": "keyed", "key": {"arg": 0}, "policies": [{"type": "retry", "attempts": 0}]}, "policies #0"),
        ({"type": "keyed", "key": {"arg": 0}, "max_keys": 0, "policies": [{"type": "retry"}]}, "max_keys"),
    ],
)
def test_registry_rejects_bad_keyed_specs(spec: dict[str, Any], match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        Registry({"p": [spec]})


def test_under_thread_switches_a_call_always_runs_on_the_live_policy_of_its_key() -> None:
    import sys

    seen_wrong: list[Hashable] = []
    holder: dict[str, Keyed] = {}

    class Checked(Policy):
        def __init__(self, key: Hashable) -> None:
            super().__init__()
            self.key = key

        def build_sync(self, fn: Callable[..., Any], site: Any) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                # While this call holds its key, the key cannot be forgotten nor rebuilt.
                for _ in range(3):
                    if holder["keyed"].get(self.key) is not self:
                        seen_wrong.append(self.key)
                return fn(*args, **kwargs)

            return call

    keyed = Keyed(Checked, key=lambda k: k, max_keys=4)
    holder["keyed"] = keyed
    call = keyed(lambda key: key)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=lambda s=s: [call((i * 5 + s) % 12) for i in range(2000)]) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert seen_wrong == []
    assert len(keyed) <= 4
    assert all(e.alive and len(e) == 2 for e in keyed._table.entries())


# -- the engine against a model ----------------------------------------------

from hypothesis import settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule  # noqa: E402

# Direct (int, str) and hashed (tuple) keys; (-1,) and (-2,) share a hash, as do -1 and -2.
MODEL_KEYS = st.sampled_from([0, 1, 2, -1, -2, "a", (-1,), (-2,), (0, "x")])


class KeyedMachine(RuleBasedStateMachine):
    """Calls start and finish in any order, time passes; the table keeps its promises."""

    @initialize(max_keys=st.integers(1, 4), ttl=st.sampled_from([None, 5.0]))
    def start(self, max_keys: int, ttl: float | None) -> None:
        self.clock = FakeClock()
        self.max_keys = max_keys
        self.ttl = ttl
        self.keyed = Keyed(lambda _k: Retry(2), key=lambda k: k, max_keys=max_keys, idle_ttl=ttl, clock=self.clock)
        self.table = self.keyed._table
        self.held: list[tuple[Hashable, Any]] = []
        self.released_at: dict[int, float] = {}  # id(entry) -> when its last holder left
        self.last_entry: dict[Hashable, Any] = {}

    @rule(key=MODEL_KEYS)
    def begin(self, key: Hashable) -> None:
        before = self.last_entry.get(key)
        entry = self.table.acquire((key,), {})
        for other_key, other in self.held:
            if other_key == key:
                assert other is entry, "two entries for one key while a call holds it"
        if before is not None and before is not entry:
            assert not any(e is before for _, e in self.held)  # a held entry is never replaced
        if (
            self.ttl is not None
            and before is not None
            and not any(e is before for _, e in self.held)
            and self.clock.now() - self.released_at.get(id(before), self.clock.now()) > self.ttl
        ):
            assert entry is not before, "an entry idle past idle_ttl was served again"
        self.held.append((key, entry))
        self.last_entry[key] = entry

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.held) - 1))
        key, entry = self.held.pop(i)
        assert entry.alive
        assert self.table.get(key) is entry
        self.table.release(entry)
        if not any(e is entry for _, e in self.held):
            self.released_at[id(entry)] = self.clock.now()

    @rule(seconds=st.sampled_from([0.5, 3.0, 6.0]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def bounded_and_consistent(self) -> None:
        if not hasattr(self, "table"):
            return
        table = self.table
        entries = table.entries()
        busy = sum(1 for e in entries if len(e) > 2)
        assert len(entries) <= max(self.max_keys, busy)
        assert all(e.alive for e in entries)
        filed = len(table.direct) + sum(len(v) if isinstance(v, tuple) else 1 for v in table.hashed.values())
        assert filed == len(entries)
        for key, entry in self.held:
            assert entry.alive
            assert table.get(key) is entry
        assert busy == len({id(e) for _, e in self.held})


KeyedMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
TestKeyedModel = KeyedMachine.TestCase


def test_the_registry_configuration_in_the_docs_loads() -> None:
    import re
    import tomllib
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "policies" / "keyed.md").read_text()
    (toml,) = re.findall(r"```toml\n(.*?)```", page, re.S)
    pipeline = Registry(tomllib.loads(toml)).pipeline("deliveries")
    keyed = pipeline[1]
    assert isinstance(keyed, Keyed)
    assert keyed.name == "per-subscriber"
    assert keyed.idle_ttl == 3600


async def test_a_named_keyed_policy_shows_on_the_status_endpoint() -> None:
    import httpx

    from resilient.asgi import status_app

    keyed = Keyed(
        lambda _k: CircuitBreaker(consecutive_failures=1, break_duration=60), key=lambda k: k, name="keyed-status"
    )

    @keyed
    async def call(key: str) -> str:
        if key == "down":
            raise ConnectionError(key)
        return key

    await call("up")
    with pytest.raises(ConnectionError):
        await call("down")
    transport = httpx.ASGITransport(app=status_app([keyed]))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        body = (await client.get("/")).json()
    (shown,) = body["policies"]
    assert shown["name"] == "keyed-status"
    assert shown["type"] == "keyed"
    assert shown["status"]["keys"] == 2
    assert shown["status"]["worst"][0]["key"] == "'down'"
    assert shown["status"]["worst"][0]["status"]["state"] == "open"
