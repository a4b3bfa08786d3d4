"""No user code runs under a breaker lock (issue 14, item 11).

A ``break_duration`` callable, a clock, the ``on``/``ignore``/``on_result``
predicates, state listeners and event listeners are user code: they may read
the breaker (``breaker.metrics``, ``breaker.status()``), and the in-memory
store's lock is not reentrant. Each deadlock test runs the call in a thread
and joins it with a bound, so it fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from resilient.breaker import CircuitBreaker, CircuitState, InMemoryBreakerStore, StateChange
from resilient.events import ResilienceEvent
from resilient.testing import FakeClock


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom


async def aboom() -> None:
    raise Boom


def bounded(fn: Callable[[], Any], seconds: float = 5.0) -> Any:
    """Run ``fn`` in a thread; fail (not hang) if it does not finish within ``seconds``."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed back to the test thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail("deadlock: the call did not finish (user code ran under the store's lock)")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def reading_breaker(cell: list[CircuitBreaker], seen: list[Any]) -> Callable[[int, float], float]:
    """A break_duration callable that reads the breaker, as a user's adaptive policy would."""

    def duration(failed_probes: int, last: float) -> float:
        breaker = cell[0]
        seen.append(breaker.metrics.consecutive_failures)
        seen.append(breaker.status()["state"])
        return 2.0 * 2.0**failed_probes

    return duration


def test_a_break_duration_reading_the_breaker_does_not_deadlock_when_opening(clock: FakeClock) -> None:
    cell: list[CircuitBreaker] = []
    seen: list[Any] = []
    breaker = CircuitBreaker(consecutive_failures=2, break_duration=reading_breaker(cell, seen), clock=clock)
    cell.append(breaker)

    def two_failures() -> None:
        for _ in range(2):
            with pytest.raises(Boom):
                breaker.run_sync(boom)

    bounded(two_failures)
    assert breaker.state is CircuitState.OPEN
    assert breaker.store.snapshot.break_duration == 2.0
    # The callable saw the failure it is opening for, before the transition.
    assert seen == [2, "closed"]


def test_a_break_duration_reading_the_breaker_does_not_deadlock_on_a_failed_probe(clock: FakeClock) -> None:
    cell: list[CircuitBreaker] = []
    seen: list[Any] = []
    breaker = CircuitBreaker(consecutive_failures=1, break_duration=reading_breaker(cell, seen), clock=clock)
    cell.append(breaker)

    def open_then_fail_the_probe() -> None:
        with pytest.raises(Boom):
            breaker.run_sync(boom)
        clock.advance(2.0)
        with pytest.raises(Boom):
            breaker.run_sync(boom)  # the probe

    bounded(open_then_fail_the_probe)
    assert breaker.state is CircuitState.OPEN
    assert breaker.store.snapshot.failed_probes == 1
    assert breaker.store.snapshot.break_duration == 4.0


def test_a_break_duration_reading_the_breaker_does_not_deadlock_on_trip(clock: FakeClock) -> None:
    cell: list[CircuitBreaker] = []
    seen: list[Any] = []
    breaker = CircuitBreaker(break_duration=reading_breaker(cell, seen), clock=clock)
    cell.append(breaker)
    bounded(breaker.trip)
    assert breaker.state is CircuitState.OPEN
    assert breaker.store.snapshot.break_duration == 2.0
    assert breaker.store.snapshot.manual


def test_a_break_duration_reading_the_breaker_does_not_deadlock_on_the_async_path(clock: FakeClock) -> None:
    cell: list[CircuitBreaker] = []
    seen: list[Any] = []
    breaker = CircuitBreaker(
        failure_ratio=0.5, minimum_throughput=2, break_duration=reading_breaker(cell, seen), clock=clock
    )
    cell.append(breaker)

    async def main() -> None:
        for _ in range(2):
            with pytest.raises(Boom):
                await breaker.run(aboom)

    bounded(lambda: asyncio.run(main()))
    assert breaker.state is CircuitState.OPEN


def test_a_break_duration_computed_for_a_lost_race_is_not_applied(clock: FakeClock) -> None:
    # Two probes fail. The callable for the first one runs outside the lock, and while it runs
    # the second probe's failure reopens the circuit: exactly one transition may happen.
    race: list[Callable[[], None]] = []
    calls: list[int] = []
    opened: list[StateChange] = []

    def duration(failed_probes: int, last: float) -> float:
        calls.append(failed_probes)
        if race:
            race.pop()()
        return 3.0

    breaker = CircuitBreaker(
        consecutive_failures=1, half_open_max_calls=2, break_duration=duration, on_open=opened.append, clock=clock
    )
    with pytest.raises(Boom):
        breaker.run_sync(boom)  # opens
    clock.advance(3.0)
    first = breaker.allow()
    second = breaker.allow()
    assert first is second
    assert first.state is CircuitState.HALF_OPEN
    race.append(lambda: breaker.record_failure(second))
    bounded(lambda: breaker.record_failure(first))
    assert breaker.state is CircuitState.OPEN
    assert len(opened) == 2  # the first opening, then one reopening
    assert calls == [0, 1, 1]
    assert breaker.store.snapshot.failed_probes == 1


@pytest.mark.parametrize(
    "options",
    [
        {"consecutive_failures": 1},
        {"consecutive_failures": 1, "slow_call_duration": 10.0},
        {"failure_ratio": 0.5, "minimum_throughput": 1},
        {"failure_ratio": 0.5, "minimum_throughput": 1, "slow_call_duration": 10.0},
    ],
)
def test_no_user_code_runs_under_the_store_lock(options: dict[str, Any]) -> None:
    """Every hook the breaker calls checks that the store's lock is free at that moment."""
    store = InMemoryBreakerStore()
    violations: list[str] = []

    def check(where: str) -> None:
        if store._lock.locked():
            violations.append(where)

    class CheckingClock(FakeClock):
        def now(self) -> float:
            check("clock.now")
            return super().now()

    clock = CheckingClock()

    def on(exc: BaseException) -> bool:
        check("on")
        return isinstance(exc, Boom)

    def ignore(exc: BaseException) -> bool:
        check("ignore")
        return False

    def on_result(result: Any) -> bool:
        check("on_result")
        return bool(result == "bad")

    def duration(failed_probes: int, last: float) -> float:
        check("break_duration")
        return 1.0

    def listener(change: StateChange) -> None:
        check(f"on_{change.state.value}")

    def event_listener(event: ResilienceEvent) -> None:
        check(f"event {event.name}")

    breaker = CircuitBreaker(
        **options,
        break_duration=duration,
        on=on,
        ignore=ignore,
        on_result=on_result,
        on_open=listener,
        on_close=listener,
        on_half_open=listener,
        store=store,
        clock=clock,
        listeners=[event_listener],
    )

    def cycle() -> None:
        with pytest.raises(Boom):
            breaker.run_sync(boom)  # opens
        with pytest.raises(Exception, match="open"):
            breaker.run_sync(boom)  # rejected
        clock.advance(1.0)
        assert breaker.run_sync(lambda: "bad") == "bad"  # failed probe: reopens
        clock.advance(1.0)
        assert breaker.run_sync(lambda: "ok") == "ok"  # probe closes
        breaker.trip()
        breaker.isolate()
        breaker.reset()
        breaker.status()

    async def acycle() -> None:
        with pytest.raises(Boom):
            await breaker.run(aboom)
        clock.advance(1.0)

        async def good() -> str:
            return "ok"

        assert await breaker.run(good) == "ok"

    bounded(cycle)
    bounded(lambda: asyncio.run(acycle()))
    assert violations == []
