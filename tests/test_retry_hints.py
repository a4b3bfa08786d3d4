"""max_delay and delay hints: clamped by default (and said so in the event), or judged by max_hint."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from resilient import GiveUp, Retry, constant
from resilient.httpx import AsyncResilientTransport, http_retry
from resilient.testing import FakeClock, recording, set_testing


def failing(times: int = 100) -> Any:
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise ConnectionError("busy")
        return "ok"

    call.calls = calls  # type: ignore[attr-defined]
    return call


def hinting(*hints: Any) -> Any:
    it = iter(hints)
    return lambda outcome: next(it)


def test_by_default_a_long_hint_is_clamped_and_the_event_says_what_was_asked(auto_clock: FakeClock) -> None:
    call = failing(1)
    retry = Retry(3, backoff=constant(1), delay_hint=hinting(500.0), max_delay=10, clock=auto_clock)
    with recording() as events:
        assert retry.run_sync(call) == "ok"
    assert auto_clock.sleeps == [10]
    [event] = events.of("retry")
    assert event.duration == 10
    assert event.extras["retry_after"] == 500.0


def test_a_retry_without_a_hint_carries_no_retry_after(auto_clock: FakeClock) -> None:
    with recording() as events:
        Retry(2, backoff=constant(1), clock=auto_clock).run_sync(failing(1))
    assert "retry_after" not in events.of("retry")[0].extras


def test_with_max_hint_a_hint_is_waited_in_full_past_max_delay(auto_clock: FakeClock) -> None:
    call = failing(2)
    retry = Retry(3, backoff=constant(1), delay_hint=hinting(20.0, None), max_delay=10, max_hint=60, clock=auto_clock)
    assert retry.run_sync(call) == "ok"
    # The hint waited in full; without a hint the backoff, capped by max_delay as always.
    assert auto_clock.sleeps == [20.0, 1]


@pytest.mark.parametrize("hint", [120.0, math.inf, 10**400])
async def test_a_hint_longer_than_max_hint_gives_up_at_once(auto_clock: FakeClock, hint: Any) -> None:
    seen: list[GiveUp] = []
    call = failing()

    async def acall() -> str:
        return call()

    retry = Retry(
        5, delay_hint=lambda _: hint, max_delay=10, max_hint=60, on_give_up=seen.append, clock=auto_clock, name="d"
    )
    with pytest.raises(ConnectionError) as info:
        await retry.run(acall)
    assert len(call.calls) == 1
    assert auto_clock.sleeps == []  # not retried after 10 s, before the server said
    assert "the delay hint (" in info.value.__notes__[0]
    assert "is longer than max_hint (60 s)" in info.value.__notes__[0]
    [record] = seen
    assert record.reason == "hint"
    assert record.retry_after == (120.0 if hint == 120.0 else math.inf)


def test_a_long_hint_on_a_result_returns_the_result(auto_clock: FakeClock) -> None:
    retry = Retry(5, on_result=lambda r: r == 429, delay_hint=lambda r: 90, max_hint=30, clock=auto_clock)
    assert retry.run_sync(lambda: 429) == 429
    assert auto_clock.sleeps == []


def test_a_garbage_hint_with_max_hint_falls_back_to_the_capped_backoff(auto_clock: FakeClock) -> None:
    retry = Retry(2, backoff=constant(50), delay_hint=hinting("soon"), max_delay=10, max_hint=60, clock=auto_clock)
    assert retry.run_sync(failing(1)) == "ok"
    assert auto_clock.sleeps == [10]


def test_max_elapsed_still_bounds_an_honoured_hint(auto_clock: FakeClock) -> None:
    seen: list[GiveUp] = []
    retry = Retry(5, delay_hint=hinting(40.0), max_hint=60, max_elapsed=30, on_give_up=seen.append, clock=auto_clock)
    with pytest.raises(ConnectionError, match="busy") as info:
        retry.run_sync(failing())
    assert "max_elapsed" in info.value.__notes__[0]
    assert [(r.reason, r.retry_after) for r in seen] == [("max_elapsed", 40.0)]


def test_test_mode_still_gives_up_on_a_hint_longer_than_max_hint(auto_clock: FakeClock) -> None:
    seen: list[GiveUp] = []
    retry = Retry(5, delay_hint=lambda _: 120, max_hint=60, on_give_up=seen.append, clock=auto_clock)
    with set_testing(True, attempts=3), pytest.raises(ConnectionError):
        retry.run_sync(failing())
    assert [r.reason for r in seen] == ["hint"]


@pytest.mark.parametrize(("value", "exc"), [(-1, ValueError), (math.nan, ValueError), ("60", TypeError)])
def test_a_bad_max_hint_fails_at_construction(value: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="max_hint"):
        Retry(max_hint=value)


class Upstream:
    def __init__(self, retry_after: str) -> None:
        self.retry_after = retry_after
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls == 1:
            return httpx.Response(503, headers={"Retry-After": self.retry_after})
        return httpx.Response(200)


@pytest.mark.parametrize(
    ("retry_after", "status", "calls", "sleeps"),
    [("40", 200, 2, [40.0]), ("120", 503, 1, [])],
)
async def test_http_retry_max_hint_honours_or_gives_up_on_retry_after(
    retry_after: str, status: int, calls: int, sleeps: list[float]
) -> None:
    clock = FakeClock(auto_advance=True)
    upstream = Upstream(retry_after)
    retry = http_retry(3, backoff=constant(1), max_delay=30, max_hint=60, clock=clock)
    transport = AsyncResilientTransport(retry, inner=httpx.MockTransport(upstream))
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream.test") as client:
        response = await client.get("/x")
    assert (response.status_code, upstream.calls, clock.sleeps) == (status, calls, sleeps)
