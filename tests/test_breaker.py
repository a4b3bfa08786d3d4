"""CircuitBreaker: unit tests with a FakeClock."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from typing import Any

import pytest

from resilient.breaker import (
    BreakerSnapshot,
    BreakerStore,
    CircuitBreaker,
    CircuitState,
    InMemoryBreakerStore,
    StateChange,
)
from resilient.errors import CircuitOpenError, RejectedError
from resilient.events import CIRCUIT_CLOSED, CIRCUIT_HALF_OPENED, CIRCUIT_OPENED, REJECTED
from resilient.policy import Pipeline
from resilient.retry import Retry
from resilient.testing import FakeClock, recording


class Boom(Exception):
    pass


class Business(Exception):
    pass


async def ok() -> str:
    return "ok"


async def boom() -> str:
    raise Boom("down")


def sync_ok() -> str:
    return "ok"


def sync_boom() -> str:
    raise Boom("down")


async def call(b: CircuitBreaker, fn: Any = ok) -> Any:
    return await b.run(fn)


async def fail(b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(Boom):
            await b.run(boom)


async def succeed(b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        assert await b.run(ok) == "ok"


# -- configuration -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"failure_ratio": 0}, "failure_ratio"),
        ({"failure_ratio": -0.1}, "failure_ratio"),
        ({"failure_ratio": 1.01}, "failure_ratio"),
        ({"failure_ratio": math.nan}, "failure_ratio"),
        ({"sampling_duration": 0}, "sampling_duration"),
        ({"sampling_duration": -1}, "sampling_duration"),
        ({"sampling_duration": math.inf}, "sampling_duration"),
        ({"minimum_throughput": 0}, "minimum_throughput"),
        ({"consecutive_failures": 0}, "consecutive_failures"),
        ({"slow_call_duration": 0}, "slow_call_duration"),
        ({"slow_call_duration": -2.0}, "slow_call_duration"),
        ({"break_duration": 0}, "break_duration"),
        ({"break_duration": -5}, "break_duration"),
        ({"half_open_max_calls": 0}, "half_open_max_calls"),
        ({"half_open_successes": 0}, "half_open_successes"),
    ],
)
def test_bad_values_raise_value_error_naming_the_parameter(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ValueError, match=param):
        CircuitBreaker(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"failure_ratio": "0.5"}, "failure_ratio"),
        ({"failure_ratio": True}, "failure_ratio"),
        ({"minimum_throughput": 1.5}, "minimum_throughput"),
        ({"consecutive_failures": "3"}, "consecutive_failures"),
        ({"half_open_max_calls": None}, "half_open_max_calls"),
        ({"break_duration": "5"}, "break_duration"),
        ({"break_duration": int}, "break_duration"),
        ({"on": 42}, "on"),
        ({"on_result": 3}, "on_result"),
        ({"ignore": "x"}, "ignore"),
        ({"on_open": 1}, "on_open"),
        ({"store": object()}, "store"),
        ({"clock": object()}, "clock"),
    ],
)
def test_bad_types_raise_type_error_naming_the_parameter(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(TypeError, match=param):
        CircuitBreaker(**kwargs)


def test_a_store_serves_one_breaker_only() -> None:
    store = InMemoryBreakerStore()
    CircuitBreaker(store=store)
    with pytest.raises(RuntimeError, match="already bound"):
        CircuitBreaker(store=store)


def test_in_memory_store_is_a_breaker_store() -> None:
    assert isinstance(InMemoryBreakerStore(), BreakerStore)
    with pytest.raises(ValueError, match="buckets"):
        InMemoryBreakerStore(buckets=0)


def test_circuit_state_is_a_string_enum() -> None:
    assert CircuitState.HALF_OPEN == "half_open"
    assert str(CircuitState.OPEN) == "open"
    assert {s.value for s in CircuitState} == {"closed", "open", "half_open", "isolated"}


# -- ratio mode --------------------------------------------------------------


async def test_ratio_mode_needs_minimum_throughput(clock: FakeClock) -> None:
    b = CircuitBreaker(failure_ratio=0.5, minimum_throughput=10, clock=clock)
    await fail(b, 9)
    assert b.state is CircuitState.CLOSED
    assert b.metrics.calls == 9
    assert b.metrics.failures == 9
    await fail(b)
    assert b.state is CircuitState.OPEN


async def test_ratio_mode_opens_at_the_ratio_not_below(clock: FakeClock) -> None:
    b = CircuitBreaker(failure_ratio=0.5, minimum_throughput=10, clock=clock)
    await succeed(b, 6)
    await fail(b, 4)
    assert b.state is CircuitState.CLOSED
    assert b.metrics.failure_ratio == pytest.approx(0.4)
    await fail(b)  # 5 of 11 < 0.5
    assert b.state is CircuitState.CLOSED
    await fail(b)  # 6 of 12 = 0.5
    assert b.state is CircuitState.OPEN


async def test_old_buckets_expire_from_the_window(clock: FakeClock) -> None:
    b = CircuitBreaker(failure_ratio=0.5, sampling_duration=10, minimum_throughput=4, clock=clock)
    await fail(b, 3)
    clock.advance(11)  # the three failures leave the window
    assert b.metrics.calls == 0
    await succeed(b, 3)
    await fail(b)
    assert b.state is CircuitState.CLOSED  # 1 failure of 4
    assert b.metrics.calls == 4


async def test_window_slides_bucket_by_bucket(clock: FakeClock) -> None:
    b = CircuitBreaker(sampling_duration=10, minimum_throughput=100, clock=clock)
    await fail(b, 2)  # bucket [0, 1)
    clock.advance(5)
    await succeed(b, 3)  # bucket [5, 6)
    assert (b.metrics.calls, b.metrics.failures) == (5, 2)
    clock.advance(5)  # t=10: the first bucket is out ([1, 11) covered)
    assert (b.metrics.calls, b.metrics.failures) == (3, 0)
    clock.advance(100)
    assert b.metrics.calls == 0


async def test_a_single_bucket_window_works(clock: FakeClock) -> None:
    store = InMemoryBreakerStore(buckets=1)
    b = CircuitBreaker(sampling_duration=10, minimum_throughput=2, store=store, clock=clock)
    await fail(b)
    clock.advance(10)
    await fail(b)
    assert b.state is CircuitState.CLOSED
    await fail(b)
    assert b.state is CircuitState.OPEN


# -- consecutive mode --------------------------------------------------------


async def test_consecutive_mode_opens_after_n_in_a_row(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=3, clock=clock)
    await fail(b, 2)
    await succeed(b)
    await fail(b, 2)
    assert b.state is CircuitState.CLOSED
    assert b.metrics.consecutive_failures == 2
    await fail(b)
    assert b.state is CircuitState.OPEN


async def test_consecutive_mode_success_reads_no_clock() -> None:
    class CountingClock(FakeClock):
        reads = 0

        def now(self) -> float:
            self.reads += 1
            return super().now()

    clock = CountingClock()
    b = CircuitBreaker(consecutive_failures=3, clock=clock)
    wrapped = b(ok)
    before = clock.reads
    for _ in range(10):
        await wrapped()
    assert clock.reads == before


# -- outcomes ----------------------------------------------------------------


async def test_exceptions_not_matched_by_on_count_as_successes(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=2, on=Boom, clock=clock)

    async def business() -> None:
        raise Business

    await fail(b)
    with pytest.raises(Business):
        await b.run(business)
    await fail(b)
    assert b.state is CircuitState.CLOSED
    assert b.metrics.consecutive_failures == 1


async def test_ignored_exceptions_count_as_nothing(clock: FakeClock) -> None:
    b = CircuitBreaker(failure_ratio=1.0, minimum_throughput=2, ignore=Business, clock=clock)

    async def business() -> None:
        raise Business

    await fail(b)
    with pytest.raises(Business):
        await b.run(business)
    assert b.metrics.calls == 1
    await fail(b)
    assert b.state is CircuitState.OPEN


async def test_on_result_flags_failures(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=2, on_result=lambda r: r == 503, clock=clock)

    async def status(code: int) -> int:
        return code

    assert await b.run(status, 503) == 503
    assert await b.run(status, 503) == 503
    assert b.state is CircuitState.OPEN


async def test_slow_calls_count_as_failures(auto_clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=2, slow_call_duration=1.0, clock=auto_clock)

    async def slow() -> str:
        await auto_clock.asleep(1.5)
        return "late"

    async def quick() -> str:
        await auto_clock.asleep(0.5)
        return "fine"

    assert await b.run(slow) == "late"
    assert await b.run(quick) == "fine"
    assert b.metrics.consecutive_failures == 0
    await b.run(slow)
    await b.run(slow)
    assert b.state is CircuitState.OPEN


async def test_slow_exceptions_that_count_as_success_are_failures(auto_clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, slow_call_duration=1.0, on=Boom, clock=auto_clock)

    async def slow_business() -> None:
        await auto_clock.asleep(2)
        raise Business

    with pytest.raises(Business):
        await b.run(slow_business)
    assert b.state is CircuitState.OPEN


def test_slow_calls_sync(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, slow_call_duration=1.0, clock=clock)

    def slow() -> str:
        clock.sleep(3)
        return "late"

    assert b.run_sync(slow) == "late"
    assert b.state is CircuitState.OPEN


async def test_cancellation_is_never_a_failure(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, clock=clock)

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await b.run(cancelled)
    assert b.state is CircuitState.CLOSED
    assert b.metrics.calls == 0


async def test_a_raising_on_predicate_counts_a_failure(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    def broken(exc: Exception) -> bool:
        raise RuntimeError("bad predicate")

    b = CircuitBreaker(consecutive_failures=1, on=broken, clock=clock)
    with caplog.at_level(logging.ERROR, "resilient.breaker"), pytest.raises(Boom):
        await b.run(boom)
    assert b.state is CircuitState.OPEN


# -- open --------------------------------------------------------------------


async def test_open_rejects_without_calling_and_says_when(clock: FakeClock) -> None:
    b = CircuitBreaker("payments", consecutive_failures=1, break_duration=10, clock=clock)
    await fail(b)
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1

    clock.advance(4)
    with pytest.raises(CircuitOpenError) as info:
        await b.run(counted)
    assert calls == 0
    assert info.value.retry_after == pytest.approx(6)
    assert info.value.policy == "payments"
    assert isinstance(info.value, RejectedError)
    assert "payments" in str(info.value)


async def test_the_opening_failure_propagates_as_itself_with_a_note(clock: FakeClock) -> None:
    b = CircuitBreaker("db", consecutive_failures=1, clock=clock)
    with pytest.raises(Boom) as info:
        await b.run(boom)
    assert any("opened CircuitBreaker 'db'" in n for n in info.value.__notes__)


async def test_opening_logs_a_warning(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    b = CircuitBreaker("db", consecutive_failures=1, clock=clock)
    with caplog.at_level(logging.WARNING, "resilient.breaker"):
        await fail(b)
    warnings = [r for r in caplog.records if r.name == "resilient.breaker" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "opened" in warnings[0].getMessage()


# -- half-open ---------------------------------------------------------------


async def test_half_open_probe_success_closes(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, break_duration=5, clock=clock)
    await fail(b)
    clock.advance(5)
    assert b.state is CircuitState.OPEN  # until a call probes
    await succeed(b)
    assert b.state is CircuitState.CLOSED
    assert b.metrics.calls == 0  # counters cleared on close


async def test_half_open_probe_failure_reopens(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, break_duration=5, clock=clock)
    await fail(b)
    clock.advance(5)
    await fail(b)
    assert b.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError) as info:
        await call(b)
    assert info.value.retry_after == pytest.approx(5)


async def test_half_open_needs_n_successes(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, half_open_successes=3, clock=clock)
    await fail(b)
    clock.advance(5)
    await succeed(b, 2)
    assert b.state is CircuitState.HALF_OPEN
    assert b.metrics.probe_successes == 2
    await succeed(b)
    assert b.state is CircuitState.CLOSED


async def test_half_open_admits_at_most_max_calls(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, half_open_max_calls=2, clock=clock)
    await fail(b)
    clock.advance(5)
    gate = asyncio.Event()
    entered = 0

    async def probe() -> str:
        nonlocal entered
        entered += 1
        await gate.wait()
        return "ok"

    tasks = [asyncio.create_task(b.run(probe)) for _ in range(5)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert entered == 2
    assert b.metrics.probes_in_flight == 2
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(r == "ok" for r in results) == 2
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 3
    assert b.state is CircuitState.CLOSED


async def test_concurrent_calls_at_the_transition_admit_one_probe(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, clock=clock)
    await fail(b)
    clock.advance(5)
    entered = 0

    async def probe() -> str:
        nonlocal entered
        entered += 1
        await asyncio.sleep(0)
        return "ok"

    results = await asyncio.gather(*(b.run(probe) for _ in range(50)), return_exceptions=True)
    assert entered == 1
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 49


def test_threads_at_the_transition_admit_no_more_probes_than_configured(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, half_open_max_calls=3, clock=clock)
    with pytest.raises(Boom):
        b.run_sync(sync_boom)
    clock.advance(5)
    inside = threading.Semaphore(0)
    release = threading.Event()
    entered = 0
    lock = threading.Lock()

    def probe() -> str:
        nonlocal entered
        with lock:
            entered += 1
        inside.release()
        release.wait(5)
        return "ok"

    start = threading.Barrier(16)
    outcomes: list[str] = []

    def worker() -> None:
        start.wait()
        try:
            outcomes.append(b.run_sync(probe))
        except CircuitOpenError:
            outcomes.append("rejected")

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for _ in range(3):
        assert inside.acquire(timeout=5)
    # Every thread that was going to be admitted has been; give stragglers a moment to be rejected.
    for _ in range(200):
        if outcomes.count("rejected") == 13:
            break
        threading.Event().wait(0.005)
    release.set()
    for t in threads:
        t.join(5)
    assert entered == 3
    assert outcomes.count("ok") == 3
    assert outcomes.count("rejected") == 13


async def test_a_cancelled_probe_releases_its_slot(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, clock=clock)
    await fail(b)
    clock.advance(5)

    async def hang() -> None:
        await asyncio.Event().wait()

    task = asyncio.create_task(b.run(hang))
    await asyncio.sleep(0)
    assert b.metrics.probes_in_flight == 1
    with pytest.raises(CircuitOpenError):
        await call(b)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.metrics.probes_in_flight == 0
    assert b.state is CircuitState.HALF_OPEN
    await succeed(b)
    assert b.state is CircuitState.CLOSED


async def test_an_ignored_probe_releases_its_slot(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, ignore=Business, clock=clock)
    await fail(b)
    clock.advance(5)

    async def business() -> None:
        raise Business

    with pytest.raises(Business):
        await b.run(business)
    assert b.state is CircuitState.HALF_OPEN
    assert b.metrics.probes_in_flight == 0
    await succeed(b)
    assert b.state is CircuitState.CLOSED


async def test_a_hung_probe_is_superseded_after_one_break(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, break_duration=5, clock=clock)
    await fail(b)
    clock.advance(5)
    gate = asyncio.Event()

    async def hung() -> None:
        await gate.wait()
        raise Boom("late")

    task = asyncio.create_task(b.run(hung))
    await asyncio.sleep(0)
    clock.advance(4.9)
    with pytest.raises(CircuitOpenError):
        await call(b)
    clock.advance(0.1)
    with recording() as rec:
        await succeed(b)  # a new probe is admitted and closes the circuit
    assert rec.names() == [CIRCUIT_HALF_OPENED, CIRCUIT_CLOSED]
    assert b.state is CircuitState.CLOSED
    gate.set()
    with pytest.raises(Boom):
        await task
    # The late failure belongs to an old epoch: it is not counted.
    assert b.state is CircuitState.CLOSED
    assert b.metrics.failures == 0


async def test_outcomes_of_calls_admitted_before_a_transition_are_ignored(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, clock=clock)
    gate = asyncio.Event()

    async def slow_fail() -> None:
        await gate.wait()
        raise Boom

    task = asyncio.create_task(b.run(slow_fail))
    await asyncio.sleep(0)
    await fail(b)  # opens
    clock.advance(5)
    await succeed(b)  # probe closes
    gate.set()
    with pytest.raises(Boom):
        await task
    assert b.state is CircuitState.CLOSED


# -- break duration ----------------------------------------------------------


async def test_break_duration_can_grow_on_failed_probes(clock: FakeClock) -> None:
    seen: list[tuple[int, float]] = []

    def grow(failed_probes: int, last: float) -> float:
        seen.append((failed_probes, last))
        return min(2.0 * 2**failed_probes, 10.0)

    b = CircuitBreaker(consecutive_failures=1, break_duration=grow, clock=clock)
    await fail(b)
    durations = [b.store.snapshot.break_duration]
    for _ in range(4):
        clock.advance(b.store.snapshot.break_duration)
        await fail(b)  # failed probe
        durations.append(b.store.snapshot.break_duration)
    assert durations == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert seen[:3] == [(0, 0.0), (1, 2.0), (2, 4.0)]
    clock.advance(10)
    await succeed(b)
    await fail(b)  # a new outage starts from the beginning
    assert b.store.snapshot.break_duration == 2.0


@pytest.mark.parametrize(
    "bad", [lambda n, last: -1, lambda n, last: math.nan, lambda n, last: "x", lambda n, last: 1 / 0]
)
async def test_a_broken_break_duration_callable_falls_back(clock: FakeClock, bad: Any) -> None:
    b = CircuitBreaker(consecutive_failures=1, break_duration=bad, clock=clock)
    await fail(b)
    assert b.state is CircuitState.OPEN
    assert b.store.snapshot.break_duration == 5.0


# -- manual control ----------------------------------------------------------


async def test_isolate_holds_open_until_reset(clock: FakeClock) -> None:
    b = CircuitBreaker(clock=clock)
    b.isolate()
    assert b.state is CircuitState.ISOLATED
    clock.advance(10_000)
    with pytest.raises(CircuitOpenError) as info:
        await call(b)
    assert info.value.retry_after is None
    assert "isolated" in str(info.value)
    b.reset()
    assert b.state is CircuitState.CLOSED
    await succeed(b)


async def test_reset_clears_counters(clock: FakeClock) -> None:
    b = CircuitBreaker(minimum_throughput=5, clock=clock)
    await fail(b, 4)
    b.reset()
    assert b.metrics.calls == 0
    await fail(b, 4)
    assert b.state is CircuitState.CLOSED


async def test_trip_opens_for_one_break(clock: FakeClock) -> None:
    b = CircuitBreaker(clock=clock, break_duration=3)
    b.trip()
    assert b.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        await call(b)
    clock.advance(3)
    await succeed(b)
    assert b.state is CircuitState.CLOSED


# -- listeners and events ----------------------------------------------------


async def test_events_on_transitions_and_rejections(clock: FakeClock) -> None:
    b = CircuitBreaker("svc", consecutive_failures=1, clock=clock)
    with recording() as rec:
        await succeed(b)
        assert rec.events == []  # nothing on the success path
        await fail(b)
        with pytest.raises(CircuitOpenError):
            await call(b)
        clock.advance(5)
        await succeed(b)
    assert rec.names() == [CIRCUIT_OPENED, REJECTED, CIRCUIT_HALF_OPENED, CIRCUIT_CLOSED]
    opened = rec.of(CIRCUIT_OPENED)[0]
    assert opened.policy == "svc"
    assert opened.policy_type == "circuit_breaker"
    assert opened.duration == 5.0
    assert opened.exception is not None
    assert opened.exception.endswith("Boom")
    assert opened.operation is not None
    assert opened.operation.endswith("boom")
    assert rec.of(REJECTED)[0].duration == pytest.approx(5.0)


async def test_state_listeners_receive_changes(clock: FakeClock) -> None:
    changes: list[StateChange] = []
    b = CircuitBreaker(
        "svc",
        consecutive_failures=1,
        on_open=changes.append,
        on_half_open=changes.append,
        on_close=changes.append,
        clock=clock,
    )
    await fail(b)
    clock.advance(5)
    await succeed(b)
    b.isolate()
    b.reset()
    assert [(c.previous, c.state) for c in changes] == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
        (CircuitState.CLOSED, CircuitState.ISOLATED),
        (CircuitState.ISOLATED, CircuitState.CLOSED),
    ]
    assert isinstance(changes[0].exception, Boom)
    assert changes[0].name == "svc"
    assert changes[3].snapshot.manual


async def test_async_state_listeners_are_scheduled(clock: FakeClock) -> None:
    seen: list[CircuitState] = []

    async def on_open(change: StateChange) -> None:
        seen.append(change.state)

    b = CircuitBreaker(consecutive_failures=1, on_open=on_open, clock=clock)
    await fail(b)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert seen == [CircuitState.OPEN]


async def test_a_raising_listener_is_logged_once_and_breaks_nothing(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def bad(change: StateChange) -> None:
        raise RuntimeError("listener bug")

    async def bad_async(change: StateChange) -> None:
        raise RuntimeError("async listener bug")

    b = CircuitBreaker(consecutive_failures=1, on_open=bad, on_close=bad_async, on_half_open=bad, clock=clock)
    with caplog.at_level(logging.ERROR, "resilient.breaker"):
        for _ in range(3):
            with pytest.raises(Boom):  # the call's own exception, not the listener's
                await b.run(boom)
            assert b.state is CircuitState.OPEN
            clock.advance(5)
            await succeed(b)  # half-open listener raises too; the probe still closes
            assert b.state is CircuitState.CLOSED
            await asyncio.sleep(0)
            await asyncio.sleep(0)
    errors = [r for r in caplog.records if r.name == "resilient.breaker" and r.levelno == logging.ERROR]
    assert len(errors) == 2  # `bad` once (on_open and on_half_open share it), `bad_async` once


def test_an_async_listener_in_sync_code_is_reported_not_raised(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def on_open(change: StateChange) -> None:
        pass

    b = CircuitBreaker(consecutive_failures=1, on_open=on_open, clock=clock)
    with caplog.at_level(logging.ERROR, "resilient.breaker"), pytest.raises(Boom):
        b.run_sync(sync_boom)
    assert b.state is CircuitState.OPEN
    assert any("event loop" in r.getMessage() or "RuntimeError" in r.getMessage() for r in caplog.records)


# -- sync path ---------------------------------------------------------------


def test_sync_functions_full_cycle(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=2, clock=clock)
    wrapped = b(sync_boom)
    for _ in range(2):
        with pytest.raises(Boom):
            wrapped()
    with pytest.raises(CircuitOpenError):
        b.run_sync(sync_ok)
    clock.advance(5)
    assert b.run_sync(sync_ok) == "ok"
    assert b.state is CircuitState.CLOSED


def test_sync_cancellation_like_exceptions_release_the_probe(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, clock=clock)
    with pytest.raises(Boom):
        b.run_sync(sync_boom)
    clock.advance(5)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        b.run_sync(interrupted)
    assert b.metrics.probes_in_flight == 0
    assert b.run_sync(sync_ok) == "ok"
    assert b.state is CircuitState.CLOSED


# -- sharing, pipelines ------------------------------------------------------


async def test_one_breaker_guarding_several_functions_is_one_breaker(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=2, clock=clock)
    f1 = b(boom)
    f2 = b(sync_boom)
    with pytest.raises(Boom):
        await f1()
    with pytest.raises(Boom):
        f2()
    assert b.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        await b(ok)()


async def test_breaker_inside_retry(auto_clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=2, clock=auto_clock)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        raise Boom

    guarded = Pipeline(Retry(5, on=Boom, clock=auto_clock), b)(flaky)
    with pytest.raises(CircuitOpenError):
        await guarded()
    assert calls == 2  # the retry stops hammering once the circuit opens


# -- low-level API -----------------------------------------------------------


async def test_low_level_allow_and_record(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, clock=clock)
    permit = b.allow()
    assert isinstance(permit, BreakerSnapshot)
    b.record_success(permit)
    permit = b.allow()
    b.record_failure(permit)
    assert b.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        b.allow()
    clock.advance(5)
    probe = await b.aallow()
    assert b.state is CircuitState.HALF_OPEN
    with pytest.raises(CircuitOpenError):
        b.allow()
    b.release(probe)
    probe = b.allow()
    b.record_exception(probe, Business(), duration=0.1)  # on=Exception: a failed probe
    assert b.state is CircuitState.OPEN


async def test_low_level_record_result_and_exception(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, on=Boom, on_result=lambda r: r >= 500, clock=clock)
    b.record_result(b.allow(), 200)
    b.record_exception(b.allow(), Business())
    b.record_exception(b.allow(), asyncio.CancelledError())
    assert b.state is CircuitState.CLOSED
    b.record_result(b.allow(), 503)
    assert b.state is CircuitState.OPEN


async def test_low_level_slow_success_is_a_failure(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=1, slow_call_duration=2, clock=clock)
    b.record_success(b.allow(), duration=1.0)
    assert b.state is CircuitState.CLOSED
    b.record_success(b.allow(), duration=2.0)
    assert b.state is CircuitState.OPEN


async def test_guard_context_manager(clock: FakeClock) -> None:
    b = CircuitBreaker(consecutive_failures=2, clock=clock)
    with b.guard():
        pass
    with pytest.raises(Boom), b.guard():
        raise Boom
    async with b.guard() as g:
        g.failed()
    assert b.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        async with b.guard():
            pass
    clock.advance(5)
    async with b.guard() as g:
        assert g.permit is not None
        assert g.permit.state is CircuitState.HALF_OPEN
    assert b.state is CircuitState.CLOSED


# -- inspection --------------------------------------------------------------


async def test_status_is_json_able(clock: FakeClock) -> None:
    import json

    b = CircuitBreaker("inventory", minimum_throughput=3, clock=clock)
    await fail(b)
    await succeed(b)
    status = b.status()
    json.dumps(status)
    assert status["name"] == "inventory"
    assert status["state"] == "closed"
    assert status["calls"] == 2
    assert status["failures"] == 1
    assert status["failure_ratio"] == 0.5
    assert status["mode"] == "ratio"
    assert status["type"] == "circuit_breaker"
    b.isolate()
    assert b.status()["retry_after"] is None
    assert "closed" in repr(CircuitBreaker())
    assert "isolated" in repr(b)


def test_named_breakers_are_live_policies() -> None:
    from resilient.policy import live_policies

    b = CircuitBreaker("listed-breaker")
    assert b in live_policies()
