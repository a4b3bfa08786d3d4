"""from_pybreaker: a real pybreaker.CircuitBreaker as a policy, async included."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pybreaker
import pytest

from resilient.breaker import from_pybreaker
from resilient.breaker.pybreaker_adapter import PyBreakerOpenError, PyBreakerPolicy
from resilient.errors import CircuitOpenError
from resilient.events import REJECTED
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
