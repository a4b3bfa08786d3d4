"""The zero-configuration client's mechanisms, driven by FakeClock (the scenario figures are benchmarks)."""

from __future__ import annotations

import contextlib

import httpx
import pytest

import resilient
from resilient.httpx import AsyncResilientTransport, standard_pipeline
from resilient.testing import FakeClock


def client(handler: object, clock: FakeClock) -> httpx.AsyncClient:
    pipeline = standard_pipeline(clock=clock, total_timeout=None, attempt_timeout=None)
    transport = AsyncResilientTransport(pipeline, inner=httpx.MockTransport(handler))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://upstream.test")


class Host:
    """A scripted upstream whose answers take ``took`` seconds of fake time."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.status = 200
        self.took = 0.01
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.clock.advance(self.took)
        return httpx.Response(self.status)


async def test_quick_failures_are_retried_freely() -> None:
    clock = FakeClock(auto_advance=True)
    host = Host(clock)
    async with client(host, clock) as c:
        await c.get("/")  # the host's usual answer: 10 ms
        host.status = 503
        host.calls = 0
        for _ in range(5):
            assert (await c.get("/")).status_code == 503
    assert host.calls == 5 * 4  # every call got its three retries


@pytest.mark.parametrize("signal", [True, False])
async def test_slow_failures_of_a_queueing_host_are_not_retried_beyond_a_trickle(signal: bool) -> None:
    clock = FakeClock(auto_advance=True)
    host = Host(clock)
    pipeline = standard_pipeline(
        clock=clock,
        total_timeout=None,
        attempt_timeout=None,
        consecutive_failures=None,  # the breaker is not what this test is about
        overload_retry_ratio=0.0 if signal else None,
    )
    transport = AsyncResilientTransport(pipeline, inner=httpx.MockTransport(host))
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream.test") as c:
        for _ in range(20):
            await c.get("/")  # usual: 10 ms
        host.status, host.took = 503, 0.5  # shed after half a second in its queue: 50x the usual
        host.calls = 0
        for _ in range(15):
            assert (await c.get("/")).status_code == 503
    if signal:
        # A trickle: the one-a-second floor (its 10 s window may hold 10 at first).
        assert host.calls <= 15 + 10 + 15
    else:
        assert host.calls == 15 * 4


async def test_a_host_that_never_answered_well_is_not_judged_slow() -> None:
    clock = FakeClock(auto_advance=True)
    host = Host(clock)
    host.status, host.took = 503, 1.0
    async with client(host, clock) as c:
        for _ in range(3):
            await c.get("/")
    assert host.calls == 3 * 4


async def test_a_run_of_failures_opens_the_circuit_and_it_recovers_within_a_quarter_second() -> None:
    clock = FakeClock(auto_advance=True)
    host = Host(clock)
    async with client(host, clock) as c:
        for _ in range(200):
            await c.get("/")  # a long healthy period fills the ratio window with successes
        host.status, host.took = 503, 0.001
        outcomes = []
        for _ in range(10):
            try:
                outcomes.append((await c.get("/")).status_code)
            except resilient.CircuitOpenError:
                outcomes.append("open")
        assert outcomes[-1] == "open"  # opened on 20 attempts in a row, long before 100 failed calls
        start = clock.now()
        host.status = 200
        while True:
            with contextlib.suppress(resilient.CircuitOpenError):
                if (await c.get("/")).status_code == 200:
                    break
            clock.advance(0.01)
        assert clock.now() - start <= 0.25 + 0.05


@pytest.mark.parametrize("preset", ["resilient", "microsoft"])
async def test_a_429_retry_waits_for_retry_after(preset: str) -> None:
    clock = FakeClock(auto_advance=True)
    sent: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(clock.now())
        if len(sent) == 1:
            return httpx.Response(429, headers={"Retry-After": "1"})
        return httpx.Response(200)

    pipeline = standard_pipeline(preset, clock=clock, total_timeout=None, attempt_timeout=None)  # type: ignore[arg-type]
    transport = AsyncResilientTransport(pipeline, inner=httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream.test") as c:
        assert (await c.get("/")).status_code == 200
    assert sent[1] - sent[0] >= 1.0


@pytest.mark.parametrize(("status", "opens"), [(503, False), (504, True)])
async def test_a_queue_shedding_503_does_not_open_the_circuit_but_a_slow_504_does(status: int, opens: bool) -> None:
    # A 503 after 50x the usual answer time is an alive host shedding its queue:
    # opening the circuit would leave it idle while its queue drains. A slow 504
    # is a gateway waiting for a dead upstream.
    clock = FakeClock(auto_advance=True)
    host = Host(clock)
    async with client(host, clock) as c:
        for _ in range(20):
            await c.get("/")
        host.status, host.took = status, 0.5
        opened = False
        for _ in range(30):
            try:
                await c.get("/")
            except resilient.CircuitOpenError:
                opened = True
    assert opened is opens


async def test_the_usual_answer_time_creeps_up_slowly_under_queueing() -> None:
    clock = FakeClock(auto_advance=True)
    pipeline = standard_pipeline(clock=clock, total_timeout=None, attempt_timeout=None).build("http://h:80")
    signals = next(p for p in pipeline if p.policy_type == "host_signals")
    took = 0.01

    async def answer() -> httpx.Response:
        clock.advance(took)
        return httpx.Response(200)

    call = pipeline(answer)
    for _ in range(20):
        await call()
    assert signals.usual == pytest.approx(0.01)  # type: ignore[attr-defined]
    took = 0.4  # queueing: every answer now takes 40x longer
    for _ in range(100):
        await call()
    # 100 answers over 40 s of queueing: the usual time grew at most 2 % a second, far below 0.4 s.
    assert signals.usual <= 0.01 * (1 + 0.02) ** 41  # type: ignore[attr-defined]
    took = 0.001
    for _ in range(100):
        await call()
    assert signals.usual < 0.01  # type: ignore[attr-defined]  # and follows faster answers quickly


async def test_pace_adds_header_pacing_inside_the_retry() -> None:
    kinds = [p.policy_type for p in standard_pipeline(pace=True)("http://h:80")]
    assert kinds.index("header_pacing") > kinds.index("retry")
    assert kinds.index("header_pacing") > kinds.index("circuit_breaker")
    assert "header_pacing" not in [p.policy_type for p in standard_pipeline()("http://h:80")]
    with pytest.raises(TypeError, match="pace"):
        standard_pipeline(pace="yes")  # type: ignore[arg-type]
    clock = FakeClock(auto_advance=True)
    sent: list[float] = []

    def quota(request: httpx.Request) -> httpx.Response:
        sent.append(clock.now())
        left = max(0, 2 - len(sent))
        return httpx.Response(200, headers={"RateLimit": f"limit=10, remaining={left}, reset=10"})

    pipeline = standard_pipeline(clock=clock, total_timeout=None, attempt_timeout=None, pace=True)
    transport = AsyncResilientTransport(pipeline, inner=httpx.MockTransport(quota))
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream.test") as c:
        for _ in range(3):
            await c.get("/")
    assert sent[2] - sent[1] >= 5.0  # nothing left: the third request waited for the window's reset
