"""A hypothesis state machine: CircuitBreaker against a simple reference model.

The model keeps every counted outcome as ``(time, failed)`` and recomputes
the window by brute force, tracks epochs, probes in flight and the break
duration; after every step the breaker's state, probes and counts must match.
Times are multiples of 0.5 s and the bucket width is 1 s, so the float
arithmetic is exact on both sides.

It runs against every store: :class:`InMemoryBreakerStore` (the default)
and :class:`RedisBreakerStore` on a private redis-server and on a private
Redis Cluster, the latter on the breaker's fake clock (``redis_time=False``)
and sending every success (``sync_interval=0``). The one difference the
model allows: the in-memory window's buckets start when the circuit closes,
Redis' at whole multiples of the bucket width.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from resilient.breaker import BreakerSnapshot, BreakerStore, CircuitBreaker, CircuitState
from resilient.errors import CircuitOpenError
from resilient.testing import FakeClock
from tests.redis_helpers import cluster_url, redis_url  # noqa: F401 - fixtures

CLOSED, OPEN, HALF_OPEN, ISOLATED = (
    CircuitState.CLOSED,
    CircuitState.OPEN,
    CircuitState.HALF_OPEN,
    CircuitState.ISOLATED,
)
BUCKETS = 10
SAMPLING = 10.0  # bucket width 1.0 s
SLOW = 2.0


@dataclass
class Model:
    consecutive: int | None
    both: bool  # consecutive set and the ratio window counts too: whichever trips first
    ratio: float
    throughput: int
    max_calls: int
    successes_needed: int
    growing: bool
    aligned_on_close: bool = True  # the window's buckets start when the circuit closes (else at 0)
    now: float = 0.0
    state: CircuitState = CLOSED
    epoch: int = 0
    until: float = math.inf
    failed_probes: int = 0
    break_duration: float = 0.0
    origin: float = 0.0  # when the circuit last closed: the buckets are aligned on it
    outcomes: list[tuple[float, bool]] = field(default_factory=list)
    run: int = 0  # failures in a row
    in_flight: int = 0
    probe_successes: int = 0

    def break_for(self, failed_probes: int) -> float:
        return float(2**failed_probes) if self.growing else 5.0

    def _bucket(self, t: float) -> int:
        return math.floor((t - self.origin) / (SAMPLING / BUCKETS))

    def window(self) -> tuple[int, int]:
        if self.consecutive is not None and not self.both:
            counted = self.outcomes
        else:
            current = self._bucket(self.now)
            counted = [o for o in self.outcomes if self._bucket(o[0]) > current - BUCKETS]
        return len(counted), sum(1 for _, failed in counted if failed)

    def _new_state(self, state: CircuitState) -> None:
        self.state = state
        self.epoch += 1
        self.in_flight = 0
        self.probe_successes = 0

    def open(self, failed_probes: int) -> None:
        self.break_duration = self.break_for(failed_probes)
        self.failed_probes = failed_probes
        self.until = self.now + self.break_duration
        self._new_state(OPEN)

    def close(self) -> None:
        self.outcomes = []
        self.run = 0
        if self.aligned_on_close:
            self.origin = self.now
        self.until = math.inf
        self.failed_probes = 0
        self._new_state(CLOSED)

    def isolate(self) -> None:
        self.until = math.inf
        self.failed_probes = 0
        self._new_state(ISOLATED)

    def half_open(self) -> None:
        self.until = self.now + self.break_duration
        self._new_state(HALF_OPEN)
        self.in_flight = 1

    def admit(self) -> int | None:
        """The epoch of the admitted call, or None if rejected."""
        if self.state is CLOSED:
            return self.epoch
        if self.state is OPEN and self.now >= self.until:
            self.half_open()
            return self.epoch
        if self.state is HALF_OPEN:
            if self.in_flight < self.max_calls:
                self.in_flight += 1
                return self.epoch
            if self.now >= self.until:
                self.half_open()
                return self.epoch
        return None

    def success(self, epoch: int) -> None:
        if epoch != self.epoch:
            return
        if self.state is CLOSED:
            self.outcomes.append((self.now, False))
            self.run = 0
        elif self.state is HALF_OPEN:
            self.in_flight -= 1
            self.probe_successes += 1
            if self.probe_successes >= self.successes_needed:
                self.close()

    def failure(self, epoch: int) -> None:
        if epoch != self.epoch:
            return
        if self.state is HALF_OPEN:
            self.open(self.failed_probes + 1)
        elif self.state is CLOSED:
            self.outcomes.append((self.now, True))
            self.run += 1
            if self.consecutive is not None and self.run >= self.consecutive:
                self.open(0)
            elif self.consecutive is None or self.both:
                calls, failures = self.window()
                if calls >= self.throughput and failures / calls >= self.ratio:
                    self.open(0)

    def release(self, epoch: int) -> None:
        if epoch == self.epoch and self.state is HALF_OPEN and self.in_flight > 0:
            self.in_flight -= 1


_names = itertools.count()


class BreakerMachine(RuleBasedStateMachine):
    #: The store under test (``None``: the breaker's default, in memory), made per example.
    make_store: Callable[[str], BreakerStore] | None = None
    #: Whether the store's window buckets start when the circuit closes.
    aligned_on_close = True

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.calls: list[tuple[BreakerSnapshot, int]] = []  # (permit, model epoch)

    @initialize(
        consecutive=st.one_of(st.none(), st.integers(1, 4)),
        both=st.booleans(),
        ratio=st.sampled_from([0.25, 0.5, 1.0]),
        throughput=st.integers(1, 6),
        max_calls=st.integers(1, 3),
        successes_needed=st.integers(1, 3),
        growing=st.booleans(),
    )
    def setup(
        self,
        consecutive: int | None,
        both: bool,
        ratio: float,
        throughput: int,
        max_calls: int,
        successes_needed: int,
        growing: bool,
    ) -> None:
        both = both and consecutive is not None
        self.model = Model(
            consecutive, both, ratio, throughput, max_calls, successes_needed, growing, self.aligned_on_close
        )
        name = f"model-{next(_names)}"
        self.breaker = CircuitBreaker(
            name,
            store=None if self.make_store is None else self.make_store(name),
            consecutive_failures=consecutive,
            failure_ratio=ratio if consecutive is None or both else None,
            minimum_throughput=throughput,
            sampling_duration=SAMPLING,
            slow_call_duration=SLOW,
            half_open_max_calls=max_calls,
            half_open_successes=successes_needed,
            break_duration=(lambda n, _last: float(2**n)) if growing else 5.0,
            clock=self.clock,
        )

    @rule(n=st.integers(1, 4))
    def start_calls(self, n: int) -> None:
        for _ in range(n):
            self.start_call()

    @rule(n=st.integers(1, 6), failed=st.booleans())
    def complete_calls(self, n: int, failed: bool) -> None:
        """Calls that start and end at once (the common case), to move the window quickly."""
        for _ in range(n):
            if self.start_call():
                permit, epoch = self.calls.pop()
                if failed:
                    self.breaker.record_failure(permit)
                    self.model.failure(epoch)
                else:
                    self.breaker.record_success(permit)
                    self.model.success(epoch)

    def start_call(self) -> bool:
        expected = self.model.admit()
        try:
            permit = self.breaker.allow()
        except CircuitOpenError as exc:
            rejected: CircuitOpenError | None = exc
        else:
            rejected = None
        if rejected is not None:
            assert expected is None, "the breaker rejected a call the model admits"
            if self.model.state is ISOLATED:
                assert rejected.retry_after is None
            elif self.model.state is OPEN:
                assert rejected.retry_after == max(0.0, self.model.until - self.model.now)
            return False
        assert expected is not None, f"the breaker admitted a call the model rejects ({self.model.state})"
        self.calls.append((permit, expected))
        return True

    @precondition(lambda self: self.calls)
    @rule(
        index=st.integers(0, 50),
        outcome=st.sampled_from(["success", "failure", "release", "slow", "quick"]),
    )
    def finish_call(self, index: int, outcome: str) -> None:
        permit, epoch = self.calls.pop(index % len(self.calls))
        if outcome == "success":
            self.breaker.record_success(permit)
            self.model.success(epoch)
        elif outcome == "quick":
            self.breaker.record_success(permit, duration=SLOW / 2)
            self.model.success(epoch)
        elif outcome == "slow":
            self.breaker.record_success(permit, duration=SLOW)
            self.model.failure(epoch)
        elif outcome == "failure":
            self.breaker.record_failure(permit)
            self.model.failure(epoch)
        else:
            self.breaker.release(permit)
            self.model.release(epoch)

    @rule(dt=st.sampled_from([0.5, 1.0, 2.0, 3.5, 5.0, 9.5, 10.0, 30.0]))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)
        self.model.now += dt

    # Manual control is rarer than traffic: it would otherwise hide the automatic transitions.
    @rule(dice=st.integers(0, 5))
    def isolate(self, dice: int) -> None:
        if dice == 0:
            self.breaker.isolate()
            self.model.isolate()

    @rule(dice=st.integers(0, 3))
    def reset(self, dice: int) -> None:
        if dice == 0:
            self.breaker.reset()
            self.model.close()

    @invariant()
    def agrees_with_the_model(self) -> None:
        if not hasattr(self, "model"):
            return
        m = self.model
        metrics = self.breaker.metrics
        assert metrics.state is m.state
        assert metrics.probes_in_flight == m.in_flight
        assert metrics.probes_in_flight <= m.max_calls
        assert metrics.probe_successes == m.probe_successes
        snap = self.snapshot()
        assert snap.until == m.until
        assert snap.failed_probes == m.failed_probes
        if m.state is CLOSED:
            assert (metrics.calls, metrics.failures) == m.window()
            assert metrics.consecutive_failures == m.run
        if m.state is OPEN:
            assert snap.break_duration == m.break_duration

    def snapshot(self) -> BreakerSnapshot:
        store = self.breaker.store
        # Until its first call asks Redis, a RedisBreakerStore shows a gate (HALF_OPEN) as its
        # snapshot, so that the call goes through acquire(); the state it holds is behind it.
        return getattr(store, "_snap", None) or store.snapshot


_SETTINGS = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
BreakerMachine.TestCase.settings = _SETTINGS
TestBreakerModel = BreakerMachine.TestCase


def _on_redis(url: str) -> type[BreakerMachine]:
    from resilient.redis import RedisBreakerStore

    def make_store(name: str) -> BreakerStore:
        return RedisBreakerStore(url, name=name, timeout=5.0, sync_interval=0, redis_time=False)

    return type(
        "RedisBreakerMachine", (BreakerMachine,), {"make_store": staticmethod(make_store), "aligned_on_close": False}
    )


@pytest.mark.redis
def test_redis_store_matches_the_model(redis_url: str) -> None:  # noqa: F811
    run_state_machine_as_test(_on_redis(redis_url), settings=_SETTINGS)


@pytest.mark.redis
def test_redis_store_on_a_cluster_matches_the_model(cluster_url: str) -> None:  # noqa: F811
    run_state_machine_as_test(_on_redis(cluster_url), settings=settings(_SETTINGS, max_examples=40))


def _stores(request: pytest.FixtureRequest) -> Callable[[str], BreakerStore | None]:
    if request.param == "memory":
        return lambda _name: None
    from resilient.redis import RedisBreakerStore

    url = request.getfixturevalue("redis_url")
    return lambda name: RedisBreakerStore(url, name=name, timeout=5.0, sync_interval=0, redis_time=False)


store_kind = pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])(_stores)


def test_a_free_probe_slot_past_the_half_open_period_joins_it(store_kind: Callable[[str], BreakerStore | None]) -> None:
    """Half-open past its end with a probe slot free: the call joins the probes in flight (their outcomes count).

    Only a full half-open period that outlived its end gives its probes up (a new epoch). The Redis
    script used to start a new period at once, dropping the outcome of the probe still running.
    """
    clock = FakeClock()
    name = f"model-{next(_names)}"
    breaker = CircuitBreaker(
        name, consecutive_failures=1, break_duration=5.0, half_open_max_calls=2, clock=clock, store=store_kind(name)
    )
    breaker.record_failure(breaker.allow())
    clock.advance(5.0)
    first = breaker.allow()  # the first probe; the period ends 5 s from now
    clock.advance(6.0)
    second = breaker.allow()
    assert second is first  # the same period: both probes count
    assert breaker.metrics.probes_in_flight == 2
    breaker.record_success(first)
    assert breaker.state is CLOSED


def test_isolating_clears_the_failed_probes(store_kind: Callable[[str], BreakerStore | None]) -> None:
    """An isolated circuit starts its count of failed probes again (the Redis script used to keep it)."""
    clock = FakeClock()
    name = f"model-{next(_names)}"
    breaker = CircuitBreaker(
        name, consecutive_failures=1, break_duration=lambda n, _: 2.0**n, clock=clock, store=store_kind(name)
    )
    breaker.record_failure(breaker.allow())
    clock.advance(1.0)
    breaker.record_failure(breaker.allow())  # a failed probe
    assert breaker.store.snapshot.failed_probes == 1
    breaker.isolate()
    assert breaker.store.snapshot.failed_probes == 0
