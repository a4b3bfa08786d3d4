"""Retry(on_give_up=...): told once when the retry gives up on a retryable failure, never otherwise."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from resilient import GiveUp, Retry, RetryBudget, constant, deadline
from resilient.testing import FakeClock, set_testing


class Failing:
    """Raises ``ConnectionError(f"e{n}")`` on call n for ``failures`` calls, taking ``seconds`` each, then returns."""

    def __init__(self, clock: FakeClock, failures: int = 100, seconds: float = 0.0) -> None:
        self.clock = clock
        self.failures = failures
        self.seconds = seconds
        self.calls = 0
        self.errors: list[Exception] = []

    def sync(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        if self.seconds:
            self.clock.sleep(self.seconds)
        if self.calls <= self.failures:
            self.errors.append(ConnectionError(f"e{self.calls}"))
            raise self.errors[-1]
        return "ok"

    async def __call__(self, *args: Any, **kwargs: Any) -> str:
        return self.sync()


async def test_attempts_exhausted_hands_the_last_exception_and_the_call_to_the_hook(auto_clock: FakeClock) -> None:
    seen: list[GiveUp] = []
    flaky = Failing(auto_clock, seconds=0.5)
    retry = Retry(3, backoff=constant(1), on_give_up=seen.append, clock=auto_clock, name="deliver")
    with pytest.raises(ConnectionError) as info:
        await retry.run(flaky, "event-1", subscriber="s1")
    assert info.value is flaky.errors[-1]
    [record] = seen
    assert record.exception is info.value
    assert record.result is None
    assert record.attempts == 3
    assert record.reason == "attempts"
    # Three attempts of 0.5 s and two waits of 1 s, from the start of the first attempt.
    assert record.elapsed == pytest.approx(3.5)
    assert record.args == ("event-1",)
    assert record.kwargs == {"subscriber": "s1"}
    assert record.policy == "deliver"
    assert record.operation == "Failing"
    assert record.note == info.value.__notes__[0] == "resilient: Retry 'deliver' gave up after 3 attempts in 3.50 s"
    assert record.retry_after is None


def test_the_sync_retry_calls_the_hook_too(auto_clock: FakeClock) -> None:
    seen: list[GiveUp] = []
    flaky = Failing(auto_clock)
    retry = Retry(2, backoff=constant(1), on_give_up=seen.append, clock=auto_clock)
    with pytest.raises(ConnectionError) as info:
        retry.run_sync(flaky.sync, 7)
    [record] = seen
    assert record.exception is info.value
    assert (record.attempts, record.reason, record.args, record.elapsed) == (2, "attempts", (7,), 1.0)


async def test_an_async_hook_is_awaited(auto_clock: FakeClock) -> None:
    dead_letters: list[Any] = []

    async def dead_letter(record: GiveUp) -> None:
        await asyncio.sleep(0)
        dead_letters.append(record.args[0])

    retry = Retry(2, backoff=constant(0), on_give_up=dead_letter, clock=auto_clock)
    with pytest.raises(ConnectionError):
        await retry.run(Failing(auto_clock), "evt")
    assert dead_letters == ["evt"]


async def test_a_flagged_result_is_handed_over_and_still_returned(auto_clock: FakeClock) -> None:
    seen: list[GiveUp] = []
    results = iter([503, 502])

    async def call() -> int:
        return next(results)

    retry = Retry(2, on_result=lambda r: r >= 500, backoff=constant(0), on_give_up=seen.append, clock=auto_clock)
    assert await retry.run(call) == 502
    [record] = seen
    assert record.result == 502
    assert record.exception is None
    assert record.note == "resilient: Retry gave up after 2 attempts in 0.00 s"


async def test_no_hook_on_success_nor_for_what_is_not_retried(auto_clock: FakeClock) -> None:
    seen: list[GiveUp] = []
    retry = Retry(3, on=ConnectionError, backoff=constant(0), on_give_up=seen.append, clock=auto_clock)
    assert await retry.run(Failing(auto_clock, failures=2)) == "ok"
    with pytest.raises(KeyError):
        await retry.run(_raise, KeyError("not retried"))
    outcomes: list[Exception] = [ConnectionError("retried"), KeyError("then not retryable")]

    async def changes_its_mind() -> None:
        raise outcomes.pop(0)

    with pytest.raises(KeyError):
        await retry.run(changes_its_mind)
    assert seen == []


async def test_no_hook_when_the_call_is_cancelled(clock: FakeClock) -> None:
    seen: list[GiveUp] = []
    retry = Retry(5, backoff=constant(10), on_give_up=seen.append, clock=clock)
    task = asyncio.create_task(retry.run(Failing(clock)))
    for _ in range(5):
        await asyncio.sleep(0)
    assert clock.sleepers == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == []


async def _raise(exc: Exception) -> None:
    raise exc


async def test_a_hook_that_raises_is_logged_and_the_outcome_stands(
    auto_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(record: GiveUp) -> None:
        raise RuntimeError("dead-letter queue down")

    retry = Retry(2, backoff=constant(0), on_give_up=broken, clock=auto_clock, name="r")
    flaky = Failing(auto_clock)
    with caplog.at_level(logging.ERROR, logger="resilient.retry"), pytest.raises(ConnectionError) as info:
        await retry.run(flaky)
    assert info.value is flaky.errors[-1]
    assert info.value.__context__ is None  # the hook's error is not chained onto the outcome
    assert len(info.value.__notes__) == 1
    [log] = [r for r in caplog.records if r.name == "resilient.retry"]
    assert log.levelno == logging.ERROR
    assert "Retry 'r'" in log.getMessage()
    assert "on_give_up raised" in log.getMessage()
    assert log.exc_info is not None
    assert isinstance(log.exc_info[1], RuntimeError)


def test_a_sync_hook_that_raises_is_logged_and_the_result_stands(
    auto_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(record: GiveUp) -> None:
        raise RuntimeError("sink down")

    retry = Retry(2, on_result=lambda r: True, backoff=constant(0), on_give_up=broken, clock=auto_clock)
    with caplog.at_level(logging.ERROR, logger="resilient.retry"):
        assert retry.run_sync(lambda: 503) == 503
    assert [r.levelno for r in caplog.records if r.name == "resilient.retry"] == [logging.ERROR]


async def test_an_async_hook_that_raises_is_logged_too(auto_clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    async def broken(record: GiveUp) -> None:
        raise RuntimeError("sink down")

    retry = Retry(2, backoff=constant(0), on_give_up=broken, clock=auto_clock)
    with caplog.at_level(logging.ERROR, logger="resilient.retry"), pytest.raises(ConnectionError):
        await retry.run(Failing(auto_clock))
    assert len([r for r in caplog.records if r.name == "resilient.retry"]) == 1


async def test_cancellation_inside_an_async_hook_propagates(auto_clock: FakeClock) -> None:
    async def cancelled(record: GiveUp) -> None:
        raise asyncio.CancelledError

    retry = Retry(2, backoff=constant(0), on_give_up=cancelled, clock=auto_clock)
    with pytest.raises(asyncio.CancelledError):
        await retry.run(Failing(auto_clock))


@pytest.mark.parametrize(
    ("options", "reason", "attempts"),
    [
        ({"max_elapsed": 2.5}, "max_elapsed", 3),
        ({"budget": "empty"}, "budget", 1),
    ],
)
async def test_every_way_of_giving_up_calls_the_hook_with_its_reason(
    auto_clock: FakeClock, options: dict[str, Any], reason: str, attempts: int
) -> None:
    if options.get("budget") == "empty":
        options = {"budget": RetryBudget(ratio=0, min_per_second=0, clock=auto_clock)}
    seen: list[GiveUp] = []
    retry = Retry(10, backoff=constant(1), on_give_up=seen.append, clock=auto_clock, **options)
    with pytest.raises(ConnectionError) as info:
        await retry.run(Failing(auto_clock))
    [record] = seen
    assert (record.reason, record.attempts) == (reason, attempts)
    assert record.note == info.value.__notes__[0]


async def test_the_deadline_gives_up_with_the_hook(auto_clock: FakeClock) -> None:
    seen: list[GiveUp] = []
    retry = Retry(10, backoff=constant(2), on_give_up=seen.append, clock=auto_clock)
    with deadline(5, clock=auto_clock), pytest.raises(ConnectionError):
        await retry.run(Failing(auto_clock))
    assert [(r.reason, r.attempts) for r in seen] == [("deadline", 3)]


def test_test_mode_gives_up_with_the_hook(auto_clock: FakeClock) -> None:
    seen: list[GiveUp] = []
    retry = Retry(5, backoff=constant(30), on_give_up=seen.append, clock=auto_clock)
    with set_testing(True), pytest.raises(ConnectionError):
        retry.run_sync(Failing(auto_clock).sync)
    assert [(r.reason, r.attempts) for r in seen] == [("test_mode", 1)]
    assert auto_clock.sleeps == []


async def test_a_single_attempt_retry_with_a_hook_still_tells_it(auto_clock: FakeClock) -> None:
    """attempts=1 is otherwise a pass-through; with a hook the failure is still reported."""
    seen: list[GiveUp] = []
    with pytest.raises(ConnectionError):
        await Retry(1, on_give_up=seen.append, clock=auto_clock).run(Failing(auto_clock))
    with pytest.raises(ConnectionError):
        Retry(1, on_give_up=seen.append, clock=auto_clock).run_sync(Failing(auto_clock).sync)
    assert [(r.reason, r.attempts) for r in seen] == [("attempts", 1), ("attempts", 1)]


async def test_the_hook_is_called_once_per_call_that_gives_up(auto_clock: FakeClock) -> None:
    seen: list[GiveUp] = []
    guarded = Retry(2, backoff=constant(0), on_give_up=seen.append, clock=auto_clock)(Failing(auto_clock))
    for _ in range(3):
        with pytest.raises(ConnectionError):
            await guarded()
    assert len(seen) == 3


@pytest.mark.parametrize("hook", [3, "dead_letter", GiveUp])
def test_a_bad_hook_fails_at_construction(hook: Any) -> None:
    with pytest.raises(TypeError, match="on_give_up must be a callable taking a GiveUp record or None"):
        Retry(on_give_up=hook)


def test_an_async_hook_cannot_serve_a_sync_function() -> None:
    async def hook(record: GiveUp) -> None: ...

    def work() -> None: ...

    retry = Retry(on_give_up=hook)
    with pytest.raises(TypeError, match=r"on_give_up=.* is async, but 'test_an_async_hook_.*work' is a synchronous"):
        retry(work)


def test_a_sync_hook_returning_a_coroutine_is_closed_not_leaked(
    auto_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[int] = []

    async def later() -> None:
        ran.append(1)

    retry = Retry(2, backoff=constant(0), on_give_up=lambda record: later(), clock=auto_clock)
    with caplog.at_level(logging.WARNING, logger="resilient.retry"), pytest.raises(ConnectionError):
        retry.run_sync(Failing(auto_clock).sync)
    assert ran == []
    assert "not awaited" in caplog.records[-1].getMessage()


class ChattyBudget:
    """A custom budget whose record_request returns something (the protocol says None)."""

    def record_request(self) -> float:
        return 123.0

    def try_spend(self) -> bool:
        return True


def test_what_a_custom_budgets_record_request_returns_is_ignored(auto_clock: FakeClock) -> None:
    with pytest.raises(ConnectionError) as info:
        Retry(2, backoff=constant(1), budget=ChattyBudget(), clock=auto_clock).run_sync(Failing(auto_clock).sync)
    assert info.value.__notes__ == ["resilient: Retry gave up after 2 attempts, 1.00 s after the first failure"]
    seen: list[GiveUp] = []
    retry = Retry(2, backoff=constant(1), budget=ChattyBudget(), on_give_up=seen.append, clock=auto_clock)
    with pytest.raises(ConnectionError):
        retry.run_sync(Failing(auto_clock).sync)
    assert seen[0].elapsed == 1.0  # from the clock's start of the first attempt, not from 123.0
