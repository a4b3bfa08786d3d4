"""http_retry(on=..., max_elapsed=..., on_give_up=..., statuses=None) and the hints it reads (httpx.MockTransport)."""

from __future__ import annotations

import inspect
from typing import Any

import httpx
import pytest

from resilient import CircuitBreaker, CircuitOpenError, GiveUp, Pipeline, RateLimitedError, constant
from resilient.httpx import TRANSIENT_STATUSES, AsyncResilientTransport, http_retry, retry_after_hint
from resilient.testing import FakeClock


class Upstream:
    """Answers from a script of statuses or exceptions; the last step repeats."""

    def __init__(self, *script: int | Exception, headers: dict[str, str] | None = None) -> None:
        self.script = list(script)
        self.headers = headers or {}
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        return httpx.Response(step, headers=self.headers)


def client(upstream: Upstream, pipeline: Any) -> httpx.AsyncClient:
    transport = AsyncResilientTransport(pipeline, inner=httpx.MockTransport(upstream))
    return httpx.AsyncClient(transport=transport, base_url="http://upstream.test")


class Flaky(Exception):
    """Not an httpx error: retried only when ``on`` says so."""


async def test_on_adds_exceptions_to_the_transient_ones() -> None:
    upstream = Upstream(Flaky("blip"), httpx.ConnectError("refused"), 200)
    async with client(upstream, http_retry(3, backoff=constant(0), on=Flaky)) as c:
        assert (await c.get("/x")).status_code == 200
    assert upstream.calls == 3  # the extra exception and the transient one were both retried

    upstream = Upstream(Flaky("blip"), 200)
    async with client(upstream, http_retry(3, backoff=constant(0))) as c:
        with pytest.raises(Flaky):
            await c.get("/x")
    assert upstream.calls == 1


async def test_on_takes_a_predicate_and_still_never_resends_a_post() -> None:
    retry = http_retry(3, backoff=constant(0), on=lambda exc: isinstance(exc, Flaky))
    upstream = Upstream(Flaky("blip"), 200)
    async with client(upstream, retry) as c:
        with pytest.raises(Flaky):
            await c.post("/x", content=b"event")
    assert upstream.calls == 1
    upstream = Upstream(Flaky("blip"), 200)
    async with client(upstream, retry) as c:
        response = await c.post("/x", content=b"event", headers={"Idempotency-Key": "evt-1"})
    assert response.status_code == 200
    assert upstream.calls == 2


def test_a_bad_on_fails_at_construction() -> None:
    with pytest.raises(TypeError, match="on must be"):
        http_retry(on="Flaky")  # type: ignore[arg-type]


async def test_max_elapsed_bounds_the_whole_horizon() -> None:
    clock = FakeClock(auto_advance=True)
    upstream = Upstream(503)
    async with client(upstream, http_retry(100, backoff=constant(1), max_elapsed=2.5, clock=clock)) as c:
        response = await c.get("/x")
    assert response.status_code == 503  # the last response, handed back as it is
    assert upstream.calls == 3
    assert clock.sleeps == [1, 1]


def test_a_bad_max_elapsed_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="max_elapsed"):
        http_retry(max_elapsed=-1)


async def test_on_give_up_receives_the_last_response() -> None:
    clock = FakeClock(auto_advance=True)
    seen: list[GiveUp] = []
    upstream = Upstream(503, headers={"Retry-After": "4"})
    async with client(upstream, http_retry(1, max_delay=10, on_give_up=seen.append, clock=clock)) as c:
        response = await c.get("/x")
    [record] = seen
    assert record.result is response
    assert record.result.status_code == 503
    assert record.retry_after == 4.0
    assert record.attempts == 2


def test_statuses_default_is_none_meaning_the_transient_set() -> None:
    parameter = inspect.signature(http_retry).parameters["statuses"]
    assert parameter.default is None
    assert "frozenset" not in str(inspect.signature(http_retry))
    assert "Ellipsis" not in str(inspect.signature(http_retry))
    # Passing the set itself is the same as the default (it shares the default predicate).
    assert http_retry(statuses=TRANSIENT_STATUSES)._on_result is http_retry()._on_result


async def test_statuses_none_retries_the_transient_statuses() -> None:
    upstream = Upstream(429, 502, 200)
    async with client(upstream, http_retry(3, backoff=constant(0), statuses=None)) as c:
        assert (await c.get("/x")).status_code == 200
    assert upstream.calls == 3


def test_retry_after_hint_reads_a_rejection() -> None:
    assert retry_after_hint(CircuitOpenError("open", retry_after=3.5)) == 3.5
    assert retry_after_hint(RateLimitedError("slow down", retry_after=0.25)) == 0.25
    assert retry_after_hint(CircuitOpenError("open")) is None
    assert retry_after_hint(ConnectionError("x")) is None


async def test_a_retry_that_retries_an_open_circuit_waits_out_its_retry_after() -> None:
    clock = FakeClock(auto_advance=True)
    breaker = CircuitBreaker(consecutive_failures=1, break_duration=5.0, clock=clock)
    upstream = Upstream(httpx.ConnectError("refused"), 200)
    pipeline = Pipeline(http_retry(3, backoff=constant(0.5), on=CircuitOpenError, max_delay=30, clock=clock), breaker)
    async with client(upstream, pipeline) as c:
        assert (await c.get("/x")).status_code == 200
    # Refused (breaker opens), 0.5 s backoff, rejected by the open breaker: wait
    # its retry_after (5 s from the opening, 4.5 s left), then the probe succeeds.
    assert upstream.calls == 2
    assert clock.sleeps == [0.5, pytest.approx(4.5)]
