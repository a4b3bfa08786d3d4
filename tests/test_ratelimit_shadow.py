"""Shadow mode (``enforce=False``) and the store seam of RateLimiter / KeyedRateLimiter."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resilient import RateLimitedError
from resilient.events import REJECTED, WOULD_REJECT
from resilient.ratelimit import InMemoryRateStore, KeyedRateLimiter, RateLimiter, RateStore
from resilient.testing import FakeClock, recording


async def _echo(x: Any) -> Any:
    return x


def _arrivals(limiter: Any, clock: FakeClock, pattern: list[float]) -> list[bool]:
    """try_acquire at each gap of ``pattern``; whether each was allowed."""
    out = []
    for gap in pattern:
        clock.advance(gap)
        out.append(limiter.try_acquire().allowed)
    return out


# -- shadow mode ---------------------------------------------------------------


async def test_shadow_reject_mode_lets_every_call_through_and_reports_what_it_would_have_raised() -> None:
    clock = FakeClock()
    rl = RateLimiter(2, burst=2, mode="reject", clock=clock, name="api", enforce=False)
    guarded = rl(_echo)
    with recording() as rec:
        assert [await guarded(i) for i in range(5)] == [0, 1, 2, 3, 4]
    assert rl.rejected == 0
    assert rl.would_reject == 3
    assert rec.names() == [WOULD_REJECT] * 3
    event = rec.events[0]
    assert event.policy == "api"
    assert event.exception is not None
    assert event.exception.endswith("RateLimitedError")
    assert event.extras["reason"] == "rate_limited"
    assert event.extras["retry_after"] == pytest.approx(0.5)
    assert event.extras["backend"] == "memory"
    assert clock.sleeps == []


async def test_shadow_consumes_exactly_what_enforcing_would() -> None:
    # Same arrivals, one limiter enforcing and one in shadow mode: the shadow's
    # would_reject are exactly the enforcing one's rejections, call by call.
    pattern = [0.0, 0.0, 0.0, 0.1, 0.3, 0.0, 0.0, 0.6, 0.05, 0.0, 1.0, 0.0, 0.0, 0.0]
    c1, c2 = FakeClock(), FakeClock()
    enforcing = RateLimiter(3, burst=2, mode="reject", clock=c1)
    shadow = RateLimiter(3, burst=2, mode="reject", clock=c2, enforce=False)
    allowed = _arrivals(enforcing, c1, pattern)
    with recording() as rec:
        shadow_allowed = _arrivals(shadow, c2, pattern)
    assert all(shadow_allowed)
    assert shadow.would_reject == allowed.count(False) == enforcing.rejected > 0
    assert rec.names() == [WOULD_REJECT] * shadow.would_reject
    assert shadow.available == pytest.approx(enforcing.available)


async def test_shadow_wait_mode_never_delays_but_takes_its_turn() -> None:
    clock = FakeClock()
    rl = RateLimiter(1, burst=1, clock=clock, max_wait=1.5, enforce=False)
    guarded = rl(_echo)
    with recording() as rec:
        assert await guarded("a") == "a"  # goes now
        assert await guarded("b") == "b"  # would wait 1 s: takes that turn, goes now
        assert await guarded("c") == "c"  # would wait 2 s > max_wait: would be rejected
    assert clock.sleeps == []
    assert rl.would_reject == 1
    assert rec.names() == [WOULD_REJECT]
    assert rec.events[0].extras["retry_after"] == pytest.approx(2.0)
    # b's turn was taken: the bucket is where enforcing would have left it.
    with recording() as rec:
        assert rl.try_acquire().allowed
    assert rec.events[0].extras["retry_after"] == pytest.approx(2.0)


def test_shadow_try_acquire_answers_allowed_with_the_true_remaining() -> None:
    clock = FakeClock()
    rl = RateLimiter(1, burst=1, clock=clock, enforce=False)
    assert rl.try_acquire().allowed
    with recording() as rec:
        d = rl.try_acquire()
    assert d.allowed
    assert d.retry_after == 0.0
    assert d.remaining == 0
    assert rec.names() == [WOULD_REJECT]
    assert rec.events[0].extras["retry_after"] == pytest.approx(1.0)


def test_shadow_sync_wrapper_and_keyed_limiter() -> None:
    clock = FakeClock()
    kl = KeyedRateLimiter(1, burst=1, key=lambda user: user, mode="reject", clock=clock, enforce=False)
    work = kl(lambda user: user.upper())
    assert [work("a"), work("a"), work("b"), work("a")] == ["A", "A", "B", "A"]
    assert kl.would_reject == 2
    assert kl.rejected == 0


async def test_enforce_callable_is_read_at_each_refusal() -> None:
    clock = FakeClock()
    switch = {"on": False}
    calls = 0

    def enforce() -> bool:
        nonlocal calls
        calls += 1
        return switch["on"]

    rl = RateLimiter(1, burst=1, mode="reject", clock=clock, enforce=enforce)
    guarded = rl(_echo)
    assert await guarded(1) == 1
    assert calls == 0  # the success path never reads the switch
    assert await guarded(2) == 2  # shadow
    switch["on"] = True
    with pytest.raises(RateLimitedError):
        await guarded(3)
    assert (rl.would_reject, rl.rejected) == (1, 1)
    assert rl.status()["enforcing"] is True
    assert rl.status()["would_reject"] == 1


async def test_enforcing_rejection_still_emits_rejected() -> None:
    clock = FakeClock()
    rl = RateLimiter(1, burst=1, mode="reject", clock=clock)
    guarded = rl(_echo)
    await guarded(1)
    with recording() as rec, pytest.raises(RateLimitedError):
        await guarded(2)
    assert rec.names() == [REJECTED]


def test_enforce_must_be_a_bool_or_a_callable() -> None:
    with pytest.raises(TypeError, match="enforce"):
        RateLimiter(1, enforce="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="enforce"):
        KeyedRateLimiter(1, enforce=0)  # type: ignore[arg-type]


# -- the store seam ------------------------------------------------------------------


def test_store_option_is_checked_and_bound_once() -> None:
    with pytest.raises(TypeError, match="store"):
        RateLimiter(1, store=object())  # type: ignore[arg-type]
    store = InMemoryRateStore()
    RateLimiter(1, store=store)
    with pytest.raises(RuntimeError, match="already bound"):
        KeyedRateLimiter(1, store=store)
    assert isinstance(InMemoryRateStore(), RateStore)
    with pytest.raises(ValueError, match="max_keys"):
        InMemoryRateStore(max_keys=0)


def test_keyed_limiter_uses_the_given_store_bound() -> None:
    clock = FakeClock()
    kl = KeyedRateLimiter(1, burst=1, clock=clock, store=InMemoryRateStore(max_keys=2))
    for key in "abcde":
        kl.try_acquire(key)
    assert kl.keys == 2
    assert kl.max_keys == 2


async def test_atry_acquire_on_the_in_memory_store() -> None:
    clock = FakeClock()
    rl = RateLimiter(2, burst=2, clock=clock)
    kl = KeyedRateLimiter(1, burst=1, clock=clock)
    assert [(await rl.atry_acquire()).allowed for _ in range(3)] == [True, True, False]
    assert rl.try_acquire_sync().allowed is False
    assert (await kl.atry_acquire("k")).allowed
    assert not (await kl.atry_acquire("k")).allowed
    assert not kl.try_acquire_sync("k").allowed
    assert (rl.rejected, kl.rejected) == (2, 2)


async def test_a_refund_for_an_evicted_key_changes_no_other_bucket() -> None:
    # A waiter whose key was evicted while it slept gives nothing back to a fresh bucket.
    clock = FakeClock()
    kl = KeyedRateLimiter(1, burst=1, clock=clock, max_keys=1)
    await kl.acquire("a")
    waiter = asyncio.create_task(kl.acquire("a"))
    for _ in range(3):
        await asyncio.sleep(0)
    kl.try_acquire("b")  # evicts "a"
    kl.try_acquire("a")  # a fresh, full bucket for "a" (evicting "b"), now empty
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # The fresh bucket was not moved by the cancelled waiter's refund.
    assert kl.try_acquire("a").retry_after == pytest.approx(1.0)
