"""Shadow mode (``enforce=False``) and the effective state of CircuitBreaker."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from resilient import CircuitBreaker, CircuitOpenError
from resilient.breaker import BreakerSnapshot, CircuitState
from resilient.events import REJECTED, WOULD_REJECT
from resilient.testing import FakeClock, recording


class Down(Exception):
    pass


async def _afail() -> None:
    raise Down


def _fail() -> None:
    raise Down


async def _aok() -> str:
    return "ok"


def _ok() -> str:
    return "ok"


def _breaker(clock: FakeClock, **kw: Any) -> CircuitBreaker:
    return CircuitBreaker(consecutive_failures=2, break_duration=5, clock=clock, name="up", **kw)


async def test_shadow_async_lets_calls_through_and_reports_what_it_would_have_raised() -> None:
    clock = FakeClock()
    cb = _breaker(clock, enforce=False)
    fail, ok = cb(_afail), cb(_aok)
    for _ in range(2):
        with pytest.raises(Down):
            await fail()
    assert cb.state is CircuitState.OPEN
    clock.advance(1)
    with recording() as rec:
        assert await ok() == "ok"  # would be rejected: runs
        with pytest.raises(Down):  # the caller sees the function's own error, never CircuitOpenError
            await fail()
    assert cb.would_reject == 2
    assert rec.names() == [WOULD_REJECT, WOULD_REJECT]
    event = rec.events[0]
    assert event.policy == "up"
    assert event.exception is not None
    assert event.exception.endswith("CircuitOpenError")
    assert event.extras["reason"] == "circuit_open"
    assert event.extras["state"] == "open"
    assert event.extras["retry_after"] == pytest.approx(4.0)
    # The calls let through were not counted: the circuit stays as an enforcing one would be.
    assert cb.state is CircuitState.OPEN
    assert cb.store.snapshot.until == pytest.approx(5.0)
    status = cb.status()
    assert status["would_reject"] == 2
    assert status["enforcing"] is False


def test_shadow_sync_success_while_open_does_not_close_the_circuit() -> None:
    clock = FakeClock()
    cb = _breaker(clock, enforce=False)
    fail, ok = cb(_fail), cb(_ok)
    for _ in range(2):
        with pytest.raises(Down):
            fail()
    for _ in range(5):
        assert ok() == "ok"
    assert cb.state is CircuitState.OPEN
    assert cb.would_reject == 5
    clock.advance(5)
    assert ok() == "ok"  # the probe an enforcing breaker would admit: counted, closes
    assert cb.state is CircuitState.CLOSED
    assert cb.would_reject == 5


async def test_shadow_half_open_extra_calls_are_not_probes() -> None:
    clock = FakeClock()
    cb = _breaker(clock, enforce=False)
    for _ in range(2):
        with pytest.raises(Down):
            await cb(_afail)()
    clock.advance(5)
    probe = await cb.aallow()  # the one probe slot
    assert probe.state is CircuitState.HALF_OPEN
    with recording() as rec:
        extra = await cb.aallow()  # would be rejected: slots taken
    assert rec.events[0].extras["state"] == "half_open"
    cb.record_failure(extra)  # dropped: it was not a probe
    assert cb.state is CircuitState.HALF_OPEN
    cb.record_success(probe)
    assert cb.state is CircuitState.CLOSED


def test_shadow_guard_sync_and_async_isolated() -> None:
    clock = FakeClock()
    cb = _breaker(clock, enforce=False)
    cb.isolate()
    with recording() as rec, cb.guard() as g:
        g.failed()
    assert cb.would_reject == 1
    assert "retry_after" not in rec.events[0].extras  # isolated: unknown
    assert cb.state is CircuitState.ISOLATED


async def test_shadow_async_guard_drops_the_outcome() -> None:
    clock = FakeClock()
    cb = _breaker(clock, enforce=False)
    cb.trip()
    with pytest.raises(Down):
        async with cb.guard():
            raise Down
    assert cb.would_reject == 1
    assert cb.state is CircuitState.OPEN


async def test_enforce_callable_is_read_only_when_a_call_would_be_rejected() -> None:
    clock = FakeClock()
    reads = []

    def switch() -> bool:
        reads.append(1)
        return len(reads) > 1  # the first refusal is only reported, the next enforced

    cb = _breaker(clock, enforce=switch)
    ok = cb(_aok)
    for _ in range(10):
        assert await ok() == "ok"
    assert reads == []  # the success path never reads it
    cb.trip()
    with recording() as rec:
        assert await ok() == "ok"
        with pytest.raises(CircuitOpenError):
            await ok()
    assert rec.names() == [WOULD_REJECT, REJECTED]
    assert len(reads) == 2
    assert cb.would_reject == 1


def test_enforce_switch_that_raises_enforces() -> None:
    def broken() -> bool:
        raise RuntimeError("flag service down")

    cb = _breaker(FakeClock(), enforce=broken)
    cb.trip()
    with pytest.raises(CircuitOpenError):
        cb(_ok)()


@pytest.mark.parametrize("bad", ["no", 0, None, bool])
def test_enforce_must_be_a_bool_or_a_callable(bad: Any) -> None:
    with pytest.raises(TypeError, match="enforce"):
        CircuitBreaker(enforce=bad)


def test_effective_state_reads_an_elapsed_break_as_half_open() -> None:
    clock = FakeClock()
    cb = _breaker(clock)
    cb.trip()
    assert cb.effective_state is CircuitState.OPEN
    assert cb.status()["state"] == "open"
    clock.advance(5)
    assert cb.state is CircuitState.OPEN  # the stored state moves when a call probes
    assert cb.effective_state is CircuitState.HALF_OPEN
    assert cb.status()["state"] == "half_open"
    cb.isolate()
    clock.advance(100)
    assert cb.effective_state is CircuitState.ISOLATED


# -- the twin: a shadow breaker decides call by call as an enforcing one -------


class TwinMachine(RuleBasedStateMachine):
    """Two breakers, one enforcing and one in shadow mode, fed the same calls and outcomes.

    Each call is offered to both; the shadow must let it through exactly when
    the enforcing one rejects it (a ``would_reject``), and every outcome,
    including those of the calls the shadow let through, is recorded on
    both: the two circuits must stay identical.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.calls: list[tuple[BreakerSnapshot | None, BreakerSnapshot]] = []
        self.rejections = 0

    @initialize(
        consecutive=st.one_of(st.none(), st.integers(1, 3)),
        throughput=st.integers(1, 4),
        max_calls=st.integers(1, 3),
        successes=st.integers(1, 2),
        growing=st.booleans(),
    )
    def setup(self, consecutive: int | None, throughput: int, max_calls: int, successes: int, growing: bool) -> None:
        def make(enforce: bool) -> CircuitBreaker:
            return CircuitBreaker(
                consecutive_failures=consecutive,
                failure_ratio=0.5,
                minimum_throughput=throughput,
                sampling_duration=10.0,
                half_open_max_calls=max_calls,
                half_open_successes=successes,
                break_duration=(lambda n, _last: float(2**n)) if growing else 5.0,
                clock=self.clock,
                enforce=enforce,
            )

        self.enforcing = make(True)
        self.shadow = make(False)

    @rule(n=st.integers(1, 3))
    def start(self, n: int) -> None:
        for _ in range(n):
            before = self.shadow.would_reject
            shadow_permit = self.shadow.allow()  # never raises
            try:
                permit: BreakerSnapshot | None = self.enforcing.allow()
            except CircuitOpenError:
                permit = None
                self.rejections += 1
            assert (self.shadow.would_reject == before + 1) == (permit is None)
            self.calls.append((permit, shadow_permit))

    @precondition(lambda self: self.calls)
    @rule(index=st.integers(0, 20), outcome=st.sampled_from(["success", "failure", "release"]))
    def finish(self, index: int, outcome: str) -> None:
        permit, shadow_permit = self.calls.pop(index % len(self.calls))
        for breaker, p in ((self.enforcing, permit), (self.shadow, shadow_permit)):
            if p is None:
                continue  # rejected: the enforcing breaker's caller never ran it
            if outcome == "success":
                breaker.record_success(p)
            elif outcome == "failure":
                breaker.record_failure(p)
            else:
                breaker.release(p)

    @rule(dt=st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0]))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule(dice=st.integers(0, 5))
    def isolate_or_reset(self, dice: int) -> None:
        if dice == 0:
            self.enforcing.isolate()
            self.shadow.isolate()
        elif dice == 1:
            self.enforcing.reset()
            self.shadow.reset()

    @invariant()
    def twins_agree(self) -> None:
        if not hasattr(self, "shadow"):
            return
        assert self.shadow.would_reject == self.rejections
        assert self.shadow.metrics == self.enforcing.metrics
        a, b = self.shadow.store.snapshot, self.enforcing.store.snapshot
        assert (a.state, a.since, a.until, a.failed_probes, a.break_duration) == (
            b.state,
            b.since,
            b.until,
            b.failed_probes,
            b.break_duration,
        )
        assert self.shadow.effective_state is self.enforcing.effective_state


TwinMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestShadowTwin = TwinMachine.TestCase
