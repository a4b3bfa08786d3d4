"""Retry: attempts, predicates, results, hints, deadlines, budgets, cancellation."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import pytest
import tenacity

from resilient import Retry, RetryBudget, constant, current_attempt, deadline, exponential, linear
from resilient.retry import _retrying
from resilient.testing import FakeClock, recording


class Flaky:
    """Fails ``failures`` times with ``exc``, then returns ``result``."""

    def __init__(self, failures: int, exc: Exception | None = None, result: Any = "ok") -> None:
        self.failures = failures
        self.exc = exc if exc is not None else ConnectionError("down")
        self.result = result
        self.calls = 0

    async def __call__(self) -> Any:
        return self.sync()

    def sync(self) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return self.result


async def test_retries_until_success(auto_clock: FakeClock) -> None:
    flaky = Flaky(2)
    assert await Retry(3, backoff=constant(1), clock=auto_clock).run(flaky) == "ok"
    assert flaky.calls == 3
    assert auto_clock.sleeps == [1, 1]


def test_sync_retries_until_success(auto_clock: FakeClock) -> None:
    flaky = Flaky(2)
    assert Retry(3, backoff=constant(1), clock=auto_clock).run_sync(flaky.sync) == "ok"
    assert flaky.calls == 3
    assert auto_clock.sleeps == [1, 1]


async def test_reraises_last_exception_itself_with_a_note(auto_clock: FakeClock) -> None:
    errors = [ConnectionError(f"e{i}") for i in range(3)]
    calls = 0

    async def fail() -> None:
        nonlocal calls
        calls += 1
        raise errors[calls - 1]

    with pytest.raises(ConnectionError) as info:
        await Retry(3, backoff=constant(2), clock=auto_clock, name="db").run(fail)
    assert info.value is errors[2]
    assert calls == 3
    notes = info.value.__notes__
    assert len(notes) == 1
    assert "Retry 'db' gave up after 3 attempts, 4.00 s after the first failure" in notes[0]


async def test_returns_last_flagged_result_when_attempts_run_out(auto_clock: FakeClock) -> None:
    results = iter([503, 502, 500])
    retry = Retry(3, on_result=lambda r: r >= 500, backoff=constant(0), clock=auto_clock)
    assert await retry.run(lambda: _value(next(results))) == 500


async def test_flagged_result_then_success(auto_clock: FakeClock) -> None:
    results = iter([503, 200])
    retry = Retry(3, on_result=lambda r: r >= 500, backoff=constant(0), clock=auto_clock)
    assert await retry.run(lambda: _value(next(results))) == 200


async def _value(v: Any) -> Any:
    return v


async def test_unmatched_exception_is_not_retried() -> None:
    flaky = Flaky(5, exc=KeyError("k"))
    with pytest.raises(KeyError):
        await Retry(5, on=ConnectionError).run(flaky)
    assert flaky.calls == 1


async def test_predicate_on(auto_clock: FakeClock) -> None:
    flaky = Flaky(1, exc=ValueError("transient"))
    retry = Retry(3, on=lambda e: "transient" in str(e), backoff=constant(0), clock=auto_clock)
    assert await retry.run(flaky) == "ok"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit])
async def test_base_exceptions_are_never_retried_even_with_on_base_exception(exc_type: type[BaseException]) -> None:
    calls = 0

    async def boom() -> None:
        nonlocal calls
        calls += 1
        raise exc_type()

    with pytest.raises(exc_type):
        await Retry(5, on=BaseException).run(boom)
    assert calls == 1


def test_sync_keyboard_interrupt_is_never_retried() -> None:
    calls = 0

    def boom() -> None:
        nonlocal calls
        calls += 1
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Retry(5, on=BaseException).run_sync(boom)
    assert calls == 1


async def test_cancellation_during_backoff_propagates(clock: FakeClock) -> None:
    flaky = Flaky(10)
    task = asyncio.create_task(Retry(5, backoff=constant(10), clock=clock).run(flaky))
    for _ in range(5):
        await asyncio.sleep(0)
    assert clock.sleepers == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert flaky.calls == 1


async def test_cancelled_error_from_the_function_is_not_retried() -> None:
    calls = 0

    async def cancelled() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await Retry(5, on=BaseException).run(cancelled)
    assert calls == 1


async def test_backoff_sequence_is_used_in_order(auto_clock: FakeClock) -> None:
    flaky = Flaky(3)
    await Retry(4, backoff=linear(1, step=2), clock=auto_clock).run(flaky)
    assert auto_clock.sleeps == [1, 3, 5]


async def test_max_delay_caps_backoff(auto_clock: FakeClock) -> None:
    flaky = Flaky(3)
    await Retry(4, backoff=exponential(10, jitter=None), max_delay=15, clock=auto_clock).run(flaky)
    assert auto_clock.sleeps == [10, 15, 15]


async def test_plain_callable_backoff(auto_clock: FakeClock) -> None:
    flaky = Flaky(2)
    await Retry(3, backoff=lambda n: n * 0.5, clock=auto_clock).run(flaky)
    assert auto_clock.sleeps == [0.5, 1.0]


async def test_tenacity_wait_objects_are_accepted(auto_clock: FakeClock) -> None:
    flaky = Flaky(3)
    wait = tenacity.wait_exponential(multiplier=1, min=0, max=100)
    await Retry(4, backoff=wait, clock=auto_clock).run(flaky)
    assert auto_clock.sleeps == [1, 2, 4]


async def test_tenacity_wait_combinations(auto_clock: FakeClock) -> None:
    flaky = Flaky(2)
    wait = tenacity.wait_fixed(1) + tenacity.wait_fixed(2)
    await Retry(3, backoff=wait, clock=auto_clock).run(flaky)
    assert auto_clock.sleeps == [3, 3]


async def test_delay_hint_overrides_backoff_and_is_capped(auto_clock: FakeClock) -> None:
    hints = iter([2.0, 500.0, None, float("nan"), -1, "garbage"])
    flaky = Flaky(6)
    retry = Retry(7, backoff=constant(0.25), delay_hint=lambda _: next(hints), max_delay=10, clock=auto_clock)
    assert await retry.run(flaky) == "ok"
    assert auto_clock.sleeps == [2.0, 10, 0.25, 0.25, 0.25, 0.25]


async def test_delay_hint_receives_result_or_exception(auto_clock: FakeClock) -> None:
    seen: list[Any] = []
    outcomes = iter([429, ConnectionError("x"), 200])

    async def call() -> int:
        value = next(outcomes)
        if isinstance(value, Exception):
            raise value
        return value

    def hint(value: Any) -> float | None:
        seen.append(value)
        return None

    retry = Retry(3, on_result=lambda r: r == 429, delay_hint=hint, backoff=constant(0), clock=auto_clock)
    assert await retry.run(call) == 200
    assert seen[0] == 429
    assert isinstance(seen[1], ConnectionError)


async def test_raising_delay_hint_falls_back_to_backoff(auto_clock: FakeClock) -> None:
    def broken(_: Any) -> float:
        raise RuntimeError("bug")

    flaky = Flaky(1)
    await Retry(2, backoff=constant(0.5), delay_hint=broken, clock=auto_clock).run(flaky)
    assert auto_clock.sleeps == [0.5]


async def test_max_elapsed_stops_before_sleeping_past_it(auto_clock: FakeClock) -> None:
    flaky = Flaky(10)
    with pytest.raises(ConnectionError) as info:
        await Retry(10, backoff=constant(4), max_elapsed=10, clock=auto_clock).run(flaky)
    assert auto_clock.sleeps == [4, 4]
    assert flaky.calls == 3
    assert "max_elapsed" in info.value.__notes__[0]


async def test_never_retries_past_the_deadline(auto_clock: FakeClock) -> None:
    flaky = Flaky(10)
    with deadline(5, clock=auto_clock), pytest.raises(ConnectionError) as info:
        await Retry(10, backoff=constant(2), clock=auto_clock).run(flaky)
    # 2 + 2 = 4 s slept; a third delay of 2 s would end at 6 s > 5 s.
    assert auto_clock.sleeps == [2, 2]
    assert "deadline" in info.value.__notes__[0]


async def test_deadline_result_path_returns_last_result(auto_clock: FakeClock) -> None:
    with deadline(1, clock=auto_clock):
        result = await Retry(5, on_result=lambda r: True, backoff=constant(2), clock=auto_clock).run(_value, 7)
    assert result == 7
    assert auto_clock.sleeps == []


async def test_current_attempt_is_visible_inside_and_reset_after(auto_clock: FakeClock) -> None:
    seen: list[int] = []

    async def call() -> str:
        seen.append(current_attempt())
        if len(seen) < 3:
            raise ConnectionError
        return "ok"

    await Retry(3, backoff=constant(0), clock=auto_clock).run(call)
    assert seen == [1, 2, 3]
    assert current_attempt() == 1


async def test_retry_events_are_emitted(auto_clock: FakeClock) -> None:
    flaky = Flaky(2)
    with recording() as events:
        await Retry(3, backoff=constant(1), clock=auto_clock, name="r").run(flaky)
    retries = events.of("retry")
    assert [e.attempt for e in retries] == [2, 3]
    assert retries[0].duration == 1
    assert retries[0].exception == "ConnectionError"
    assert retries[0].policy == "r"
    assert retries[0].policy_type == "retry"
    assert retries[0].operation is not None


async def test_budget_limits_retries(auto_clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.1, min_per_second=0.1, window=10, clock=auto_clock)  # floor: 1 retry
    calls = 0

    async def fail() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError

    retry = Retry(3, backoff=constant(0), budget=budget, clock=auto_clock)
    with recording() as events:
        for _ in range(20):
            with pytest.raises(ConnectionError):
                await retry.run(fail)
    retries = calls - 20
    # 20 calls earn 0.1 * 20 = 2 retries, plus the floor of 1.
    assert retries == 3
    assert events.of("budget_exhausted")


async def test_budget_exhausted_note(auto_clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0, min_per_second=0, window=10, clock=auto_clock)
    with pytest.raises(ConnectionError) as info:
        await Retry(3, budget=budget, clock=auto_clock).run(Flaky(5))
    assert "budget is spent" in info.value.__notes__[0]


def test_attempts_one_means_no_retry() -> None:
    flaky = Flaky(1)
    with pytest.raises(ConnectionError):
        Retry(1).run_sync(flaky.sync)
    assert flaky.calls == 1


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"attempts": 0}, ValueError, "attempts must be an int >= 1, got 0"),
        ({"attempts": -3}, ValueError, "attempts"),
        ({"attempts": 2.5}, TypeError, "attempts"),
        ({"attempts": True}, TypeError, "attempts"),
        ({"on": int}, TypeError, "on must be"),
        ({"on": "ValueError"}, TypeError, "on must be"),
        ({"on_result": 3}, TypeError, "on_result"),
        ({"max_delay": -1}, ValueError, "max_delay"),
        ({"max_delay": math.nan}, ValueError, "max_delay"),
        ({"max_delay": math.inf}, ValueError, "max_delay"),
        ({"max_elapsed": -0.5}, ValueError, "max_elapsed"),
        ({"backoff": 3}, TypeError, "backoff"),
        ({"delay_hint": 3}, TypeError, "delay_hint"),
        ({"budget": object()}, TypeError, "budget"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        Retry(**kwargs)


def test_repr_mentions_attempts() -> None:
    assert "attempts=4" in repr(Retry(4))


async def test_budget_exhaustion_warns_once_per_interval_not_per_call(
    auto_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    budget = RetryBudget(ratio=0, min_per_second=0, window=10, clock=auto_clock)
    retry = Retry(3, budget=budget, clock=auto_clock, name="storm")
    with caplog.at_level(logging.WARNING, logger="resilient.retry"):
        for _ in range(50):
            with pytest.raises(ConnectionError):
                await retry.run(Flaky(5))
    warnings = [r for r in caplog.records if r.name == "resilient.retry"]
    assert len(warnings) == 1
    assert "retry budget exhausted" in warnings[0].getMessage()
    # The interval runs on the policy's clock (it read time.monotonic): ten seconds on it, and it warns again.
    auto_clock.advance(10)
    with caplog.at_level(logging.WARNING, logger="resilient.retry"), pytest.raises(ConnectionError):
        await retry.run(Flaky(5))
    assert len([r for r in caplog.records if r.name == "resilient.retry"]) == 2


# -- infinite delays (issue 14, item 16) -------------------------------------


async def test_an_infinite_hint_without_max_delay_falls_back_to_the_backoff(auto_clock: FakeClock) -> None:
    flaky = Flaky(1)
    retry = Retry(2, backoff=constant(0.5), delay_hint=lambda _: math.inf, max_delay=None, clock=auto_clock)
    assert await retry.run(flaky) == "ok"
    assert auto_clock.sleeps == [0.5]


def test_an_infinite_hint_without_max_delay_falls_back_to_the_backoff_sync(auto_clock: FakeClock) -> None:
    flaky = Flaky(1)
    retry = Retry(2, backoff=constant(0.5), delay_hint=lambda _: math.inf, max_delay=None, clock=auto_clock)
    assert retry.run_sync(flaky.sync) == "ok"
    assert auto_clock.sleeps == [0.5]


async def test_an_infinite_callable_backoff_without_max_delay_is_garbage(auto_clock: FakeClock) -> None:
    flaky = Flaky(1)
    assert await Retry(2, backoff=lambda n: math.inf, max_delay=None, clock=auto_clock).run(flaky) == "ok"
    assert Retry(2, backoff=lambda n: math.inf, max_delay=None, clock=auto_clock).run_sync(Flaky(1).sync) == "ok"
    assert auto_clock.sleeps == []  # like NaN or a string: no delay


async def test_an_infinite_hint_is_still_clamped_to_max_delay(auto_clock: FakeClock) -> None:
    await Retry(2, backoff=constant(0.5), delay_hint=lambda _: math.inf, max_delay=3, clock=auto_clock).run(Flaky(1))
    # An int too large for a float is as good as infinite, from a hint or a callable backoff.
    await Retry(2, backoff=constant(0.5), delay_hint=lambda _: 10**400, max_delay=3, clock=auto_clock).run(Flaky(1))
    await Retry(2, backoff=lambda n: 10**400, max_delay=3, clock=auto_clock).run(Flaky(1))
    await Retry(2, backoff=lambda n: 10**400, max_delay=None, clock=auto_clock).run(Flaky(1))
    assert auto_clock.sleeps == [3, 3, 3]


async def test_an_infinite_hint_on_the_real_clock_neither_hangs_nor_overflows() -> None:
    hint = lambda _: math.inf  # noqa: E731
    retry = Retry(2, backoff=constant(0), delay_hint=hint, max_delay=None)
    assert await asyncio.wait_for(retry.run(Flaky(1)), 5) == "ok"  # bounded: fails rather than hangs
    assert retry.run_sync(Flaky(1).sync) == "ok"  # time.sleep(inf) raised OverflowError


# -- current_attempt() in nested retries (issue 14, item 17) -----------------


async def test_current_attempt_of_a_nested_retry_starts_at_one(auto_clock: FakeClock) -> None:
    seen: list[tuple[str, int]] = []
    leaf_calls = 0

    async def leaf() -> str:
        nonlocal leaf_calls
        leaf_calls += 1
        seen.append(("leaf", current_attempt()))
        if leaf_calls <= 3:  # the inner retry's 3 attempts fail: the outer one retries
            raise ConnectionError
        return "ok"

    inner = Retry(3, backoff=constant(0), clock=auto_clock)(leaf)

    async def middle() -> str:
        result = await inner()
        seen.append(("middle", current_attempt()))
        return result

    outer = Retry(2, backoff=constant(0), clock=auto_clock)(middle)
    assert await outer() == "ok"
    assert seen == [("leaf", 1), ("leaf", 2), ("leaf", 3), ("leaf", 1), ("middle", 2)]
    assert current_attempt() == 1
    assert _retrying == [0]  # back on the fast path


def test_current_attempt_of_a_nested_retry_starts_at_one_sync(auto_clock: FakeClock) -> None:
    seen: list[tuple[str, int]] = []
    leaf_calls = 0

    def leaf() -> str:
        nonlocal leaf_calls
        leaf_calls += 1
        seen.append(("leaf", current_attempt()))
        if leaf_calls <= 2:
            raise ConnectionError
        return "ok"

    inner = Retry(2, backoff=constant(0), clock=auto_clock)(leaf)

    def middle() -> str:
        result = inner()
        seen.append(("middle", current_attempt()))
        return result

    assert Retry(2, backoff=constant(0), clock=auto_clock)(middle)() == "ok"
    assert seen == [("leaf", 1), ("leaf", 2), ("leaf", 1), ("middle", 2)]
    assert current_attempt() == 1


async def test_current_attempt_of_a_nested_retry_with_duration_listeners(auto_clock: FakeClock) -> None:
    """The timed first attempt (a duration listener is installed) starts at one too."""
    from resilient.events import add_duration_listener, remove_duration_listener

    seen: list[int] = []
    leaf_calls = 0

    async def leaf() -> None:
        nonlocal leaf_calls
        leaf_calls += 1
        seen.append(current_attempt())
        if leaf_calls == 1:
            raise ConnectionError

    listener = lambda *_: None  # noqa: E731
    add_duration_listener(listener)
    try:
        inner = Retry(1, budget=RetryBudget(clock=auto_clock), clock=auto_clock)(leaf)
        await Retry(2, backoff=constant(0), clock=auto_clock)(inner)()
    finally:
        remove_duration_listener(listener)
    assert seen == [1, 1]


# -- elapsed time from the start of the first attempt (issue 14, item 20) ----


def _slow_failure(clock: FakeClock, seconds: float, times: int) -> Any:
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        await clock.asleep(seconds)
        if calls <= times:
            raise ConnectionError("down")
        return "ok"

    return call


async def test_max_elapsed_counts_from_the_start_of_the_first_attempt(auto_clock: FakeClock) -> None:
    call = _slow_failure(auto_clock, 0.5, 10)  # every attempt takes 0.5 s and fails
    retry = Retry(10, backoff=constant(0.1), max_elapsed=1.0, clock=auto_clock, name="slow")
    with pytest.raises(ConnectionError) as info:
        await retry.run(call)
    # Attempt 1: 0-0.5, attempt 2: 0.6-1.1; a third would start after 1.2 s > max_elapsed.
    assert auto_clock.sleeps == [0.5, 0.1, 0.5]
    assert info.value.__notes__ == [
        "resilient: Retry 'slow' gave up after 2 attempts: the next delay (0.1 s) would exceed max_elapsed in 1.10 s"
    ]


def test_max_elapsed_counts_from_the_start_of_the_first_attempt_sync(auto_clock: FakeClock) -> None:
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        auto_clock.sleep(0.5)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError) as info:
        Retry(10, backoff=constant(0.1), max_elapsed=1.0, clock=auto_clock).run_sync(call)
    assert calls == 2
    assert "in 1.10 s" in info.value.__notes__[0]


async def test_the_give_up_note_without_max_elapsed_says_what_it_measures(auto_clock: FakeClock) -> None:
    """Without max_elapsed the first attempt's start is not read (success-path cost): the note says so."""
    call = _slow_failure(auto_clock, 0.5, 10)
    with pytest.raises(ConnectionError) as info:
        await Retry(2, backoff=constant(0.05), clock=auto_clock, name="slow").run(call)
    # Not "in 0.55 s", which read as the whole call's time (it took 1.05 s).
    assert info.value.__notes__ == ["resilient: Retry 'slow' gave up after 2 attempts, 0.55 s after the first failure"]
