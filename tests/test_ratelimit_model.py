"""Every RateStore against one reference model of GCRA, on a fake time.

The model is the textbook GCRA step on a dict of theoretical arrival times:
``wait = max(tat, now) + cost - now - tau``; go now when ``wait <= 0``,
reserve (move the TAT) when ``wait <= max_wait``, else refuse and change
nothing. The stores under test: :class:`InMemoryRateStore` and
:class:`RedisRateStore` on a private redis-server, the latter told to take
the time from the limiter's clock (``redis_time=False``) so that both run on
the same fake time. Times and intervals are binary fractions of a second
(whole microseconds on the Redis side), so the arithmetic is exact on every
side.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient.ratelimit import InMemoryRateStore, RateConfig, RateDecision, RateStore
from resilient.testing import FakeClock
from tests.redis_helpers import cluster_url, redis_url  # noqa: F401 - fixtures

EPS = 1e-9
KEYS = (None, "a", "b:{c}")


@dataclass
class Model:
    """The reference: one float per key, nothing else."""

    interval: float
    burst: int
    tat: dict[object, float] = field(default_factory=dict)

    @property
    def tau(self) -> float:
        return self.burst * self.interval

    def step(self, key: object, cost: float, now: float, max_wait: float) -> float:
        tat = max(self.tat.get(key, -math.inf), now)
        new = tat + cost
        wait = new - now - self.tau
        if wait <= EPS:
            self.tat[key] = new
            return 0.0
        if wait <= max_wait:
            self.tat[key] = new
        return wait

    def decision(self, key: object, cost: float, now: float) -> RateDecision:
        wait = self.step(key, cost, now, 0.0)
        full_in = max(0.0, self.tat.get(key, -math.inf) - now)
        left = int((self.tau - full_in) / self.interval + EPS)
        return RateDecision(wait == 0.0, wait, self.burst, max(0, min(self.burst, left)), full_in)

    def give_back(self, key: object, cost: float) -> None:
        self.tat[key] -= cost


_names = itertools.count()


def _memory(_: str) -> InMemoryRateStore:
    return InMemoryRateStore()


def _redis_factory(url: str) -> Callable[[str], RateStore]:
    from resilient.redis import RedisRateStore

    return lambda name: RedisRateStore(url, name=name, timeout=5.0, redis_time=False)


_RATES = [(1.0, 1.0), (2.0, 1.0), (4.0, 1.0), (8.0, 2.0)]  # intervals 1, 0.5, 0.25, 0.25 s

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.integers(1, 16)),  # eighths of a second
        st.tuples(
            st.just("acquire"),
            st.sampled_from(KEYS),
            st.integers(1, 4),
            st.sampled_from([0.0, 0.25, 1.0, 3.0, math.inf]),
        ),
        st.tuples(st.just("try"), st.sampled_from(KEYS), st.integers(1, 4)),
        st.tuples(st.just("cancel"), st.sampled_from(KEYS), st.integers(1, 4)),
    ),
    max_size=40,
)


def _check(make: Callable[[str], RateStore], rate: tuple[float, float], burst: int, ops: list[tuple[Any, ...]]) -> None:
    clock = FakeClock(start=1000.0)
    config = RateConfig(rate[0], rate[1], burst, name=f"model-{next(_names)}", clock=clock)
    store = make(config.name or "")
    store.bind(config)
    model = Model(config.interval, burst)
    for op in ops:
        now = clock.now()
        if op[0] == "advance":
            clock.advance(op[1] / 8)
        elif op[0] == "acquire" or op[0] == "cancel":
            key, tokens = op[1], min(op[2], burst)
            max_wait = op[3] if op[0] == "acquire" else math.inf
            cost = config.cost(tokens)
            want = model.step(key, cost, now, max_wait)
            got = store.acquire(key, cost, now, max_wait)
            assert got == pytest.approx(want, abs=1e-6), (op, want, got)
            if op[0] == "cancel" and 0 < got <= max_wait:
                # The waiter of the last reservation is cancelled before anything else happens.
                store.refund(key, cost, now, got)
                model.give_back(key, cost)
        else:
            key, tokens = op[1], min(op[2], burst)
            cost = config.cost(tokens)
            want_d = model.decision(key, cost, now)
            got_d = store.try_acquire(key, cost, now)
            assert got_d.allowed == want_d.allowed, (op, want_d, got_d)
            assert got_d.retry_after == pytest.approx(want_d.retry_after, abs=1e-6)
            assert got_d.remaining == want_d.remaining
            assert got_d.reset == pytest.approx(want_d.reset, abs=1e-6)
            assert got_d.limit == burst
        if op[0] != "advance" and op[1] is None:
            tokens_now = store.tokens(None, clock.now())
            assert tokens_now == pytest.approx(config.tokens(model.tat.get(None, -math.inf) - clock.now()), abs=1e-6)


_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(rate=st.sampled_from(_RATES), burst=st.integers(1, 4), ops=_OPS)
def test_in_memory_store_matches_the_model(rate: tuple[float, float], burst: int, ops: list[tuple[Any, ...]]) -> None:
    _check(_memory, rate, burst, ops)


@pytest.mark.redis
@_SETTINGS
@given(rate=st.sampled_from(_RATES), burst=st.integers(1, 4), ops=_OPS)
def test_redis_store_matches_the_model(
    redis_url: str,  # noqa: F811
    rate: tuple[float, float],
    burst: int,
    ops: list[tuple[Any, ...]],
) -> None:
    _check(_redis_factory(redis_url), rate, burst, ops)


def test_the_model_admits_the_textbook_sequence() -> None:
    # The reference itself, by hand: 2 per second, burst 2, on a quiet bucket.
    m = Model(0.5, 2)
    assert [m.step(None, 0.5, 0.0, 0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert m.step(None, 0.5, 0.0, 1.0) == 0.5  # reserved
    assert m.step(None, 0.5, 0.0, 0.0) == 1.0  # behind the reservation


@pytest.mark.redis
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rate=st.sampled_from(_RATES), burst=st.integers(1, 4), ops=_OPS)
def test_redis_store_on_a_cluster_matches_the_model(
    cluster_url: str,  # noqa: F811
    rate: tuple[float, float],
    burst: int,
    ops: list[tuple[Any, ...]],
) -> None:
    _check(_redis_factory(cluster_url), rate, burst, ops)
