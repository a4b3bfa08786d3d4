"""Circuit breaker cases: closed-state success path and rejection while open, against peers.

Peers are configured like ours: consecutive failures 5 (what pybreaker and
aiobreaker count), break 5 s. Rejection cases catch the error inside the
timed callable, so they include raising and catching it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from benchmarks.cases import Case, sync_target, target
from resilient.breaker import CircuitBreaker, from_pybreaker
from resilient.errors import CircuitOpenError


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _ours_open() -> Callable[[], Any]:
    breaker = CircuitBreaker(consecutive_failures=5, break_duration=3600)
    breaker.trip()
    guarded = breaker(target)

    async def call() -> None:
        try:  # noqa: SIM105 - suppress() would add its own cost to the timing
            await guarded()
        except CircuitOpenError:
            pass

    return call


def _ours_open_sync() -> Callable[[], Any]:
    breaker = CircuitBreaker(consecutive_failures=5, break_duration=3600)
    breaker.trip()
    guarded = breaker(sync_target)

    def call() -> None:
        try:  # noqa: SIM105 - suppress() would add its own cost to the timing
            guarded()
        except CircuitOpenError:
            pass

    return call


def _pybreaker_adapter() -> Callable[[], Any]:
    import pybreaker

    return from_pybreaker(pybreaker.CircuitBreaker(fail_max=5, reset_timeout=5))(target)


def _aiobreaker() -> Callable[[], Any]:
    import aiobreaker

    return aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=5))(target)  # type: ignore[no-any-return]


def _aiobreaker_open() -> Callable[[], Any]:
    import aiobreaker

    breaker = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=3600))
    breaker.open()
    guarded = breaker(target)

    async def call() -> None:
        try:  # noqa: SIM105 - suppress() would add its own cost to the timing
            await guarded()
        except aiobreaker.CircuitBreakerError:
            pass

    return call


def _pybreaker_sync() -> Callable[[], Any]:
    import pybreaker

    return pybreaker.CircuitBreaker(fail_max=5, reset_timeout=5)(sync_target)  # type: ignore[no-any-return]


def _pybreaker_open_sync() -> Callable[[], Any]:
    import pybreaker

    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=3600, throw_new_error_on_trip=True)
    breaker.open()
    guarded = breaker(sync_target)

    def call() -> None:
        try:  # noqa: SIM105 - suppress() would add its own cost to the timing
            guarded()
        except pybreaker.CircuitBreakerError:
            pass

    return call


CASES: list[Case] = [
    Case("CircuitBreaker() closed, ratio mode", "breaker", lambda: CircuitBreaker()(target), ours=True),
    Case(
        "CircuitBreaker(consecutive_failures=5) closed",
        "breaker",
        lambda: CircuitBreaker(consecutive_failures=5)(target),
        ours=True,
    ),
    Case(
        "CircuitBreaker(slow_call_duration=1) closed",
        "breaker",
        lambda: CircuitBreaker(slow_call_duration=1.0)(target),
        ours=True,
    ),
    Case(
        "CircuitBreaker() closed, ratio mode (sync)",
        "breaker",
        lambda: CircuitBreaker()(sync_target),
        kind="sync",
        ours=True,
    ),
    Case(
        "CircuitBreaker(consecutive_failures=5) closed (sync)",
        "breaker",
        lambda: CircuitBreaker(consecutive_failures=5)(sync_target),
        kind="sync",
        ours=True,
    ),
    Case("CircuitBreaker open: reject + catch", "breaker", _ours_open, ours=True),
    Case("CircuitBreaker open: reject + catch (sync)", "breaker", _ours_open_sync, kind="sync", ours=True),
]
if _have("pybreaker"):
    CASES += [
        Case("from_pybreaker(fail_max=5) closed", "breaker", _pybreaker_adapter, ours=True),
        Case("pybreaker fail_max=5 closed (sync)", "breaker", _pybreaker_sync, kind="sync"),
        Case("pybreaker open: reject + catch (sync)", "breaker", _pybreaker_open_sync, kind="sync"),
    ]
if _have("aiobreaker"):
    CASES += [
        Case("aiobreaker fail_max=5 closed", "breaker", _aiobreaker),
        Case("aiobreaker open: reject + catch", "breaker", _aiobreaker_open),
    ]
