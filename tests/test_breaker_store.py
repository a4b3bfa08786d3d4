"""The BreakerStore protocol as the breaker uses it: store calls per outcome, the async-store path.

``CountingAsyncStore`` plays a remote store (async twins, one "round trip"
per method call) by delegating to the in-memory store; the tests pin down
how many store calls each kind of call costs, which is what a Redis store
pays in round trips.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from resilient.breaker import (
    AsyncBreakerStore,
    BreakerConfig,
    BreakerMetrics,
    BreakerSnapshot,
    BreakerStore,
    CircuitBreaker,
    CircuitState,
    InMemoryBreakerStore,
)
from resilient.errors import CircuitOpenError
from resilient.testing import FakeClock


class Boom(Exception):
    pass


class CountingAsyncStore:
    """An AsyncBreakerStore that counts its calls (each one a round trip for a remote store)."""

    def __init__(self) -> None:
        self.inner = InMemoryBreakerStore()
        self.calls: Counter[str] = Counter()

    @property
    def snapshot(self) -> BreakerSnapshot:
        return self.inner.snapshot

    def bind(self, config: BreakerConfig) -> None:
        self.inner.bind(config)

    def acquire(self, now: float) -> tuple[BreakerSnapshot | None, BreakerSnapshot | None]:
        self.calls["acquire"] += 1
        return self.inner.acquire(now)

    def record_success(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        self.calls["record_success"] += 1
        return self.inner.record_success(permit, now)

    def record_failure(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        self.calls["record_failure"] += 1
        return self.inner.record_failure(permit, now)

    def release(self, permit: BreakerSnapshot) -> None:
        self.calls["release"] += 1
        self.inner.release(permit)

    def transition(self, to: CircuitState, now: float) -> BreakerSnapshot:
        self.calls["transition"] += 1
        return self.inner.transition(to, now)

    def metrics(self, now: float) -> BreakerMetrics:
        return self.inner.metrics(now)

    async def aacquire(self, now: float) -> tuple[BreakerSnapshot | None, BreakerSnapshot | None]:
        await asyncio.sleep(0)
        self.calls["aacquire"] += 1
        return self.inner.acquire(now)

    async def arecord_success(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        await asyncio.sleep(0)
        self.calls["arecord_success"] += 1
        return self.inner.record_success(permit, now)

    async def arecord_failure(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        await asyncio.sleep(0)
        self.calls["arecord_failure"] += 1
        return self.inner.record_failure(permit, now)

    async def arelease(self, permit: BreakerSnapshot) -> None:
        await asyncio.sleep(0)
        self.calls["arelease"] += 1
        self.inner.release(permit)


def test_protocol_checks() -> None:
    assert isinstance(CountingAsyncStore(), AsyncBreakerStore)
    assert isinstance(CountingAsyncStore(), BreakerStore)
    assert not isinstance(InMemoryBreakerStore(), AsyncBreakerStore)


async def boom() -> None:
    raise Boom


async def ok() -> str:
    return "ok"


async def test_one_store_call_per_outcome_and_none_to_reject(clock: FakeClock) -> None:
    store = CountingAsyncStore()
    b = CircuitBreaker(consecutive_failures=2, store=store, clock=clock)
    assert await b.run(ok) == "ok"
    assert store.calls == Counter(arecord_success=1)
    for _ in range(2):
        with pytest.raises(Boom):
            await b.run(boom)
    assert store.calls == Counter(arecord_success=1, arecord_failure=2)
    assert b.state is CircuitState.OPEN
    store.calls.clear()
    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            await b.run(ok)
    assert store.calls == Counter()  # rejected locally from the snapshot
    clock.advance(5)
    assert await b.run(ok) == "ok"  # the probe: acquire + record
    assert store.calls == Counter(aacquire=1, arecord_success=1)
    assert b.state is CircuitState.CLOSED


async def test_async_store_path_probes_cancellation_and_ignore(clock: FakeClock) -> None:
    store = CountingAsyncStore()
    b = CircuitBreaker(consecutive_failures=1, ignore=KeyError, store=store, clock=clock)
    with pytest.raises(Boom):
        await b.run(boom)
    clock.advance(5)

    async def hang() -> None:
        await asyncio.Event().wait()

    task = asyncio.create_task(b.run(hang))
    for _ in range(3):
        await asyncio.sleep(0)
    assert b.metrics.probes_in_flight == 1
    with pytest.raises(CircuitOpenError):
        await b.run(ok)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.calls["arelease"] == 1
    assert b.metrics.probes_in_flight == 0

    async def missing() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await b.run(missing)
    assert store.calls["arelease"] == 2
    assert b.state is CircuitState.HALF_OPEN
    with pytest.raises(Boom):
        await b.run(boom)
    assert b.state is CircuitState.OPEN


async def test_async_store_path_results_and_slow_calls(auto_clock: FakeClock) -> None:
    store = CountingAsyncStore()
    b = CircuitBreaker(
        consecutive_failures=2, slow_call_duration=1, on_result=lambda r: r == 503, store=store, clock=auto_clock
    )

    async def status(code: int, delay: float = 0.0) -> int:
        await auto_clock.asleep(delay)
        return code

    assert await b.run(status, 503) == 503
    assert await b.run(status, 200, 2.0) == 200  # slow
    assert b.state is CircuitState.OPEN
    assert store.calls["arecord_failure"] == 2


async def test_guard_with_an_async_store(clock: FakeClock) -> None:
    store = CountingAsyncStore()
    b = CircuitBreaker(consecutive_failures=1, store=store, clock=clock)
    async with b.guard():
        pass
    assert store.calls == Counter(arecord_success=1)
    with pytest.raises(Boom):
        async with b.guard():
            raise Boom
    assert b.state is CircuitState.OPEN
    clock.advance(5)
    with pytest.raises(asyncio.CancelledError):
        async with b.guard():
            raise asyncio.CancelledError
    assert store.calls["arelease"] == 1
    async with b.guard() as g:
        g.failed()
    assert b.state is CircuitState.OPEN


def test_sync_calls_use_the_sync_methods(clock: FakeClock) -> None:
    store = CountingAsyncStore()
    b = CircuitBreaker(consecutive_failures=1, store=store, clock=clock)

    def fails() -> Any:
        raise Boom

    b.run_sync(lambda: 1)
    with pytest.raises(Boom):
        b.run_sync(fails)
    b.reset()
    assert store.calls == Counter(record_success=1, record_failure=1, transition=1)


def test_transition_to_half_open_is_refused() -> None:
    store = InMemoryBreakerStore()
    CircuitBreaker(store=store)
    with pytest.raises(ValueError, match="CLOSED, OPEN or ISOLATED"):
        store.transition(CircuitState.HALF_OPEN, 0.0)


def test_window_survives_long_idle_and_clock_jumps(clock: FakeClock) -> None:
    b = CircuitBreaker(minimum_throughput=3, sampling_duration=1.0, clock=clock)
    permit = b.allow()
    b.record_failure(permit)
    clock.advance(1e9)
    assert b.metrics.calls == 0
    for _ in range(2):
        b.record_failure(b.allow())
    assert b.state is CircuitState.CLOSED
    b.record_failure(b.allow())
    assert b.state is CircuitState.OPEN
