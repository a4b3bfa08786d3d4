"""RateLimiter and KeyedRateLimiter: rates on a FakeClock, wait/reject, max_wait, deadline, keys."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient import RateLimitedError, deadline
from resilient.events import REJECTED
from resilient.ratelimit import InMemoryRateStore, KeyedRateLimiter, RateDecision, RateLimiter, RateLimitKeyError
from resilient.testing import FakeClock, recording


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- configuration -----------------------------------------------------------


@pytest.mark.parametrize("cls", [RateLimiter, KeyedRateLimiter])
@pytest.mark.parametrize(
    ("args", "kwargs", "param"),
    [
        ((0,), {}, "rate"),
        ((-1,), {}, "rate"),
        ((float("nan"),), {}, "rate"),
        ((float("inf"),), {}, "rate"),
        ((1, 0), {}, "per"),
        ((1, -2), {}, "per"),
        ((1,), {"burst": 0}, "burst"),
        ((1,), {"mode": "queue"}, "mode"),
        ((1,), {"max_wait": -1}, "max_wait"),
        ((1,), {"max_wait": float("nan")}, "max_wait"),
    ],
)
def test_bad_values_name_the_parameter(cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ValueError, match=param):
        cls(*args, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [({"burst": 1.5}, "burst"), ({"burst": True}, "burst"), ({"max_wait": "1"}, "max_wait")],
)
def test_bad_types_name_the_parameter(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(TypeError, match=param):
        RateLimiter(1, **kwargs)


def test_keyed_bad_options() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        KeyedRateLimiter(1, max_keys=0)
    with pytest.raises(TypeError, match="key"):
        KeyedRateLimiter(1, key="user")  # type: ignore[arg-type]


def test_defaults() -> None:
    rl = RateLimiter(10)
    assert (rl.rate, rl.per, rl.burst, rl.mode, rl.max_wait) == (10.0, 1.0, 10, "wait", None)
    assert RateLimiter(0.5).burst == 1
    assert RateLimiter(2.7, 60).burst == 2


def test_tokens_out_of_range(clock: FakeClock) -> None:
    rl = RateLimiter(5, clock=clock)
    with pytest.raises(ValueError, match="tokens"):
        rl.try_acquire(0)
    with pytest.raises(ValueError, match="tokens"):
        rl.try_acquire(6)
    with pytest.raises(TypeError, match="tokens"):
        rl.try_acquire(1.0)  # type: ignore[arg-type]


# -- try_acquire -------------------------------------------------------------


def test_try_acquire_burst_then_refill(clock: FakeClock) -> None:
    rl = RateLimiter(10, 1.0, burst=5, clock=clock)  # one token per 0.1 s
    decisions = [rl.try_acquire() for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    assert decisions[0] == RateDecision(True, 0.0, 5, 4, pytest.approx(0.1))
    last = decisions[5]
    assert last.limit == 5
    assert last.remaining == 0
    assert last.retry_after == pytest.approx(0.1)
    assert last.reset == pytest.approx(0.5)
    clock.advance(0.1)
    assert rl.try_acquire().allowed
    assert not rl.try_acquire().allowed
    clock.advance(10)
    d = rl.try_acquire(5)
    assert d.allowed
    assert d.remaining == 0
    assert d.reset == pytest.approx(0.5)
    assert rl.rejected == 2


def test_rate_over_long_run_is_exact(clock: FakeClock) -> None:
    rl = RateLimiter(100, 60, burst=1, clock=clock)  # 100 per minute, no burst
    allowed = 0
    for _ in range(6000):  # one simulated minute in 10 ms steps
        if rl.try_acquire().allowed:
            allowed += 1
        clock.advance(0.01)
    assert allowed == 100


def test_try_acquire_never_waits_in_wait_mode(clock: FakeClock) -> None:
    rl = RateLimiter(1, burst=1, mode="wait", clock=clock)
    assert rl.try_acquire().allowed
    d = rl.try_acquire()
    assert not d.allowed
    assert d.retry_after == pytest.approx(1.0)
    assert clock.sleeps == []


def test_try_acquire_emits_rejected_only_on_rejection(clock: FakeClock) -> None:
    rl = RateLimiter(1, burst=1, clock=clock, name="api")
    with recording() as rec:
        rl.try_acquire()
        assert rec.events == []
        rl.try_acquire()
    assert rec.names() == [REJECTED]
    assert rec.events[0].policy == "api"
    assert rec.events[0].policy_type == "rate_limiter"


def test_available_and_status(clock: FakeClock) -> None:
    rl = RateLimiter(4, burst=4, clock=clock, name="s")
    assert rl.available == 4
    rl.try_acquire(3)
    assert rl.available == pytest.approx(1)
    clock.advance(0.5)
    assert rl.available == pytest.approx(3)
    st = rl.status()
    assert st["burst"] == 4
    assert st["available"] == pytest.approx(3)
    assert "RateLimiter(rate=4" in repr(rl)


# -- reject mode -------------------------------------------------------------


async def test_reject_mode_raises_with_retry_after(clock: FakeClock) -> None:
    rl = RateLimiter(2, burst=2, mode="reject", clock=clock, name="api")
    calls = 0

    @rl
    async def f() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert await f() == 1
    assert await f() == 2
    with recording() as rec, pytest.raises(RateLimitedError) as info:
        await f()
    assert calls == 2
    assert info.value.retry_after == pytest.approx(0.5)
    assert info.value.policy == "api"
    assert "'api'" in str(info.value)
    assert rec.names() == [REJECTED]
    assert rec.events[0].extras["retry_after"] == pytest.approx(0.5)
    clock.advance(0.5)
    assert await f() == 3
    with pytest.raises(RateLimitedError):
        await rl.acquire()


def test_reject_mode_sync(clock: FakeClock) -> None:
    rl = RateLimiter(1, burst=1, mode="reject", clock=clock)
    assert rl.run_sync(lambda: 1) == 1
    with pytest.raises(RateLimitedError):
        rl.run_sync(lambda: 1)
    clock.advance(1)
    rl.acquire_sync()


# -- wait mode ---------------------------------------------------------------


async def test_wait_mode_waits_its_turn_in_order(clock: FakeClock) -> None:
    rl = RateLimiter(10, burst=1, clock=clock)  # one per 0.1 s
    done: list[tuple[int, float]] = []

    @rl
    async def f(i: int) -> None:
        done.append((i, clock.now()))

    tasks = [asyncio.create_task(f(i)) for i in range(4)]
    await _settle()
    assert done == [(0, 0.0)]
    for _ in range(3):
        clock.advance(0.1 + 1e-9)  # float sums: 0.1 + 0.1 + 0.1 != 0.3
        await _settle()
    await asyncio.gather(*tasks)
    assert [i for i, _ in done] == [0, 1, 2, 3]
    assert [t for _, t in done] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert rl.rejected == 0


async def test_wait_mode_with_auto_advance(auto_clock: FakeClock) -> None:
    rl = RateLimiter(5, burst=1, clock=auto_clock)
    for _ in range(5):
        await rl.acquire()
    assert auto_clock.now() == pytest.approx(0.8)
    assert auto_clock.sleeps == pytest.approx([0.2, 0.2, 0.2, 0.2])


async def test_max_wait_rejects_at_once(clock: FakeClock) -> None:
    rl = RateLimiter(1, burst=1, max_wait=1.5, clock=clock, name="mw")
    await rl.acquire()
    waiter = asyncio.create_task(rl.acquire())  # waits 1 s: allowed
    await _settle()
    assert not waiter.done()
    with pytest.raises(RateLimitedError, match="max_wait") as info:
        await rl.acquire()  # would wait 2 s
    assert info.value.retry_after == pytest.approx(2.0)
    assert clock.sleeps == [1.0]  # the rejected call never slept
    clock.advance(1)
    await waiter


async def test_max_wait_zero_means_never_wait(clock: FakeClock) -> None:
    rl = RateLimiter(1, burst=1, max_wait=0, clock=clock)
    await rl.acquire()
    with pytest.raises(RateLimitedError):
        await rl.acquire()


async def test_wait_never_outlives_the_deadline(clock: FakeClock) -> None:
    rl = RateLimiter(1, burst=1, clock=clock)

    @rl
    async def f() -> str:
        return "ok"

    assert await f() == "ok"
    with deadline(0.5, clock=clock), pytest.raises(RateLimitedError, match="deadline"):
        await f()
    assert clock.sleeps == []
    with deadline(5, clock=clock):
        task = asyncio.create_task(f())
        await _settle()
        clock.advance(1)
        assert await task == "ok"


async def test_cancelled_waiter_gives_its_tokens_back(clock: FakeClock) -> None:
    rl = RateLimiter(1, burst=1, clock=clock)
    await rl.acquire()
    first = asyncio.create_task(rl.acquire())
    second = asyncio.create_task(rl.acquire())
    await _settle()
    assert sorted(clock.sleeps) == [1.0, 2.0]
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    # The cancelled turn is given back: a newcomer takes it (not the second's, as it once did).
    third = asyncio.create_task(rl.acquire())
    await _settle()
    assert clock.sleeps[-1] == pytest.approx(1.0)
    clock.advance(1)
    await third
    assert not second.done()
    clock.advance(1)
    await second
    assert rl.try_acquire().allowed is False


async def test_cancellation_fuzz_returns_every_token() -> None:
    """Thousands of waits cancelled at random: afterwards the bucket is as if they never were."""
    import random

    rng = random.Random(7)
    clock = FakeClock()
    rl = RateLimiter(1000, burst=10, clock=clock)
    tasks = [asyncio.create_task(rl.acquire()) for _ in range(2000)]
    await _settle()
    for t in tasks:
        if rng.random() < 0.5:
            t.cancel()
    await _settle()
    survivors = [t for t in tasks if not t.cancelled()]
    clock.advance(10)
    await asyncio.gather(*survivors)
    # 10 s later the bucket is full again: exactly burst tokens available.
    assert rl.available == pytest.approx(10)


def test_wait_mode_sync_sleeps_on_the_clock(clock: FakeClock) -> None:
    rl = RateLimiter(2, burst=1, clock=clock)

    @rl
    def f() -> float:
        return clock.now()

    assert [f() for _ in range(3)] == pytest.approx([0.0, 0.5, 1.0])


def test_sync_with_threads_respects_the_rate() -> None:
    rl = RateLimiter(1000, burst=1, mode="reject")
    ok = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal ok
        for _ in range(200):
            if rl.try_acquire().allowed:
                with lock:
                    ok += 1

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    assert 1 <= ok <= 1 + 1000 * elapsed + 1


# -- keyed -------------------------------------------------------------------


async def test_keyed_buckets_are_independent(clock: FakeClock) -> None:
    kl = KeyedRateLimiter(1, burst=2, mode="reject", key=lambda user, **_: user, clock=clock, name="per-user")

    @kl
    async def f(user: str, *, payload: int = 0) -> str:
        return user

    assert await f("a") == "a"
    assert await f("a", payload=1) == "a"
    with pytest.raises(RateLimitedError):
        await f("a")
    assert await f("b") == "b"
    assert kl.keys == 2
    clock.advance(1)
    assert await f("a") == "a"


def test_keyed_try_acquire(clock: FakeClock) -> None:
    kl = KeyedRateLimiter(10, burst=3, clock=clock)
    assert [kl.try_acquire("ip1").allowed for _ in range(4)] == [True, True, True, False]
    d = kl.try_acquire(("ip", 2), tokens=3)
    assert d == RateDecision(True, 0.0, 3, 0, pytest.approx(0.3))
    assert kl.status()["keys"] == 2


async def test_keyed_wait_mode(clock: FakeClock) -> None:
    kl = KeyedRateLimiter(1, burst=1, key=lambda k: k, clock=clock)
    await kl.acquire("x")
    t = asyncio.create_task(kl.run(_echo, "x"))
    await _settle()
    assert not t.done()
    assert await kl.run(_echo, "y") == "y"  # another key is not held up
    clock.advance(1)
    assert await t == "x"


async def _echo(value: str) -> str:
    return value


async def test_key_function_that_raises_rejects_the_call() -> None:
    def bad_key(user: Any) -> str:
        raise LookupError("no user")

    called = False

    async def f(user: Any) -> None:
        nonlocal called
        called = True

    kl = KeyedRateLimiter(10, key=bad_key, name="tenants")
    with pytest.raises(RateLimitKeyError, match=r"'tenants'.*LookupError: no user") as info:
        await kl(f)(1)
    assert isinstance(info.value.__cause__, LookupError)
    assert info.value.policy == "tenants"
    assert not called
    with pytest.raises(RateLimitKeyError, match="tenants"):
        kl(lambda user: None)(1)


async def test_unhashable_key_rejects_the_call() -> None:
    called = False

    async def f(user: Any) -> None:
        nonlocal called
        called = True

    kl = KeyedRateLimiter(10, key=lambda user: user, name="users")
    with pytest.raises(RateLimitKeyError, match=r"'users'.*not hashable"):
        await kl(f)({"id": 1})
    with pytest.raises(RateLimitKeyError, match="not hashable"):
        kl(lambda user: None)(["a"])
    with pytest.raises(RateLimitKeyError, match="not hashable"):
        kl.try_acquire(["a"])
    assert not called
    assert kl.keys == 0
    assert await kl(f)("ok") is None  # the lock was released


def test_keyed_wrap_needs_a_key_function() -> None:
    with pytest.raises(TypeError, match="key="):
        KeyedRateLimiter(1)(lambda: None)


def test_million_distinct_keys_stay_bounded() -> None:
    clock = FakeClock()
    kl = KeyedRateLimiter(1, burst=1, max_keys=1000, clock=clock)
    try_acquire = kl.try_acquire
    for i in range(1_000_000):
        try_acquire(i)
    assert kl.keys == 1000
    assert len(kl._buckets) <= kl.max_keys
    # The most recent keys are the ones kept.
    assert not kl.try_acquire(999_999).allowed
    assert kl.try_acquire(0).allowed


def test_keyed_lru_keeps_the_active_keys(clock: FakeClock) -> None:
    kl = KeyedRateLimiter(1, burst=1, max_keys=2, clock=clock)
    assert kl.try_acquire("hot").allowed
    assert kl.try_acquire("a").allowed
    assert not kl.try_acquire("hot").allowed  # touches "hot"
    assert kl.try_acquire("b").allowed  # evicts "a", the least recently used
    assert not kl.try_acquire("hot").allowed
    assert kl.keys == 2


# -- keys whose __hash__ / __eq__ raise (issue 14, item 6) -------------------


class _BadHash:
    """A key whose hash raises something other than TypeError."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __hash__(self) -> int:
        raise self.exc


class _BadEq:
    """Keys that all hash alike and cannot be compared: the second one raises in the lookup."""

    def __hash__(self) -> int:
        return 42

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        raise ValueError("cannot compare")


def _lock_is_free(kl: KeyedRateLimiter) -> bool:
    """Whether another thread can still use the limiter (a held lock would block it for good)."""
    done = threading.Event()

    def probe() -> None:
        kl.try_acquire("probe")
        done.set()

    # A daemon thread: if the lock is held, the probe blocks forever and must not hold up the exit.
    threading.Thread(target=probe, daemon=True).start()
    return done.wait(5)


async def test_a_key_whose_hash_raises_is_a_key_error_and_frees_the_lock() -> None:
    kl = KeyedRateLimiter(1000, key=lambda k: k, name="users")
    guarded = kl(_echo)
    for call in (
        lambda k: guarded(k),
        lambda k: kl.acquire(k),
    ):
        with pytest.raises(RateLimitKeyError, match=r"'users'.*ValueError") as info:
            await call(_BadHash(ValueError("no hash")))
        assert isinstance(info.value.__cause__, ValueError)
        assert _lock_is_free(kl)
    for sync_call in (kl.try_acquire, kl.acquire_sync, kl(lambda k: k)):
        with pytest.raises(RateLimitKeyError, match="ValueError"):
            sync_call(_BadHash(ValueError("no hash")))
        assert _lock_is_free(kl)
    assert await asyncio.wait_for(guarded("ok"), 5) == "ok"


async def test_a_key_whose_eq_raises_is_a_key_error_and_frees_the_lock() -> None:
    kl = KeyedRateLimiter(1000, key=lambda k: k, name="users")
    guarded = kl(_echo)
    first = _BadEq()
    assert kl.try_acquire(first).allowed  # stored: later keys of the same hash compare with it
    with pytest.raises(RateLimitKeyError, match="ValueError: cannot compare"):
        await guarded(_BadEq())
    assert _lock_is_free(kl)
    with pytest.raises(RateLimitKeyError, match="ValueError: cannot compare"):
        kl.try_acquire(_BadEq())
    assert _lock_is_free(kl)
    assert kl.try_acquire(first).allowed  # the bucket map is intact


async def test_a_key_whose_hash_raises_a_base_exception_propagates_it_and_frees_the_lock() -> None:
    kl = KeyedRateLimiter(1000, key=lambda k: k)
    with pytest.raises(KeyboardInterrupt):
        await kl(_echo)(_BadHash(KeyboardInterrupt()))
    assert _lock_is_free(kl)
    with pytest.raises(KeyboardInterrupt):
        kl.try_acquire(_BadHash(KeyboardInterrupt()))
    assert _lock_is_free(kl)


# -- a cancelled waiter in the middle of the queue (issue 14, item 14) -------


async def test_a_cancelled_middle_waiter_frees_its_slot_for_the_next_caller(clock: FakeClock) -> None:
    rl = RateLimiter(1, burst=1, clock=clock)  # one call per second
    ran: dict[str, float] = {}

    async def call(name: str) -> None:
        await rl.acquire()
        ran[name] = clock.now()

    await call("a")  # t=0
    tasks = {name: asyncio.create_task(call(name)) for name in "bcd"}  # turns at t=1, 2, 3
    await _settle()
    tasks["c"].cancel()
    await _settle()
    tasks["e"] = asyncio.create_task(call("e"))  # arrives after d: takes c's freed turn
    await _settle()
    for _ in range(3):
        clock.advance(1)
        await _settle()
    await asyncio.gather(*(t for n, t in tasks.items() if n != "c"))
    assert ran == {"a": 0.0, "b": 1.0, "e": 2.0, "d": 3.0}
    # At t=3 the next turn is after d's: no turn was lost, none handed out twice.
    assert rl.try_acquire().allowed is False
    clock.advance(1)
    assert rl.try_acquire().allowed is True


async def test_a_cancelled_last_waiter_gives_back_the_freed_turns_before_it(clock: FakeClock) -> None:
    rl = RateLimiter(1, burst=1, clock=clock)
    await rl.acquire()
    b, c, d = (asyncio.create_task(rl.acquire()) for _ in range(3))  # turns at t=1, 2, 3
    await _settle()
    c.cancel()
    d.cancel()
    await _settle()
    # Both freed turns are given back: a newcomer waits for the turn after b's.
    e = asyncio.create_task(rl.acquire())
    await _settle()
    assert clock.sleeps[-1] == pytest.approx(2.0)
    clock.advance(2)
    await asyncio.gather(b, e)


def test_a_freed_turn_in_the_past_is_not_reused(clock: FakeClock) -> None:
    """A freed turn can only be taken before it comes: reusing it later would exceed the rate."""
    rl = RateLimiter(1, burst=1, clock=clock)

    async def scenario() -> list[float]:
        ran: list[float] = []

        async def call() -> None:
            await rl.acquire()
            ran.append(clock.now())

        await call()  # t=0
        b, c, d = (asyncio.create_task(call()) for _ in range(3))  # turns at t=1, 2, 3
        await _settle()
        c.cancel()
        for _ in range(2):
            clock.advance(1)
            await _settle()
        clock.advance(0.5)  # t=2.5: c's turn (t=2) has gone by
        e = asyncio.create_task(call())
        await _settle()
        for _ in range(3):
            clock.advance(0.5)
            await _settle()
        clock.advance(1)
        await _settle()
        await asyncio.gather(b, d, e)
        return ran

    assert asyncio.run(scenario()) == [0.0, 1.0, 3.0, 4.0]


_STEP = 0.125  # a binary fraction: fake times stay exact


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    burst=st.integers(1, 3),
    ops=st.lists(
        st.one_of(
            st.just(("arrive", 0)),
            st.tuples(st.just("cancel"), st.integers(0, 30)),
            st.tuples(st.just("tick"), st.integers(1, 12)),
        ),
        max_size=40,
    ),
)
def test_waiters_cancelled_anywhere_never_exceed_the_rate(burst: int, ops: list[tuple[str, int]]) -> None:
    """Whatever waiters are cancelled, the calls that ran conform to the bucket: never two turns at once."""

    async def scenario() -> list[float]:
        clock = FakeClock()
        rl = RateLimiter(1, burst=burst, clock=clock)
        ran: list[float] = []
        waiters: list[asyncio.Task[None]] = []

        async def call() -> None:
            await rl.acquire()
            ran.append(clock.now())

        for op, n in ops:
            if op == "arrive":
                waiters.append(asyncio.create_task(call()))
            elif op == "cancel" and waiters:
                waiters[n % len(waiters)].cancel()
            else:
                for _ in range(n):
                    clock.advance(_STEP)
                    await _settle()
            await _settle()
        while not all(w.done() for w in waiters):
            clock.advance(_STEP)
            await _settle()
        return ran

    ran = sorted(asyncio.run(scenario()))
    # GCRA conformance with unit cost: calls i..j span at least (j - i - burst + 1) turns.
    for i in range(len(ran)):
        for j in range(i + 1, len(ran)):
            assert ran[j] - ran[i] >= j - i - burst + 1 - 1e-9, (i, j, ran)


class _OnceBrokenClock(FakeClock):
    """A custom clock whose first reading is not a number."""

    broken = True

    def now(self) -> float:
        if self.broken:
            self.broken = False
            return None  # type: ignore[return-value]
        return super().now()


@pytest.mark.parametrize("keyed", [False, True], ids=["RateLimiter", "KeyedRateLimiter"])
async def test_a_clock_reading_that_is_not_a_number_never_leaves_the_lock_held(keyed: bool) -> None:
    clock = _OnceBrokenClock()
    limiter: Any = KeyedRateLimiter(10, key=lambda k: k, clock=clock) if keyed else RateLimiter(10, clock=clock)
    guarded = limiter(_echo)
    with pytest.raises(TypeError):
        await guarded("a")
    done = threading.Event()
    probe = (lambda: limiter.try_acquire("probe")) if keyed else limiter.try_acquire
    threading.Thread(target=lambda: (probe(), done.set()), daemon=True).start()
    assert done.wait(5), "the limiter's lock was left held"
    assert await guarded("b") == "b"


class _NotInlined(InMemoryRateStore):
    """The in-memory store under another type: the shell calls its acquire() for every call."""


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 4)), min_size=1, max_size=30),
    rate=st.sampled_from([1, 5, 20]),
    burst=st.integers(1, 5),
    keyed=st.booleans(),
)
def test_the_inlined_fast_path_decides_as_the_store_does(
    steps: list[tuple[float, int]], rate: int, burst: int, keyed: bool
) -> None:
    # The local shell inlines the store's "the bucket has room" step; a twin over a store of
    # another type goes through acquire() every time: both must admit the same calls.
    async def run(store: InMemoryRateStore | None) -> list[bool]:
        clock = FakeClock()
        limiter: RateLimiter | KeyedRateLimiter
        if keyed:
            limiter = KeyedRateLimiter(rate, burst=burst, mode="reject", key=lambda k: k, clock=clock, store=store)
        else:
            limiter = RateLimiter(rate, burst=burst, mode="reject", clock=clock, store=store)

        @limiter
        async def call(k: int | None) -> None:
            pass

        admitted = []
        for i, (gap, calls) in enumerate(steps):
            clock.advance(gap)
            for j in range(calls):
                try:
                    await call((0, 1, 2, None)[(i + j) % 4])  # None: the store's single bucket
                    admitted.append(True)
                except RateLimitedError:
                    admitted.append(False)
        return admitted

    inlined = asyncio.run(run(None))
    assert inlined == asyncio.run(run(_NotInlined()))


async def test_a_key_of_none_is_one_bucket_on_the_fast_path_too() -> None:
    # The store files key None in its single bucket; the inlined step looked it up among the keyed
    # buckets, so a full bucket fell through to the empty single one: twice the burst.
    limiter = KeyedRateLimiter(1, burst=1, mode="reject", key=lambda k: k, clock=FakeClock())

    @limiter
    async def call(k: object) -> None:
        pass

    admitted = []
    for _ in range(4):
        try:
            await call(None)
            admitted.append(True)
        except RateLimitedError:
            admitted.append(False)
    assert admitted == [True, False, False, False]
    assert limiter.keys == 0
