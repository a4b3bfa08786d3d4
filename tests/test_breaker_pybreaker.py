"""from_pybreaker: a real pybreaker.CircuitBreaker as a policy, async included."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pybreaker
import pytest

from resilient.breaker import from_pybreaker
from resilient.breaker.pybreaker_adapter import PyBreakerOpenError, PyBreakerPolicy
from resilient.errors import CircuitOpenError
from resilient.events import EXTRA_REASON, EXTRA_STATE, REJECTED
from resilient.policy import Pipeline
from resilient.retry import Retry
from resilient.testing import FakeClock, recording


class Boom(Exception):
    pass


class Business(Exception):
    pass


async def boom() -> None:
    await asyncio.sleep(0)
    raise Boom


async def ok() -> str:
    await asyncio.sleep(0)
    return "ok"


class Recorder(pybreaker.CircuitBreakerListener):
    def __init__(self) -> None:
        self.log: list[str] = []

    def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
        self.log.append("before")

    def failure(self, cb: Any, exc: BaseException) -> None:
        self.log.append(f"failure:{type(exc).__name__}")

    def success(self, cb: Any) -> None:
        self.log.append("success")

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.log.append(f"{old_state.name if old_state else None}->{new_state.name}")


async def test_async_failures_are_recorded_after_the_await() -> None:
    cb = pybreaker.CircuitBreaker(fail_max=3, reset_timeout=60)
    guarded = from_pybreaker(cb)(boom)
    for _ in range(2):
        with pytest.raises(Boom):
            await guarded()
    assert cb.fail_counter == 2
    assert cb.current_state == "closed"
    # pybreaker's own decorator on an async def counts the coroutine object as a success:
    # the adapter is what makes the awaited outcome count.
    with pytest.raises(PyBreakerOpenError) as info:
        await guarded()
    assert cb.current_state == "open"
    assert isinstance(info.value.__cause__, Boom)


async def test_rejections_are_both_circuit_open_errors_and_pybreaker_errors() -> None:
    cb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=30, name="legacy")
    policy = from_pybreaker(cb)
    with pytest.raises(pybreaker.CircuitBreakerError):
        await policy.run(boom)
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1

    with recording() as rec, pytest.raises(CircuitOpenError) as info:
        await policy.run(counted)
    assert calls == 0
    assert isinstance(info.value, pybreaker.CircuitBreakerError)
    assert info.value.policy == "legacy"
    assert info.value.retry_after is not None
    assert 25 < info.value.retry_after <= 30
    assert rec.names() == [REJECTED]
    # The same event as CircuitBreaker's rejections.
    assert rec.events[0].extras[EXTRA_REASON] == "circuit_open"
    assert rec.events[0].extras[EXTRA_STATE] == "open"
    assert rec.events[0].exception == "resilient.errors.CircuitOpenError"


async def test_throw_new_error_on_trip_false_reraises_the_original() -> None:
    cb = pybreaker.CircuitBreaker(fail_max=1, throw_new_error_on_trip=False)
    with pytest.raises(Boom):
        await from_pybreaker(cb).run(boom)
    assert cb.current_state == "open"


async def test_listeners_see_the_real_outcomes() -> None:
    rec = Recorder()
    cb = pybreaker.CircuitBreaker(fail_max=2, reset_timeout=0.05, listeners=[rec])
    policy = from_pybreaker(cb)
    assert await policy.run(ok) == "ok"
    for _ in range(2):
        with pytest.raises((Boom, pybreaker.CircuitBreakerError)):
            await policy.run(boom)
    await asyncio.sleep(0.06)
    assert await policy.run(ok) == "ok"
    assert rec.log == [
        "before",
        "success",
        "before",
        "failure:Boom",
        "before",
        "failure:Boom",
        "closed->open",
        "open->half-open",
        "before",
        "half-open->closed",
        "success",
    ]


async def test_excluded_exceptions_count_as_successes() -> None:
    cb = pybreaker.CircuitBreaker(fail_max=2, exclude=[Business])

    async def business() -> None:
        raise Business

    policy = from_pybreaker(cb)
    with pytest.raises(Boom):
        await policy.run(boom)
    with pytest.raises(Business):
        await policy.run(business)
    assert cb.fail_counter == 0
    assert cb.current_state == "closed"


async def test_half_open_admits_one_trial_at_a_time() -> None:
    cb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=0.05, success_threshold=2)
    policy = from_pybreaker(cb)
    with pytest.raises(pybreaker.CircuitBreakerError):
        await policy.run(boom)
    await asyncio.sleep(0.06)
    entered = 0

    async def trial() -> str:
        nonlocal entered
        entered += 1
        await asyncio.sleep(0.01)
        return "ok"

    results = await asyncio.gather(*(policy.run(trial) for _ in range(10)), return_exceptions=True)
    assert entered == 1
    assert sum(isinstance(r, PyBreakerOpenError) for r in results) == 9
    assert cb.current_state == "half-open"  # success_threshold=2
    assert await policy.run(trial) == "ok"
    assert cb.current_state == "closed"


async def test_a_cancelled_trial_is_not_a_failure_and_frees_the_slot() -> None:
    cb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=0.05)
    policy = from_pybreaker(cb)
    with pytest.raises(pybreaker.CircuitBreakerError):
        await policy.run(boom)
    await asyncio.sleep(0.06)

    async def hang() -> None:
        await asyncio.Event().wait()

    task = asyncio.create_task(policy.run(hang))
    await asyncio.sleep(0)
    with pytest.raises(PyBreakerOpenError):
        await policy.run(ok)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cb.current_state == "half-open"
    assert await policy.run(ok) == "ok"
    assert cb.current_state == "closed"


def test_sync_functions() -> None:
    cb = pybreaker.CircuitBreaker(fail_max=2, reset_timeout=0.05)
    policy = from_pybreaker(cb)

    def sync_boom() -> None:
        raise Boom

    guarded = policy(sync_boom)
    with pytest.raises(Boom):
        guarded()
    with pytest.raises(PyBreakerOpenError):
        guarded()
    with pytest.raises(CircuitOpenError):
        policy.run_sync(lambda: 1)
    time.sleep(0.06)
    assert policy.run_sync(lambda: 1) == 1
    assert cb.current_state == "closed"


async def test_in_a_pipeline_behind_retry(auto_clock: FakeClock) -> None:
    cb = pybreaker.CircuitBreaker(fail_max=2, reset_timeout=60)
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise Boom

    guarded = Pipeline(Retry(5, on=Boom, clock=auto_clock), from_pybreaker(cb))(flaky)
    with pytest.raises(pybreaker.CircuitBreakerError):
        await guarded()
    assert calls == 2


def test_one_adapter_per_breaker_and_type_check() -> None:
    cb = pybreaker.CircuitBreaker(name="inventory")
    policy = from_pybreaker(cb)
    assert from_pybreaker(cb) is policy
    assert isinstance(policy, PyBreakerPolicy)
    assert policy.name == "inventory"
    assert policy.state == "closed"
    status = policy.status()
    assert status["state"] == "closed"
    assert status["fail_max"] == 5
    assert status["implementation"] == "pybreaker"
    with pytest.raises(TypeError, match="pybreaker"):
        from_pybreaker(object())


# -- issue 14: trial slot, event loop, stale outcomes ---------------------------------


class FlakyBeforeCall(pybreaker.CircuitBreakerListener):
    """A listener whose ``before_call`` raises while ``broken`` is set."""

    def __init__(self) -> None:
        self.broken = False

    def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
        if self.broken:
            raise RuntimeError("listener down")


def opened(cb: pybreaker.CircuitBreaker) -> None:
    """Open ``cb`` with one failure (its ``fail_max`` must be 1)."""
    with pytest.raises(pybreaker.CircuitBreakerError):
        cb.call(lambda: 1 / 0)
    assert cb.current_state == "open"


async def test_a_raising_before_call_listener_during_the_trial_frees_the_trial() -> None:
    listener = FlakyBeforeCall()
    # reset_timeout=0: the next call after the opening is the half-open trial.
    cb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=0, listeners=[listener])
    policy = from_pybreaker(cb)
    opened(cb)
    listener.broken = True
    calls = 0

    async def counted() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    with pytest.raises(RuntimeError, match="listener down"):
        await policy.run(counted)
    assert calls == 0  # as with cb.call: the listener's error fails the call before it runs
    assert cb.current_state == "half-open"
    listener.broken = False
    # Plain pybreaker recovers on the next call; so must the adapter.
    assert await policy.run(counted) == "ok"
    assert cb.current_state == "closed"


def test_a_raising_before_call_listener_during_the_trial_frees_the_trial_sync() -> None:
    listener = FlakyBeforeCall()
    cb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=0, listeners=[listener])
    policy = from_pybreaker(cb)
    opened(cb)
    listener.broken = True
    with pytest.raises(RuntimeError, match="listener down"):
        policy.run_sync(lambda: "ok")
    listener.broken = False
    assert policy.run_sync(lambda: "ok") == "ok"
    assert cb.current_state == "closed"


class LegacyCall:
    """Legacy code in a real thread: ``cb.call(slow)``, pybreaker holding its lock throughout.

    ``slow`` returns once the test sets ``release``, which the test does from the event loop
    after the loop made progress; it gives up after ``bound`` seconds so a stalled loop fails
    the test instead of hanging it. ``released_by_loop`` says which happened.
    """

    def __init__(self, cb: pybreaker.CircuitBreaker, bound: float = 5.0) -> None:
        self.cb = cb
        self.inside = threading.Event()
        self.release = threading.Event()
        self.released_by_loop: bool | None = None
        self._bound = bound
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _slow(self) -> bool:
        self.inside.set()
        return self.release.wait(self._bound)

    def _run(self) -> None:
        self.released_by_loop = self.cb.call(self._slow)

    async def start(self) -> None:
        self._thread.start()
        assert await asyncio.to_thread(self.inside.wait, self._bound)

    def join(self) -> None:
        self._thread.join(self._bound)
        assert not self._thread.is_alive()


class HeldLock:
    """Another thread holding pybreaker's lock, as ``cb.call`` does for a whole call, without a state change."""

    def __init__(self, cb: pybreaker.CircuitBreaker) -> None:
        self.cb = cb
        self.inside = threading.Event()
        self.release = threading.Event()
        self._thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        with self.cb._lock:
            self.inside.set()
            self.release.wait(5.0)

    async def start(self) -> None:
        self._thread.start()
        assert await asyncio.to_thread(self.inside.wait, 5.0)

    def join(self) -> None:
        self._thread.join(5.0)
        assert not self._thread.is_alive()


async def spin(ticks: int) -> None:
    """Let the loop run ``ticks`` rounds: this coroutine's progress is the loop's responsiveness."""
    for _ in range(ticks):
        await asyncio.sleep(0)


@pytest.mark.parametrize("stage", ["admission", "outcome"])
async def test_a_legacy_call_holding_pybreakers_lock_never_stalls_the_event_loop(stage: str) -> None:
    cb = pybreaker.CircuitBreaker(fail_max=5)
    policy = from_pybreaker(cb)
    legacy = LegacyCall(cb)
    go = asyncio.Event()

    async def guarded() -> str:
        await go.wait()
        return "ok"

    if stage == "outcome":
        # Admitted before the legacy call takes the lock; it finishes while the lock is held.
        call = asyncio.create_task(policy.run(guarded))
        await spin(2)
        await legacy.start()
        go.set()
    else:
        await legacy.start()
        go.set()
        call = asyncio.create_task(policy.run(guarded))
    # Another task makes progress on the loop while the adapter's call waits for pybreaker's lock.
    await spin(100)
    legacy.release.set()
    assert await asyncio.wait_for(call, 5.0) == "ok"
    legacy.join()
    assert legacy.released_by_loop is True, "the event loop stalled on pybreaker's lock"
    assert cb.fail_counter == 0
    assert cb.current_state == "closed"


async def test_a_failure_waiting_for_pybreakers_lock_still_trips_the_circuit() -> None:
    cb = pybreaker.CircuitBreaker(fail_max=1)
    policy = from_pybreaker(cb)
    legacy = LegacyCall(cb)
    go = asyncio.Event()

    async def failing() -> None:
        await go.wait()
        raise Boom

    call = asyncio.create_task(policy.run(failing))
    await spin(2)
    await legacy.start()
    go.set()
    await spin(100)
    legacy.release.set()
    with pytest.raises(PyBreakerOpenError) as info:
        await asyncio.wait_for(call, 5.0)
    assert isinstance(info.value.__cause__, Boom)
    legacy.join()
    assert legacy.released_by_loop is True
    assert cb.current_state == "open"


@pytest.mark.parametrize("when", ["waiting for the lock", "admitted by the worker"])
async def test_a_call_cancelled_while_its_admission_is_off_the_loop_frees_its_trial(when: str) -> None:
    cb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=0)
    policy = from_pybreaker(cb)
    opened(cb)
    holder = HeldLock(cb)
    await holder.start()
    call = asyncio.create_task(policy.run(ok))
    await spin(10)  # the call now waits for the lock in the adapter's worker thread
    if when == "admitted by the worker":
        holder.release.set()
        # Block the loop (deliberately, in the test) until the worker has taken the trial slot,
        # so the cancellation lands after the admission and before the caller resumes.
        for _ in range(5000):
            if policy._trial is not None:
                break
            time.sleep(0.001)
        assert policy._trial is not None
        call.cancel()
    else:
        call.cancel()
        holder.release.set()
    with pytest.raises(asyncio.CancelledError):
        await call
    holder.join()
    assert policy._trial is None
    # The trial is free for the next call, which closes the circuit.
    assert await policy.run(ok) == "ok"
    assert cb.current_state == "closed"


async def test_a_trial_cancelled_while_its_outcome_waits_for_the_lock_is_still_recorded() -> None:
    cb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=0)
    policy = from_pybreaker(cb)
    opened(cb)
    go = asyncio.Event()

    async def trial() -> str:
        await go.wait()
        return "ok"

    call = asyncio.create_task(policy.run(trial))
    await spin(2)
    assert cb.current_state == "half-open"
    holder = HeldLock(cb)
    await holder.start()
    go.set()
    await spin(10)  # the trial succeeded; its outcome waits for the lock in the worker
    call.cancel()
    holder.release.set()
    with pytest.raises(asyncio.CancelledError):
        await call
    holder.join()
    # The worker runs one job at a time: once this no-op ran, the trial's outcome was recorded.
    assert policy._worker is not None
    await asyncio.wrap_future(policy._worker.submit(lambda: None))
    assert cb.current_state == "closed"
    assert policy._trial is None


@pytest.mark.parametrize("late", ["success", "failure"])
async def test_a_call_admitted_before_a_transition_does_not_decide_the_trial(late: str) -> None:
    cb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=0)
    policy = from_pybreaker(cb)
    slow_gate = asyncio.Event()
    trial_gate = asyncio.Event()

    async def slow() -> str:
        await slow_gate.wait()
        if late == "failure":
            raise Boom
        return "slow"

    async def trial() -> str:
        await trial_gate.wait()
        return "trial"

    slow_call = asyncio.create_task(policy.run(slow))
    await spin(2)  # admitted while closed
    with pytest.raises(PyBreakerOpenError):
        await policy.run(boom)  # opens
    trial_call = asyncio.create_task(policy.run(trial))
    await spin(2)
    assert cb.current_state == "half-open"  # the trial is running
    slow_gate.set()
    if late == "failure":
        with pytest.raises(Boom):
            await slow_call
    else:
        assert await slow_call == "slow"
    # The late outcome was admitted while closed: it says nothing about the half-open state.
    assert cb.current_state == "half-open"
    with pytest.raises(PyBreakerOpenError, match="trial"):
        await policy.run(ok)  # the real trial still holds the slot
    trial_gate.set()
    assert await trial_call == "trial"
    assert cb.current_state == "closed"
    assert cb.fail_counter == 0
